-- Version 5: tokens have ids (from their hash), labels and a last-used time, and can be
-- revoked one by one (R22); account ids are handed out from a counter and never reused, so
-- that a session bound to an account cannot act for a later account of the same name.
CREATE TABLE tokens_v5 (
    id         TEXT PRIMARY KEY,
    hash       BLOB NOT NULL UNIQUE,
    user_id    INTEGER NOT NULL REFERENCES users (id),
    label      TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    last_used  INTEGER
);

INSERT INTO tokens_v5 (id, hash, user_id, label, created_at)
SELECT lower(hex(substr(hash, 1, 8))), hash, user_id, '', created_at FROM tokens;

DROP TABLE tokens;
ALTER TABLE tokens_v5 RENAME TO tokens;

INSERT INTO meta (key, value)
SELECT 'next_user_id', CAST(COALESCE(MAX(id), 0) + 1 AS TEXT) FROM users WHERE true
ON CONFLICT (key) DO NOTHING;
