#!/usr/bin/env bash
# `make server`: a team tracking server. PostgreSQL (installed from Debian's packages when missing)
# holds runs, params and metrics; MLflow serves the artifact store itself (--serve-artifacts), so
# clients need no storage credentials. Runs in the foreground; Ctrl-C or SIGTERM stops MLflow and
# PostgreSQL. State (artifacts, passwords, the auth database) lives in $MLFLOW_SERVER_DIR; as root,
# PostgreSQL's data lives in /var/lib/mlflow-server/<hash of that folder's path> (printed at start,
# and named in $MLFLOW_SERVER_DIR/postgres-location). `scripts/mlflow-server.sh --remove` deletes
# the state folder and its database together.
#
# Who gets in (docs/team.md):
# - MLflow binds to 127.0.0.1 unless MLFLOW_HOST says otherwise. On any other address it refuses to
#   start without authentication: MLflow's basic-auth app, the admin's password from
#   MLFLOW_AUTH_ADMIN_PASSWORD or from the file named by MLFLOW_AUTH_ADMIN_PASSWORD_FILE (user name
#   MLFLOW_AUTH_ADMIN_USERNAME, default admin). There is no default password. On 127.0.0.1 auth is
#   on when a password is configured. Once the auth database exists, auth stays on.
# - PostgreSQL listens on 127.0.0.1 only and wants a password (scram-sha-256): one generated at
#   initdb, kept in $STATE/pgpass (0600) and read through PGPASSFILE, never on a command line.
set -euo pipefail
umask 077 # every file this server writes (passwords, auth database, artifacts) is its owner's alone
cd "$(dirname "$0")/.."

STATE=${MLFLOW_SERVER_DIR:-.mlflow-server}
HOST=${MLFLOW_HOST:-127.0.0.1}
PORT=${MLFLOW_PORT:-5000}
PGPORT=${MLFLOW_PG_PORT:-$((PORT + 432))}
MLFLOW=${MLFLOW_BIN:-.venv/bin/mlflow}

die() {
  echo "error: $*" >&2
  exit 2
}
is_loopback() { case "$1" in 127.* | localhost | ::1 | '[::1]') return 0 ;; *) return 1 ;; esac }
random_secret() { head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
case "${1:-}" in
  "") ACTION=start ;;
  --remove) ACTION=remove ;;
  *) die "unknown argument '$1': scripts/mlflow-server.sh [--remove]" ;;
esac

# As root, PostgreSQL runs as the postgres user, which cannot enter a private clone (under /root,
# mode 0700), so its data lives where persistent state belongs, beside other services' in /var/lib:
# one folder per state folder, named after a hash of its path. (Earlier versions used /var/tmp,
# which systemd-tmpfiles ages out; such a folder is moved here at the next start.)
PG_PARENT=/var/lib/mlflow-server
path_hash() { printf %s "$1" | sha256sum | cut -c1-16; }
default_pg_home() { # PostgreSQL's folder for the state folder $1 (an absolute path)
  if [ "$(id -u)" = 0 ]; then echo "$PG_PARENT/$(path_hash "$1")"; else echo "$1"; fi
}
legacy_pg_home() { echo "/var/tmp/mlflow-server-postgres-$(path_hash "$1")"; } # before /var/lib
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
running_here() { # the pid of a make server running on state folder $1, if any
  local other
  other=$(cat "$1/server.pid" 2>/dev/null) || return 1
  [ "$other" != $$ ] && grep -qa mlflow-server.sh "/proc/$other/cmdline" 2>/dev/null && echo "$other"
}

