-- Version 8: groups and policy rules (SPEC §8, R16). A group's members are kept as people
-- type them (`user:EMAIL`, `host:GLOB`, `ip:CIDR`), separated by single spaces (a member
-- holds none). The rule id counter is `next_rule_id` in `meta`.
CREATE TABLE policy_groups (
    name       TEXT PRIMARY KEY,
    members    TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE policy_rules (
    id         INTEGER PRIMARY KEY,
    feature    TEXT NOT NULL,
    kind       TEXT NOT NULL,
    seats      INTEGER NOT NULL,
    group_name TEXT,
    each       INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
