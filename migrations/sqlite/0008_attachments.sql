-- Encrypted attachments. Rows are keyed by a SHA-256 of the attachment id (the id is the download
-- capability, so a database copy does not hand out downloads), and the one-time upload credential is kept
-- as a SHA-256 too. No row names the uploader. The bytes live in the object store, one object per part.
CREATE TABLE attachments (
    id_hash         BLOB PRIMARY KEY NOT NULL,
    credential_hash BLOB NOT NULL,
    -- Declared when the upload was created; the upload is complete when `received` reaches it.
    length          INTEGER NOT NULL,
    received        INTEGER NOT NULL DEFAULT 0,
    created_at      INTEGER NOT NULL,
    -- The credential works until then; an upload unfinished by then is deleted by the reaper.
    upload_until    INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL,
    completed_at    INTEGER
);
CREATE INDEX attachments_by_expiry ON attachments (expires_at);
CREATE INDEX attachments_by_upload_window ON attachments (upload_until) WHERE completed_at IS NULL;

-- The parts of an attachment in the object store, in order of `start` (their byte offset).
CREATE TABLE attachment_parts (
    id_hash BLOB NOT NULL REFERENCES attachments (id_hash) ON DELETE CASCADE,
    start   INTEGER NOT NULL,
    length  INTEGER NOT NULL,
    object  TEXT NOT NULL,
    PRIMARY KEY (id_hash, start)
);
