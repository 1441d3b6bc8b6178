-- Contact tokens: what a QR code holds is a random token; the server keeps only a keyed hash of it (HMAC
-- with the server's pseudonym key), so neither a database copy nor its reader can use or confirm a token.
-- A revoked or expired row is deleted by the reaper.
CREATE TABLE contact_tokens (
    id         BLOB PRIMARY KEY NOT NULL,
    aci        TEXT NOT NULL REFERENCES accounts (aci) ON DELETE CASCADE,
    token_hash BLOB NOT NULL UNIQUE,
    -- Encrypted by the owner's client for itself; opaque here.
    label      BLOB,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    max_uses   INTEGER,
    uses       INTEGER NOT NULL DEFAULT 0,
    revoked    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX contact_tokens_by_owner ON contact_tokens (aci);
CREATE INDEX contact_tokens_by_expiry ON contact_tokens (expires_at);

-- Who used a token, as a keyed hash of the requester, so one requester counts once against max_uses.
CREATE TABLE contact_token_uses (
    token_id  BLOB NOT NULL REFERENCES contact_tokens (id) ON DELETE CASCADE,
    requester BLOB NOT NULL,
    PRIMARY KEY (token_id, requester)
);
