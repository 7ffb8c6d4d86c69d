-- Tally's SQLite schema, version 1. Times are Unix milliseconds, UTC.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE users (
    id         INTEGER PRIMARY KEY,
    username   TEXT NOT NULL UNIQUE COLLATE NOCASE,
    name       TEXT NOT NULL,
    role       TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'guest')),
    state      TEXT NOT NULL CHECK (state IN ('active', 'deactivated')),
    created_at INTEGER NOT NULL
);

CREATE TABLE tokens (
    hash       BLOB PRIMARY KEY,
    user_id    INTEGER NOT NULL REFERENCES users (id),
    created_at INTEGER NOT NULL
);

CREATE TABLE entitlements (
    id              INTEGER PRIMARY KEY,
    feature         TEXT NOT NULL,
    seats           INTEGER NOT NULL CHECK (seats >= 1),
    starts_at       INTEGER NOT NULL,
    expires_at      INTEGER,
    kind            TEXT NOT NULL CHECK (kind IN ('standard', 'trial')),
    borrowable      INTEGER NOT NULL,
    max_borrow_secs INTEGER NOT NULL,
    reference       TEXT NOT NULL
);

CREATE TABLE leases (
    id                BLOB PRIMARY KEY,
    feature           TEXT NOT NULL,
    seats             INTEGER NOT NULL CHECK (seats >= 1),
    username          TEXT NOT NULL,
    host              TEXT NOT NULL,
    client_id         BLOB NOT NULL,
    request_id        BLOB NOT NULL,
    kind              TEXT NOT NULL CHECK (kind IN ('online', 'borrowed')),
    source_assignment INTEGER,
    granted_at        INTEGER NOT NULL,
    expires_at        INTEGER NOT NULL
);

CREATE TABLE audit (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      INTEGER NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    subject TEXT NOT NULL,
    feature TEXT,
    outcome TEXT NOT NULL,
    reason  TEXT NOT NULL
);

CREATE INDEX audit_at ON audit (at);
