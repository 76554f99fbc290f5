-- Cluster leases (fleetrpc/cluster/table.py says what each row means).
-- Times are epoch milliseconds on the database's clock, never a node's.

-- One row per live process incarnation ("session": <node>.<boot>.<n>).
-- A session is extended only while it has not expired, and deleted once it
-- has; a deleted session owns nothing, whatever rows still name it.
CREATE TABLE cluster_node (
    session    text COLLATE "C" PRIMARY KEY,
    node_id    text COLLATE "C" NOT NULL,
    boot       text COLLATE "C" NOT NULL,
    started_ms bigint NOT NULL,
    expires_ms bigint NOT NULL
);

-- Cluster-wide constants every node must agree on (the partition count).
CREATE TABLE cluster_config (
    key   text COLLATE "C" PRIMARY KEY,
    value text NOT NULL
);

-- One row per device partition.  epoch rises at every change of owner: a
-- claim is a compare-and-set on it, and it fences a former owner's writes.
-- Renewals write cluster_node only, so these rows change only when a
-- partition moves; pages keep room for HOT updates.
CREATE TABLE cluster_partition (
    partition integer PRIMARY KEY CHECK (partition >= 0),
    owner     text COLLATE "C",
    epoch     bigint NOT NULL DEFAULT 0,
    since_ms  bigint
) WITH (fillfactor = 70);

CREATE INDEX cluster_partition_owner_idx ON cluster_partition (owner);

-- Named leases for singleton work ("job:<id>"), created on first use.
CREATE TABLE cluster_lease (
    name     text COLLATE "C" PRIMARY KEY,
    owner    text COLLATE "C",
    epoch    bigint NOT NULL DEFAULT 0,
    since_ms bigint
);

CREATE INDEX cluster_lease_owner_idx ON cluster_lease (owner);
