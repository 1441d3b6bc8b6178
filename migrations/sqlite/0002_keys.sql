-- kind 1: signed EC prekey; kind 2: last-resort Kyber prekey. One of each per device.
CREATE TABLE signed_keys (
    aci        TEXT NOT NULL,
    device_id  INTEGER NOT NULL,
    kind       INTEGER NOT NULL,
    key_id     INTEGER NOT NULL,
    public_key BLOB NOT NULL,
    signature  BLOB NOT NULL,
    PRIMARY KEY (aci, device_id, kind),
    FOREIGN KEY (aci, device_id) REFERENCES devices (aci, device_id) ON DELETE CASCADE
);

-- One-time prekeys (kind 1: EC, kind 2: Kyber, signed). A claimed key is deleted in the same statement
-- that reads it, so no key is handed out twice.
CREATE TABLE one_time_keys (
    aci        TEXT NOT NULL,
    device_id  INTEGER NOT NULL,
    kind       INTEGER NOT NULL,
    key_id     INTEGER NOT NULL,
    public_key BLOB NOT NULL,
    signature  BLOB,
    PRIMARY KEY (aci, device_id, kind, key_id),
    FOREIGN KEY (aci, device_id) REFERENCES devices (aci, device_id) ON DELETE CASCADE
);
