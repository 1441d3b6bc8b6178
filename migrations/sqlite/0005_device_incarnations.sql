-- Each device gets a random incarnation, carried in its tokens: a token of a removed device never opens a
-- later device that happens to get the same id. Devices from before keep incarnation 0, as do their tokens.
ALTER TABLE devices ADD COLUMN incarnation INTEGER NOT NULL DEFAULT 0;

-- When each device id of an account was last given up, so that an id is not handed to a new device while a
-- token of the old one could still be alive.
CREATE TABLE removed_devices (
    aci        TEXT NOT NULL REFERENCES accounts (aci) ON DELETE CASCADE,
    device_id  INTEGER NOT NULL,
    removed_at INTEGER NOT NULL,
    PRIMARY KEY (aci, device_id)
);
