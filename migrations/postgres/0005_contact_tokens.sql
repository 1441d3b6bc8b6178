-- Contact tokens: what a QR code holds is a random token; the server keeps only a keyed hash of it (HMAC
-- with the server's pseudonym key), so neither a database copy nor its reader can use or confirm a token.
-- A revoked or expired row is deleted by the reaper.
CREATE TABLE contact_tokens (
    id         BYTEA PRIMARY KEY,
    aci        UUID NOT NULL REFERENCES accounts (aci) ON DELETE CASCADE,
    token_hash BYTEA NOT NULL UNIQUE,
    -- Encrypted by the owner's client for itself; opaque here.
    label      BYTEA,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    max_uses   BIGINT,
    uses       BIGINT NOT NULL DEFAULT 0,
    revoked    BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX contact_tokens_by_owner ON contact_tokens (aci);
CREATE INDEX contact_tokens_by_expiry ON contact_tokens (expires_at);

-- Who used a token, as a keyed hash of the requester, so one requester counts once against max_uses.
CREATE TABLE contact_token_uses (
    token_id  BYTEA NOT NULL REFERENCES contact_tokens (id) ON DELETE CASCADE,
    requester BYTEA NOT NULL,
    PRIMARY KEY (token_id, requester)
);
