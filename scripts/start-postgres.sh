#!/usr/bin/env bash
# Start a throwaway PostgreSQL 15 on 127.0.0.1 for the test suite and print its URL.
# Usage: scripts/start-postgres.sh DIR [PORT]
set -euo pipefail
dir=${1:?data directory}
port=${2:-54329}
bin=/usr/lib/postgresql/15/bin
if ! id postgres >/dev/null 2>&1; then useradd --system --home "$dir" postgres; fi
mkdir -p "$dir"
chown postgres "$dir"
if [ ! -f "$dir/data/PG_VERSION" ]; then
  runuser -u postgres -- "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 >/dev/null
fi
runuser -u postgres -- "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
  -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c max_connections=200" start >/dev/null
runuser -u postgres -- "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -tAc \
  "SELECT 1 FROM pg_database WHERE datname='dockyard_test'" | grep -q 1 ||
  runuser -u postgres -- "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres dockyard_test
echo "postgresql+psycopg://postgres@127.0.0.1:$port/dockyard_test"
