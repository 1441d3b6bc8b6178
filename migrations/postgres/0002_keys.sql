-- kind 1: signed EC prekey; kind 2: last-resort Kyber prekey. One of each per device.
-- One-time prekey pools live in Redis in the scale-out deployment.
CREATE TABLE signed_keys (
    aci        UUID NOT NULL,
    device_id  INTEGER NOT NULL,
    kind       SMALLINT NOT NULL,
    key_id     INTEGER NOT NULL,
    public_key BYTEA NOT NULL,
    signature  BYTEA NOT NULL,
    PRIMARY KEY (aci, device_id, kind),
    FOREIGN KEY (aci, device_id) REFERENCES devices (aci, device_id) ON DELETE CASCADE
);
