-- Version 11: lease history as hourly rollups (SPEC §10), written in the same transaction as the grant,
-- end, refusal or pool change they count, and read by `tally report usage` and `report
-- users`. A row exists for each UTC hour in which something happened; `*_last` is NULL when
-- nothing of its kind changed in the hour (the previous row's value carries on). Rows
-- older than `history.keep` are pruned, except each feature's last state before that.
CREATE TABLE usage_hours (
    feature     TEXT NOT NULL,
    hour_start  BIGINT NOT NULL,
    pool_max    BIGINT NOT NULL,
    pool_last   BIGINT,
    peak        BIGINT NOT NULL,
    in_use_last BIGINT,
    seat_ms     BIGINT NOT NULL,
    checkouts   BIGINT NOT NULL,
    denials     BIGINT NOT NULL,
    PRIMARY KEY (feature, hour_start)
);
CREATE INDEX usage_hours_by_hour ON usage_hours (hour_start);
CREATE TABLE usage_user_hours (
    feature    TEXT NOT NULL,
    username   TEXT NOT NULL,
    hour_start BIGINT NOT NULL,
    seat_ms    BIGINT NOT NULL,
    checkouts  BIGINT NOT NULL,
    denials    BIGINT NOT NULL,
    last_used  BIGINT,
    PRIMARY KEY (feature, username, hour_start)
);
CREATE INDEX usage_user_hours_by_hour ON usage_user_hours (hour_start);
