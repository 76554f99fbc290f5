-- Cluster leases.  SQLite serves one node: every partition is that node's
-- and nothing is claimed (fleetrpc/cluster/leases.py); the tables exist so
-- that both dialects have one schema and the node's row shows who runs.
CREATE TABLE cluster_node (
    session    TEXT PRIMARY KEY NOT NULL,
    node_id    TEXT NOT NULL,
    boot       TEXT NOT NULL,
    started_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL
);

CREATE TABLE cluster_config (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);

CREATE TABLE cluster_partition (
    partition INTEGER PRIMARY KEY CHECK (partition >= 0),
    owner     TEXT,
    epoch     INTEGER NOT NULL DEFAULT 0,
    since_ms  INTEGER
);

CREATE TABLE cluster_lease (
    name     TEXT PRIMARY KEY NOT NULL,
    owner    TEXT,
    epoch    INTEGER NOT NULL DEFAULT 0,
    since_ms INTEGER
);
