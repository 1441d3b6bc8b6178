-- Accounts and devices. No phone number, e-mail or name: an account is a random UUID and a public key.
CREATE TABLE accounts (
    aci                 TEXT PRIMARY KEY NOT NULL,
    identity_key        BLOB NOT NULL,
    access_key          BLOB,
    unrestricted_access INTEGER NOT NULL DEFAULT 0,
    approved            INTEGER NOT NULL,
    created_at          INTEGER NOT NULL
);

CREATE TABLE devices (
    aci             TEXT NOT NULL REFERENCES accounts (aci) ON DELETE CASCADE,
    device_id       INTEGER NOT NULL,
    registration_id INTEGER NOT NULL,
    -- Only a salted hash of the device secret is kept.
    secret_salt     BLOB NOT NULL,
    secret_hash     BLOB NOT NULL,
    name            BLOB,
    created_at      INTEGER NOT NULL,
    last_seen_day   INTEGER NOT NULL,
    PRIMARY KEY (aci, device_id)
);

-- Single-use invite codes, stored as SHA-256 of the code; a used code is deleted.
CREATE TABLE invites (
    code_hash  BLOB PRIMARY KEY NOT NULL,
    expires_at INTEGER NOT NULL
);
