-- Version 9: metered credits (SPEC §11, R21). A purchase keeps what it has left
-- (`remaining`), rewritten by every consumption that draws from it. A grant is one user's
-- access to one meter: `access` is 'none', 'quota' (with `quota`) or 'unlimited', and `used`
-- stays counted when access is taken away. A consumption is kept with its first answer, a
-- grant (`code` NULL, with the balance and remaining after it) or a refusal (`code` and
-- `message`), keyed by user and request id so that a retry finds it; reports count the
-- granted ones. The purchase id counter is `next_purchase_id` in `meta`.
CREATE TABLE credit_purchases (
    id         BIGINT PRIMARY KEY,
    meter      TEXT NOT NULL,
    amount     BIGINT NOT NULL,
    remaining  BIGINT NOT NULL,
    expires_at BIGINT,
    reference  TEXT NOT NULL
);
CREATE TABLE credit_grants (
    user_id BIGINT NOT NULL,
    meter   TEXT NOT NULL,
    access  TEXT NOT NULL,
    quota   BIGINT,
    used    BIGINT NOT NULL,
    PRIMARY KEY (user_id, meter)
);
CREATE TABLE credit_consumptions (
    user_id    BIGINT NOT NULL,
    request_id BYTEA NOT NULL,
    at         BIGINT NOT NULL,
    username   TEXT NOT NULL,
    meter      TEXT NOT NULL,
    amount     BIGINT NOT NULL,
    code       TEXT,
    message    TEXT NOT NULL,
    balance    BIGINT NOT NULL,
    remaining  BIGINT,
    PRIMARY KEY (user_id, request_id)
);
CREATE INDEX credit_consumptions_at ON credit_consumptions (at);
