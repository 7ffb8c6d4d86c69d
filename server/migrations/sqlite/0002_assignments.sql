-- Version 2: seats assigned to users by name, and the notification outbox.

CREATE TABLE assignments (
    id          INTEGER PRIMARY KEY,
    username    TEXT NOT NULL,
    feature     TEXT NOT NULL,
    entitlement INTEGER NOT NULL,
    seats       INTEGER NOT NULL CHECK (seats >= 1),
    expires_at  INTEGER,
    created_at  INTEGER NOT NULL
);

CREATE INDEX assignments_username ON assignments (username);

-- Written in the same transaction as the change it reports; delivered at least once.
CREATE TABLE outbox (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    at           INTEGER NOT NULL,
    kind         TEXT NOT NULL,
    subject      TEXT NOT NULL,
    detail       TEXT NOT NULL,
    delivered_at INTEGER
);

CREATE INDEX outbox_pending ON outbox (id) WHERE delivered_at IS NULL;
CREATE INDEX audit_actor ON audit (actor);
CREATE INDEX audit_subject ON audit (subject);
CREATE INDEX audit_feature ON audit (feature);
