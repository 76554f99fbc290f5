#!/bin/bash
# A streaming standby: on first start, copy the primary with pg_basebackup
# (-R writes standby.signal and primary_conninfo; -C -S a replication slot so
# the primary keeps the WAL the standby still needs), then run postgres.
set -euo pipefail
PGDATA=/var/lib/postgresql/data
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    chown postgres:postgres "$PGDATA"
    chmod 700 "$PGDATA"
    until PGPASSWORD="$REPLICATION_PASSWORD" gosu postgres pg_basebackup \
            -h "$PRIMARY_HOST" -U replicator -D "$PGDATA" -R -X stream -C -S standby1; do
        echo "waiting for the primary ..."; sleep 2
    done
fi
exec gosu postgres postgres -D "$PGDATA" -c hot_standby=on
