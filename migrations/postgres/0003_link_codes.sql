-- Single-use codes that let a new device join an account, stored as SHA-256 of the code.
CREATE TABLE link_codes (
    code_hash  BYTEA PRIMARY KEY,
    aci        UUID NOT NULL REFERENCES accounts (aci) ON DELETE CASCADE,
    expires_at BIGINT NOT NULL
);
CREATE INDEX link_codes_by_expiry ON link_codes (expires_at);
