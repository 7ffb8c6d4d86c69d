-- Version 10: the delivery of each notification to each sink (SPEC R20), so that every
-- sink gets every notification at least once on its own, retried with backoff, and a
-- restart or a failover neither loses nor re-sends one. A notification is settled
-- (`outbox.delivered_at`) once every sink configured has delivered it or given up.
CREATE TABLE notify_deliveries (
    outbox_id    INTEGER NOT NULL,
    sink         TEXT NOT NULL,
    attempts     INTEGER NOT NULL,
    next_at      INTEGER NOT NULL,
    delivered_at INTEGER,
    failed_at    INTEGER,
    last_error   TEXT,
    updated_at   INTEGER NOT NULL,
    PRIMARY KEY (outbox_id, sink)
);
CREATE INDEX notify_deliveries_by_sink ON notify_deliveries (sink, updated_at);
