-- Single-use codes that let a new device join an account, stored as SHA-256 of the code.
CREATE TABLE link_codes (
    code_hash  BLOB PRIMARY KEY NOT NULL,
    aci        TEXT NOT NULL REFERENCES accounts (aci) ON DELETE CASCADE,
    expires_at INTEGER NOT NULL
);
CREATE INDEX link_codes_by_expiry ON link_codes (expires_at);
