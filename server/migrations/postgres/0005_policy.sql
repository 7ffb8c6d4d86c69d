-- Version 5: groups and policy rules (SPEC §8, R16). A group's members are kept as people
-- type them (`user:EMAIL`, `host:GLOB`, `ip:CIDR`), separated by single spaces (a member
-- holds none). The rule id counter is `next_rule_id` in `meta`.
CREATE TABLE policy_groups (
    name       TEXT PRIMARY KEY,
    members    TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE policy_rules (
    id         BIGINT PRIMARY KEY,
    feature    TEXT NOT NULL,
    kind       TEXT NOT NULL,
    seats      BIGINT NOT NULL,
    group_name TEXT,
    each       BOOLEAN NOT NULL,
    created_at BIGINT NOT NULL
);