# --- --remove: the state folder and its database, together ----------------------------------------
if [ "$ACTION" = remove ]; then
  [ -d "$STATE" ] || die "no state folder $STATE: nothing to remove (MLFLOW_SERVER_DIR chooses another)"
  STATE=$(cd "$STATE" && pwd)
  if other=$(running_here "$STATE"); then die "make server (pid $other) runs on $STATE: stop it first"; fi
  PGHOME=$(head -n 1 "$STATE/postgres-location" 2>/dev/null || true)
  if [ -z "$PGHOME" ]; then # a state folder of an earlier version: its database where that put it
    PGHOME=$(default_pg_home "$STATE")
    if [ ! -d "$PGHOME" ] && [ -d "$(legacy_pg_home "$STATE")" ]; then PGHOME=$(legacy_pg_home "$STATE"); fi
  fi
  if [ -f "$PGHOME/pgdata/postmaster.pid" ] && PGBIN=$(find_pg); then # left running by a killed session
    if [ "$(id -u)" = 0 ]; then PG_AS=(env -C / runuser -u postgres --); else PG_AS=(); fi
    setsid -w "${PG_AS[@]}" "$PGBIN/pg_ctl" -D "$PGHOME/pgdata" -m fast -w -t 60 stop >/dev/null 2>&1 || true
  fi
  case "$PGHOME/" in
    "$STATE"/*) ;; # inside the state folder: removed with it
    *)
      if [ -d "$PGHOME" ] && [ ! -L "$PGHOME" ]; then
        # only a folder this script made for this state folder, never one a stray file points at
        [ "$PGHOME" = "$(default_pg_home "$STATE")" ] || [ "$PGHOME" = "$(legacy_pg_home "$STATE")" ] \
          || [ "$(cat "$PGHOME/state-folder" 2>/dev/null)" = "$STATE" ] \
          || die "$PGHOME does not say it holds $STATE's database (no state-folder file naming it): remove it by hand"
        rm -rf -- "$PGHOME"
        echo "removed PostgreSQL's data: $PGHOME" >&2
      fi
      ;;
  esac
  rm -rf -- "$STATE"
  echo "removed the state folder: $STATE" >&2
  exit 0
fi

# --- who may log in: decided before anything starts ---------------------------------------------
if [ -n "${MLFLOW_AUTH_ADMIN_PASSWORD_FILE:-}" ]; then
  [ -r "$MLFLOW_AUTH_ADMIN_PASSWORD_FILE" ] || die "cannot read MLFLOW_AUTH_ADMIN_PASSWORD_FILE=$MLFLOW_AUTH_ADMIN_PASSWORD_FILE"
  MLFLOW_AUTH_ADMIN_PASSWORD=$(head -n 1 "$MLFLOW_AUTH_ADMIN_PASSWORD_FILE")
  [ -n "$MLFLOW_AUTH_ADMIN_PASSWORD" ] || die "MLFLOW_AUTH_ADMIN_PASSWORD_FILE=$MLFLOW_AUTH_ADMIN_PASSWORD_FILE is empty"
  export MLFLOW_AUTH_ADMIN_PASSWORD
fi
if [ -z "${MLFLOW_AUTH_ADMIN_PASSWORD:-}" ]; then unset MLFLOW_AUTH_ADMIN_PASSWORD; fi # empty is no password
if [ -n "${MLFLOW_AUTH_ADMIN_PASSWORD:-}" ] && [ "${#MLFLOW_AUTH_ADMIN_PASSWORD}" -lt 12 ]; then
  die "the admin password (MLFLOW_AUTH_ADMIN_PASSWORD or its file) is too short: MLflow wants 12 characters or more"
fi
AUTH=
if [ -n "${MLFLOW_AUTH_ADMIN_PASSWORD:-}" ] || [ -f "$STATE/auth/basic_auth.db" ]; then AUTH=1; fi
if [ -z "$AUTH" ] && ! is_loopback "$HOST"; then
  cat >&2 <<EOF
error: refusing to serve MLflow on $HOST:$PORT without authentication: anyone who can reach that
port could read, change and delete every run. Configure MLflow's basic-auth with an admin password
(12 characters or more), from the environment or from a file, and start again:

  export MLFLOW_AUTH_ADMIN_PASSWORD='<a long password>'  # or MLFLOW_AUTH_ADMIN_PASSWORD_FILE=<a file>
  export MLFLOW_AUTH_ADMIN_USERNAME=<name>                # optional: the admin is called admin
  MLFLOW_HOST=$HOST make server

Clients then log in with MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD. See docs/team.md.
EOF
  exit 2
fi
case "${MLFLOW_AUTH_DEFAULT_PERMISSION:=EDIT}" in
  READ | USE | EDIT | MANAGE | NO_PERMISSIONS) ;;
  *) die "MLFLOW_AUTH_DEFAULT_PERMISSION=$MLFLOW_AUTH_DEFAULT_PERMISSION: use READ, USE, EDIT, MANAGE or NO_PERMISSIONS" ;;
esac
# seconds a worker trusts a user and password it has checked (MLflow's auth_cache_ttl_seconds; 0, the
# default, checks the password hash on every request: about 0.1 s of CPU each)
case "${MLFLOW_AUTH_CACHE_TTL_SECONDS:=0}" in
  '' | *[!0-9]*) die "MLFLOW_AUTH_CACHE_TTL_SECONDS=$MLFLOW_AUTH_CACHE_TTL_SECONDS: use a whole number of seconds (0 turns the cache off)" ;;
esac
if [ -n "$AUTH" ] && [ -x "$(dirname "$MLFLOW")/python" ] && ! "$(dirname "$MLFLOW")/python" -c "import flask_wtf" 2>/dev/null; then
  die "MLflow's basic-auth app needs Flask-WTF: pip install 'mlflow[auth]' into $(dirname "$(dirname "$MLFLOW")")"
fi

# --- PostgreSQL's programs, found or installed --------------------------------------------------
if ! PGBIN=$(find_pg); then
  echo "PostgreSQL not found: installing Debian's postgresql package" >&2
  if [ "$(id -u)" != 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq postgresql >/dev/null
  PGBIN=$(find_pg) || die "PostgreSQL could not be installed"
fi

mkdir -p "$STATE"
STATE=$(cd "$STATE" && pwd)
mkdir -p "$STATE/artifacts"

# --- one server per state folder; everything it started is stopped on every exit ----------------
if other=$(running_here "$STATE"); then die "another make server (pid $other) runs on $STATE: stop it first"; fi
echo $$ >"$STATE/server.pid"
# Shutdown runs once, whatever arrives during it. The race it fixes: on `kill -TERM -- -<pgid>`,
# make forwards a second SIGTERM to this script. The old `trap 'exit 130' TERM` then ran again
# inside the EXIT trap while that waited for MLflow to stop, and its `exit` ended the script before
# `pg_ctl stop`: PostgreSQL was left running whenever the second signal came after the first had
# been handled (5 times in 8). Now a second signal is a no-op. MLflow runs in a session of its own,
# so only this script gets the signal and it stops MLflow's whole process group (the CLI, uvicorn,
# its workers, the job runner), waiting for it; pg_ctl start and stop run in sessions of their own
# too, so no signal cuts them short (a killed `pg_ctl start` leaves a postmaster that `pg_ctl stop`
# cannot find yet).
SERVER=
PG_STARTED=
STOPPING=
PG_AS=()
pg_ctl_() { setsid -w "${PG_AS[@]}" "$PGBIN/pg_ctl" -D "$PGDATA_DIR" "$@"; }
alive() { # a live (not zombie) process $1, or one in its process group
  ps -eo pid=,pgid=,stat= | awk -v p="$1" '($1 == p || $2 == p) && $3 !~ /^Z/ { found = 1 } END { exit !found }'
}
stop_mlflow() {
  kill -TERM -- "-$SERVER" 2>/dev/null || kill -TERM "$SERVER" 2>/dev/null || true
  for _ in $(seq 300); do # 30 s for MLflow to finish its requests and stop its workers
    alive "$SERVER" || break
    sleep 0.1 || true # a signal during shutdown must not end it (set -e)
  done
  kill -KILL -- "-$SERVER" 2>/dev/null || kill -KILL "$SERVER" 2>/dev/null || true
  wait "$SERVER" 2>/dev/null || true
  rm -f "$STATE/mlflow.pid"
}
stop_pg() { pg_ctl_ -m fast -w -t 60 stop >/dev/null 2>&1 || pg_ctl_ -m immediate -w stop >/dev/null 2>&1 || true; }
stop_all() {
  [ -n "$STOPPING" ] && return 0
  STOPPING=1
  if [ -n "$SERVER" ]; then stop_mlflow; fi
  if [ -n "$PG_STARTED" ]; then stop_pg; fi
  if [ "$(cat "$STATE/server.pid" 2>/dev/null)" = $$ ]; then rm -f "$STATE/server.pid"; fi
  return 0
}
on_signal() {
  [ -n "$STOPPING" ] && return 0 # a second signal while stopping: the first shutdown goes on
  stop_all
  exit "$1"
}
trap stop_all EXIT
trap 'on_signal 130' INT
trap 'on_signal 143' TERM
trap 'on_signal 129' HUP
if [ -f "$STATE/mlflow.pid" ]; then
  other=$(cat "$STATE/mlflow.pid")
  if grep -qaF "$STATE/artifacts" "/proc/$other/cmdline" 2>/dev/null; then
    echo "stopping an MLflow server (pid $other) left running by an earlier, killed session" >&2
    kill -KILL -- "-$other" 2>/dev/null || true
  fi
  rm -f "$STATE/mlflow.pid"
fi

# --- PostgreSQL's files, where the postgres user can reach them ---------------------------------
# PostgreSQL refuses to run as root: as root it runs as the postgres user, and its data lives in
# $PG_PARENT/<hash of the state folder's path> (see default_pg_home); everything else stays in the
# state folder, which names that folder in its postgres-location file.
if [ "$(id -u)" = 0 ]; then
  PG_AS=(env -C / runuser -u postgres --) # from /, as the postgres user cannot enter a private folder
  if [ -n "${MLFLOW_PG_DIR:-}" ]; then
    PGHOME=$MLFLOW_PG_DIR
    [ -d "$PGHOME" ] || { mkdir -p -m 700 "$PGHOME" && chown postgres: "$PGHOME"; }
  elif [ -f "$STATE/pgdata/PG_VERSION" ]; then
    PGHOME=$STATE # made by an earlier version of this script, in a folder the postgres user reaches
  else
    PGHOME=$(default_pg_home "$STATE")
    if [ ! -d "$PG_PARENT" ]; then mkdir -p -m 755 "$PG_PARENT"; fi
    if [ -L "$PG_PARENT" ] || [ "$(stat -c %U "$PG_PARENT")" != root ]; then
      die "$PG_PARENT is not root's folder: remove it, or choose another folder with MLFLOW_PG_DIR"
    fi
    legacy=$(legacy_pg_home "$STATE") # where earlier versions kept it
    if [ ! -e "$PGHOME" ] && [ -d "$legacy" ] && [ ! -L "$legacy" ] && [ "$(stat -c %U "$legacy")" = postgres ]; then
      if [ -f "$legacy/pgdata/postmaster.pid" ]; then # left running by a killed session
        setsid -w "${PG_AS[@]}" "$PGBIN/pg_ctl" -D "$legacy/pgdata" -m fast -w -t 60 stop >/dev/null 2>&1 || true
      fi
      mv -- "$legacy" "$PGHOME"
      echo "moved PostgreSQL's data from $legacy (a temporary folder, which systemd-tmpfiles ages out) to $PGHOME" >&2
    fi
    if [ ! -e "$PGHOME" ]; then
      mkdir -m 700 "$PGHOME" # fails if someone made it in between: never adopt a folder we did not make
      chown postgres: "$PGHOME"
    elif [ -L "$PGHOME" ] || [ "$(stat -c %U "$PGHOME")" != postgres ]; then
      die "$PGHOME is not the postgres user's folder: remove it, or choose another with MLFLOW_PG_DIR"
    fi
  fi
  "${PG_AS[@]}" test -x "$PGHOME" || die "the postgres user cannot enter $PGHOME: set MLFLOW_PG_DIR to a folder it can reach"
else
  PGHOME=${MLFLOW_PG_DIR:-$STATE}
fi
PGHOME=$(cd "$PGHOME" 2>/dev/null && pwd || echo "$PGHOME")
# the state folder and its database find each other: --remove deletes both
printf '%s\n' "$PGHOME" >"$STATE/postgres-location"
if [ "$PGHOME" != "$STATE" ]; then printf '%s\n' "$STATE" >"$PGHOME/state-folder"; fi
PGDATA_DIR=$PGHOME/pgdata
PGRUN=$PGHOME/run # socket and log
mkdir -p "$PGRUN"
if [ "$(id -u)" = 0 ]; then chown postgres: "$PGRUN"; fi
export PGPASSFILE=$STATE/pgpass # libpq (psql, createdb, psycopg2 in MLflow) reads the password here
PSQL_ARGS=(-h 127.0.0.1 -p "$PGPORT" -U mlflow)
BACKEND="postgresql+psycopg2://mlflow@127.0.0.1:$PGPORT/mlflow" # no password: it comes from PGPASSFILE
new_pg_password() {
  [ -s "$PGPASSFILE" ] || printf '127.0.0.1:*:*:mlflow:%s\n' "$(random_secret)" >"$PGPASSFILE"
  chmod 600 "$PGPASSFILE"
}
pg_password() { cut -d: -f5- "$PGPASSFILE"; }

LEGACY_TRUST=
if [ ! -f "$PGDATA_DIR/PG_VERSION" ]; then
  new_pg_password
  mkdir -p "$PGDATA_DIR"
  pwfile=$PGHOME/initdb-password # initdb reads the superuser's password from a file, as postgres
  pg_password >"$pwfile"
  if [ "$(id -u)" = 0 ]; then chown postgres: "$PGDATA_DIR" "$pwfile"; fi
  chmod 700 "$PGDATA_DIR"
  if ! "${PG_AS[@]}" "$PGBIN/initdb" -D "$PGDATA_DIR" -U mlflow --auth=scram-sha-256 --pwfile="$pwfile" \
    -E UTF8 >"$STATE/initdb.log" 2>&1; then
    rm -f "$pwfile"
    cat "$STATE/initdb.log" >&2
    die "initdb failed"
  fi
  rm -f "$pwfile"
elif grep -Eq '^[^#]*[[:space:]]trust[[:space:]]*$' "$PGDATA_DIR/pg_hba.conf"; then
  LEGACY_TRUST=1 # made by an earlier version of this script with --auth=trust: switched below
  new_pg_password
elif [ ! -s "$PGPASSFILE" ]; then
  die "PostgreSQL's data in $PGDATA_DIR wants a password, but $PGPASSFILE is gone (was the state folder deleted without its database?): restore it, or start afresh with: MLFLOW_SERVER_DIR=$STATE $0 --remove"
fi

# --- start --------------------------------------------------------------------------------------
# a PostgreSQL left running by an earlier, killed session of this script is stopped first
if pg_ctl_ status >/dev/null 2>&1; then stop_pg; fi
PG_STARTED=1
pg_ctl_ -l "$PGRUN/postgres.log" -w -t 120 \
  -o "-p $PGPORT -k $PGRUN -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null \
  || { tail -20 "$PGRUN/postgres.log" >&2; die "PostgreSQL did not start"; }
if [ -n "$LEGACY_TRUST" ]; then
  # set the password while trust still lets us in (SQL on stdin: no secret on a command line), then
  # turn every trust rule into scram-sha-256
  printf "ALTER ROLE mlflow PASSWORD '%s';\n" "$(pg_password)" \
    | "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 "${PSQL_ARGS[@]}" -d postgres >/dev/null
  "${PG_AS[@]}" sed -i -E 's/([[:space:]])trust[[:space:]]*$/\1scram-sha-256/' "$PGDATA_DIR/pg_hba.conf"
  pg_ctl_ reload >/dev/null
  echo "PostgreSQL now asks for a password (scram-sha-256), kept in $PGPASSFILE" >&2
fi
if [ "$("$PGBIN/psql" -X "${PSQL_ARGS[@]}" -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'mlflow'")" = 1 ]; then
  # An existing database may be older than the installed MLflow, which then refuses to start. The
  # upgrade is a no-op on a current schema, so it runs on every start; PostgreSQL runs it in one
  # transaction, so an interrupted upgrade leaves the old schema. (Back up before upgrading MLflow.)
  if ! "$MLFLOW" db upgrade "$BACKEND" >"$STATE/db-upgrade.log" 2>&1; then
    cat "$STATE/db-upgrade.log" >&2
    die "mlflow db upgrade failed (its output is above and in $STATE/db-upgrade.log)"
  fi
  if grep -q "Running upgrade" "$STATE/db-upgrade.log"; then
    echo "upgraded the database's schema to the installed MLflow (see $STATE/db-upgrade.log)" >&2
  fi
else
  "$PGBIN/createdb" "${PSQL_ARGS[@]}" mlflow # empty: `mlflow server` creates the tables
fi

AUTH_ARGS=()
if [ -n "$AUTH" ]; then
  AUTH_DIR=$STATE/auth
  mkdir -p "$AUTH_DIR"
  chmod 700 "$AUTH_DIR"
  # the auth app's CSRF key: one per server, kept across restarts, the same in every worker
  [ -s "$AUTH_DIR/flask-secret-key" ] || random_secret >"$AUTH_DIR/flask-secret-key"
  [ -n "${MLFLOW_FLASK_SERVER_SECRET_KEY:-}" ] || MLFLOW_FLASK_SERVER_SECRET_KEY=$(cat "$AUTH_DIR/flask-secret-key")
  cat >"$AUTH_DIR/basic_auth.ini" <<EOF
[mlflow]
# written by scripts/mlflow-server.sh at every start; the admin's password is never stored here
default_permission = $MLFLOW_AUTH_DEFAULT_PERMISSION
database_uri = sqlite:///$AUTH_DIR/basic_auth.db
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
auth_cache_ttl_seconds = $MLFLOW_AUTH_CACHE_TTL_SECONDS
EOF
  if [ -f "$AUTH_DIR/basic_auth.db" ]; then chmod 600 "$AUTH_DIR/basic_auth.db"; fi
  export MLFLOW_AUTH_CONFIG_PATH=$AUTH_DIR/basic_auth.ini MLFLOW_FLASK_SERVER_SECRET_KEY
  AUTH_ARGS=(--app-name basic-auth)
fi

if is_loopback "$HOST"; then URL_HOST=$HOST; else URL_HOST=$(hostname); fi
case "$URL_HOST" in *:*) URL_HOST="[$URL_HOST]" ;; esac
echo "PostgreSQL on 127.0.0.1:$PGPORT (data in $PGDATA_DIR); MLflow on http://$HOST:$PORT (artifacts in $STATE/artifacts)" >&2
if [ -n "$AUTH" ]; then
  echo "authentication: on (MLflow basic-auth; users in $AUTH_DIR/basic_auth.db; admin user ${MLFLOW_AUTH_ADMIN_USERNAME:-admin}; default permission $MLFLOW_AUTH_DEFAULT_PERMISSION; logins cached ${MLFLOW_AUTH_CACHE_TTL_SECONDS} s)" >&2
  echo "clients: export MLFLOW_TRACKING_URI=http://$URL_HOST:$PORT MLFLOW_TRACKING_USERNAME=<user> MLFLOW_TRACKING_PASSWORD=<password>" >&2
else
  echo "authentication: off (127.0.0.1 only; set MLFLOW_AUTH_ADMIN_PASSWORD to turn it on)" >&2
  echo "point the pipeline at it with: export MLFLOW_TRACKING_URI=http://$URL_HOST:$PORT" >&2
fi
setsid "$MLFLOW" server "${AUTH_ARGS[@]}" \
  --backend-store-uri "$BACKEND" \
  --artifacts-destination "$STATE/artifacts" --serve-artifacts \
  --host "$HOST" --port "$PORT" --workers "${MLFLOW_WORKERS:-4}" &
SERVER=$! # setsid is this script's child, not a group leader: it execs MLflow in the same process
echo "$SERVER" >"$STATE/mlflow.pid"
status=0
wait "$SERVER" || status=$? # a signal interrupts this wait: its trap stops everything and exits
echo "the MLflow server exited (status $status)" >&2
exit "$status"
