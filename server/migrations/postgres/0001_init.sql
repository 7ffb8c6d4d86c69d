-- Tally's PostgreSQL schema, version 1: the same tables as SQLite's schema after its
-- version 5, with every integer a BIGINT (the rows decode them as i64). Times are Unix
-- milliseconds, UTC.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Account ids come from the `next_user_id` counter in `meta` and are never reused.
CREATE TABLE users (
    id         BIGINT PRIMARY KEY,
    username   TEXT NOT NULL,
    name       TEXT NOT NULL,
    role       TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'guest')),
    state      TEXT NOT NULL CHECK (state IN ('active', 'deactivated')),
    created_at BIGINT NOT NULL
);

-- Usernames are unique whatever their case, as SQLite's COLLATE NOCASE makes them.
CREATE UNIQUE INDEX users_username ON users (lower(username));

CREATE TABLE tokens (
    id         TEXT PRIMARY KEY,
    hash       BYTEA NOT NULL UNIQUE,
    user_id    BIGINT NOT NULL REFERENCES users (id),
    label      TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_used  BIGINT
);

CREATE TABLE entitlements (
    id              BIGINT PRIMARY KEY,
    feature         TEXT NOT NULL,
    seats           BIGINT NOT NULL CHECK (seats >= 1),
    starts_at       BIGINT NOT NULL,
    expires_at      BIGINT,
    kind            TEXT NOT NULL CHECK (kind IN ('standard', 'trial')),
    borrowable      BOOLEAN NOT NULL,
    max_borrow_secs BIGINT NOT NULL,
    reference       TEXT NOT NULL
);

CREATE TABLE assignments (
    id          BIGINT PRIMARY KEY,
    username    TEXT NOT NULL,
    feature     TEXT NOT NULL,
    entitlement BIGINT NOT NULL,
    seats       BIGINT NOT NULL CHECK (seats >= 1),
    expires_at  BIGINT,
    created_at  BIGINT NOT NULL
);

CREATE INDEX assignments_username ON assignments (username);

-- Leases are numbered in the order they are granted (seq), so that a commit appends rows
-- at the end of the table instead of writing all over an index of random lease ids; the
-- store keeps the id -> seq map in memory.
CREATE TABLE leases (
    seq               BIGINT PRIMARY KEY,
    id                BYTEA NOT NULL,
    feature           TEXT NOT NULL,
    seats             BIGINT NOT NULL CHECK (seats >= 1),
    username          TEXT NOT NULL,
    host              TEXT NOT NULL,
    client_id         BYTEA NOT NULL,
    request_id        BYTEA NOT NULL,
    kind              TEXT NOT NULL CHECK (kind IN ('online', 'borrowed')),
    source_assignment BIGINT,
    granted_at        BIGINT NOT NULL,
    expires_at        BIGINT NOT NULL,
    entitlement       BIGINT
);

CREATE TABLE audit (
    id      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at      BIGINT NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    subject TEXT NOT NULL,
    feature TEXT,
    outcome TEXT NOT NULL,
    reason  TEXT NOT NULL
);

CREATE INDEX audit_at ON audit (at);

-- Written in the same transaction as the change it reports; delivered at least once.
CREATE TABLE outbox (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at           BIGINT NOT NULL,
    kind         TEXT NOT NULL,
    subject      TEXT NOT NULL,
    detail       TEXT NOT NULL,
    delivered_at BIGINT
);

CREATE INDEX outbox_pending ON outbox (id) WHERE delivered_at IS NULL;
