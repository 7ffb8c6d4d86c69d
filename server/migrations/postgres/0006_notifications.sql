-- Notifications carry a stable id for de-duplication and the feature they concern (SPEC
-- R20); marks keep time-driven notifications from repeating after a restart or a failover
-- (up to when entitlements' expiry was looked at, and each feature's last
-- `pool_exhausted`).
ALTER TABLE outbox ADD COLUMN uid TEXT NOT NULL DEFAULT '';
ALTER TABLE outbox ADD COLUMN feature TEXT;

CREATE TABLE notify_marks (
    key TEXT PRIMARY KEY,
    at  BIGINT NOT NULL
);
