#!/usr/bin/env bash
# `make server`: a team tracking server. PostgreSQL (installed from Debian's packages when missing)
# holds runs, params and metrics; MLflow serves the artifact store itself (--serve-artifacts), so
# clients need no storage credentials. Both bind to 127.0.0.1 unless MLFLOW_HOST says otherwise.
# Runs in the foreground; Ctrl-C stops MLflow and PostgreSQL. State lives in $MLFLOW_SERVER_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

STATE=${MLFLOW_SERVER_DIR:-.mlflow-server}
HOST=${MLFLOW_HOST:-127.0.0.1}
PORT=${MLFLOW_PORT:-5000}
PGPORT=${MLFLOW_PG_PORT:-$((PORT + 432))}
MLFLOW=${MLFLOW_BIN:-.venv/bin/mlflow}

find_pg() {
  local dir
  for dir in /usr/lib/postgresql/*/bin "$(dirname "$(command -v initdb 2>/dev/null || echo /none/initdb)")"; do
    if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ] && [ -x "$dir/psql" ] && [ -x "$dir/createdb" ]; then
      echo "$dir"
      return 0
    fi
  done
  return 1
}
if ! PGBIN=$(find_pg); then
  echo "PostgreSQL not found: installing Debian's postgresql package" >&2
  if [ "$(id -u)" != 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq postgresql >/dev/null
  PGBIN=$(find_pg) || { echo "error: PostgreSQL could not be installed" >&2; exit 1; }
fi

mkdir -p "$STATE"
STATE=$(cd "$STATE" && pwd)
# PostgreSQL refuses to run as root: as root, run it as the postgres user
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
if ! as_pg test -x "$STATE"; then
  echo "error: the postgres user cannot enter $STATE: choose a MLFLOW_SERVER_DIR it can reach" >&2
  exit 2
fi
if [ ! -f "$STATE/pgdata/PG_VERSION" ]; then
  mkdir -p "$STATE/pgdata" "$STATE/run"
  [ "$(id -u)" = 0 ] && chown postgres "$STATE/pgdata" "$STATE/run"
  chmod 700 "$STATE/pgdata"
  as_pg "$PGBIN/initdb" -D "$STATE/pgdata" -U mlflow --auth=trust -E UTF8 >"$STATE/initdb.log"
fi
mkdir -p "$STATE/run" "$STATE/artifacts"
[ "$(id -u)" = 0 ] && chown postgres "$STATE/run"
SERVER=
stop_all() {
  [ -n "$SERVER" ] && kill -TERM "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null
  as_pg "$PGBIN/pg_ctl" -D "$STATE/pgdata" -m fast -w stop >/dev/null 2>&1 || true
}
trap stop_all EXIT
trap 'exit 130' INT TERM
# a PostgreSQL left running by an earlier, killed session of this script is stopped first
as_pg "$PGBIN/pg_ctl" -D "$STATE/pgdata" status >/dev/null 2>&1 && stop_all
as_pg "$PGBIN/pg_ctl" -D "$STATE/pgdata" -l "$STATE/run/postgres.log" -w -o \
  "-p $PGPORT -k $STATE/run -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null
as_pg "$PGBIN/psql" -h 127.0.0.1 -p "$PGPORT" -U mlflow -d postgres -tAc \
  "SELECT 1 FROM pg_database WHERE datname = 'mlflow'" | grep -q 1 \
  || as_pg "$PGBIN/createdb" -h 127.0.0.1 -p "$PGPORT" -U mlflow mlflow

echo "PostgreSQL on 127.0.0.1:$PGPORT; MLflow on http://$HOST:$PORT (artifacts in $STATE/artifacts)" >&2
echo "point the pipeline at it with: export MLFLOW_TRACKING_URI=http://$HOST:$PORT" >&2
"$MLFLOW" server \
  --backend-store-uri "postgresql+psycopg2://mlflow@127.0.0.1:$PGPORT/mlflow" \
  --artifacts-destination "$STATE/artifacts" --serve-artifacts \
  --host "$HOST" --port "$PORT" --workers "${MLFLOW_WORKERS:-4}" &
SERVER=$!
wait "$SERVER"
