-- Web Push subscriptions: where to wake each device that has none of its sockets open. One per device,
-- removed with the device. Only the endpoint is kept: a wakeup carries no payload, so the subscription's
-- encryption keys (p256dh, auth) are checked when a client sends them and never stored.
CREATE TABLE push_subscriptions (
    aci        UUID NOT NULL,
    device_id  INTEGER NOT NULL,
    endpoint   TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (aci, device_id),
    FOREIGN KEY (aci, device_id) REFERENCES devices (aci, device_id) ON DELETE CASCADE
);

-- The inactive-device sweep looks devices up by when they were last seen.
CREATE INDEX devices_by_last_seen ON devices (last_seen_day);
