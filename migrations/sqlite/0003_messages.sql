-- Per-device envelope queues. `envelope` is the serialised Envelope exactly as it will be delivered; the
-- source is inside only when the sender chose to be identified. seq orders each device's queue.
CREATE TABLE messages (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    aci        TEXT NOT NULL,
    device_id  INTEGER NOT NULL,
    guid       BLOB NOT NULL UNIQUE,
    expires_at INTEGER NOT NULL,
    envelope   BLOB NOT NULL,
    FOREIGN KEY (aci, device_id) REFERENCES devices (aci, device_id) ON DELETE CASCADE
);
CREATE INDEX messages_by_device ON messages (aci, device_id, seq);
CREATE INDEX messages_by_expiry ON messages (expires_at);
