-- Version 4: leases are numbered in the order they are granted (seq), so that a commit
-- appends rows at the end of the table instead of writing pages all over a B-tree keyed by
-- random lease ids; the store keeps the id -> seq map in memory. The audit log keeps only
-- its time index, for the same reason: queries by user or feature scan from the newest.
CREATE TABLE leases_by_seq (
    seq               INTEGER PRIMARY KEY,
    id                BLOB NOT NULL,
    feature           TEXT NOT NULL,
    seats             INTEGER NOT NULL CHECK (seats >= 1),
    username          TEXT NOT NULL,
    host              TEXT NOT NULL,
    client_id         BLOB NOT NULL,
    request_id        BLOB NOT NULL,
    kind              TEXT NOT NULL CHECK (kind IN ('online', 'borrowed')),
    source_assignment INTEGER,
    granted_at        INTEGER NOT NULL,
    expires_at        INTEGER NOT NULL,
    entitlement       INTEGER
);

INSERT INTO leases_by_seq (id, feature, seats, username, host, client_id, request_id, kind,
                           source_assignment, granted_at, expires_at, entitlement)
SELECT id, feature, seats, username, host, client_id, request_id, kind,
       source_assignment, granted_at, expires_at, entitlement
FROM leases ORDER BY granted_at, id;

DROP TABLE leases;
ALTER TABLE leases_by_seq RENAME TO leases;

DROP INDEX audit_actor;
DROP INDEX audit_subject;
DROP INDEX audit_feature;
