-- A cluster of nodes on one database (SPEC §7).
--
-- tally_leader: at most one row (id = 1): the node that leads, the address clients are sent
-- to, the epoch (one more at every change of leader) and when its lease lapses in the
-- database's clock.
CREATE TABLE IF NOT EXISTS tally_leader (
    id INT PRIMARY KEY CHECK (id = 1),
    node TEXT NOT NULL,
    address TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);

-- tally_nodes: one row per node that has ever run, with its advertised address and its last
-- heartbeat, for `tally server nodes`.
CREATE TABLE IF NOT EXISTS tally_nodes (
    id TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    last_seen TIMESTAMPTZ NOT NULL
);

-- tally_cluster: the cluster's identity, made by the first node and adopted by every other:
-- the Ed25519 borrow signing key (PKCS#8) and the private CA (PEM certificate and key) that
-- signs every node's certificate and the signing key's. The CA columns are NULL when the
-- admin's own certificates are used (tls.cert). Anyone who can read this table can act as
-- the cluster.
CREATE TABLE IF NOT EXISTS tally_cluster (
    id INT PRIMARY KEY CHECK (id = 1),
    signing_key BYTEA NOT NULL,
    ca_cert TEXT,
    ca_key TEXT
);
