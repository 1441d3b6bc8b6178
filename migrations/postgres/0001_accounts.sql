-- Accounts and devices. No phone number, e-mail or name: an account is a random UUID and a public key.
CREATE TABLE accounts (
    aci                 UUID PRIMARY KEY,
    identity_key        BYTEA NOT NULL,
    access_key          BYTEA,
    unrestricted_access BOOLEAN NOT NULL DEFAULT FALSE,
    approved            BOOLEAN NOT NULL,
    created_at          BIGINT NOT NULL
);

CREATE TABLE devices (
    aci             UUID NOT NULL REFERENCES accounts (aci) ON DELETE CASCADE,
    device_id       INTEGER NOT NULL,
    registration_id INTEGER NOT NULL,
    -- Only a salted hash of the device secret is kept.
    secret_salt     BYTEA NOT NULL,
    secret_hash     BYTEA NOT NULL,
    name            BYTEA,
    created_at      BIGINT NOT NULL,
    last_seen_day   BIGINT NOT NULL,
    PRIMARY KEY (aci, device_id)
);

-- Single-use invite codes, stored as SHA-256 of the code; a used code is deleted.
CREATE TABLE invites (
    code_hash  BYTEA PRIMARY KEY,
    expires_at BIGINT NOT NULL
);
