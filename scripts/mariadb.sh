#!/usr/bin/env bash
# A local MariaDB for ML Metadata (metadata.kind: mysql): for `make mariadb` and .ci/run.
#
# Installs Debian's mariadb-server with apt if it is missing, then starts one server on a free
# local port with its own data directory under build/mariadb (never the system's /var/lib/mysql),
# creates a database and a user for driftline, and prints the connection as shell exports:
#
#   eval "$(bash scripts/mariadb.sh)"
#
# A server this script started earlier (its pid file alive, answering on its port) is reused.
# ML Metadata 1.16 speaks the old client protocol: the user authenticates with
# mysql_native_password. The password is generated once and kept in the data folder.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT_DIR=$PWD
BASE=${DRIFTLINE_MARIADB_DIR:-$ROOT_DIR/build/mariadb}
DATA=$BASE/data
SOCK=$BASE/mariadb.sock
PIDFILE=$BASE/mariadb.pid
PORTFILE=$BASE/port
PWFILE=$BASE/password
DB=${DRIFTLINE_MARIADB_DATABASE:-driftline}
DBUSER=${DRIFTLINE_MARIADB_USER:-driftline}
log() { echo "mariadb.sh: $*" >&2; }

find_bin() {
  for name in "$@"; do
    for dir in /usr/sbin /usr/bin /usr/local/sbin /usr/local/bin; do
      if [ -x "$dir/$name" ]; then echo "$dir/$name"; return 0; fi
    done
  done
  return 1
}

if ! find_bin mariadbd mysqld >/dev/null; then
  log "installing Debian's mariadb-server (apt-get) ..."
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends mariadb-server mariadb-client >&2
fi
MARIADBD=$(find_bin mariadbd mysqld)
INSTALL_DB=$(find_bin mariadb-install-db mysql_install_db)
CLIENT=$(find_bin mariadb mysql)
ADMIN=$(find_bin mariadb-admin mysqladmin)

running() {
  [ -f "$PIDFILE" ] && [ -f "$PORTFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null \
    && "$ADMIN" --no-defaults --socket="$SOCK" -uroot ping >/dev/null 2>&1
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

mkdir -p "$BASE"
if running; then
  log "reusing the server on port $(cat "$PORTFILE") (pid $(cat "$PIDFILE"))"
else
  if [ ! -d "$DATA/mysql" ]; then
    log "initialising $DATA ..."
    rm -rf "$DATA"
    # root authenticates over the socket as the OS user running this script (unix_socket);
    # --user lets the server run as that user, root included.
    "$INSTALL_DB" --no-defaults --datadir="$DATA" --user="$(id -un)" --auth-root-authentication-method=socket \
      --skip-test-db >"$BASE/install.log" 2>&1 || { cat "$BASE/install.log" >&2; exit 1; }
  fi
  PORT=$(free_port)
  echo "$PORT" >"$PORTFILE"
  log "starting mariadbd on 127.0.0.1:$PORT (data $DATA) ..."
  "$MARIADBD" --no-defaults --datadir="$DATA" --socket="$SOCK" --pid-file="$PIDFILE" --port="$PORT" \
    --bind-address=127.0.0.1 --user="$(id -un)" --skip-name-resolve --log-error="$BASE/error.log" \
    --innodb-buffer-pool-size=64M --innodb-log-file-size=16M --max-connections=200 \
    --innodb-flush-log-at-trx-commit=2 >/dev/null 2>&1 &
  for _ in $(seq 1 120); do
    if "$ADMIN" --no-defaults --socket="$SOCK" -uroot ping >/dev/null 2>&1; then break; fi
    sleep 0.5
  done
  if ! "$ADMIN" --no-defaults --socket="$SOCK" -uroot ping >/dev/null 2>&1; then
    log "mariadbd did not start; its log:"; tail -30 "$BASE/error.log" >&2; exit 1
  fi
fi
PORT=$(cat "$PORTFILE")
if [ ! -s "$PWFILE" ]; then
  python3 -c 'import secrets; print(secrets.token_hex(16))' >"$PWFILE"
  chmod 600 "$PWFILE"
fi
PASSWORD=$(cat "$PWFILE")
"$CLIENT" --no-defaults --socket="$SOCK" -uroot <<SQL
CREATE DATABASE IF NOT EXISTS \`$DB\`;
CREATE USER IF NOT EXISTS '$DBUSER'@'127.0.0.1' IDENTIFIED VIA mysql_native_password USING PASSWORD('$PASSWORD');
CREATE USER IF NOT EXISTS '$DBUSER'@'localhost' IDENTIFIED VIA mysql_native_password USING PASSWORD('$PASSWORD');
ALTER USER '$DBUSER'@'127.0.0.1' IDENTIFIED VIA mysql_native_password USING PASSWORD('$PASSWORD');
ALTER USER '$DBUSER'@'localhost' IDENTIFIED VIA mysql_native_password USING PASSWORD('$PASSWORD');
-- Tests create one database per test (driftline_t_*), so the user may create and drop those too.
GRANT ALL PRIVILEGES ON \`$DB\`.* TO '$DBUSER'@'127.0.0.1', '$DBUSER'@'localhost';
GRANT ALL PRIVILEGES ON \`${DB}\_t\_%\`.* TO '$DBUSER'@'127.0.0.1', '$DBUSER'@'localhost';
FLUSH PRIVILEGES;
SQL
cat <<ENV
export DRIFTLINE_MYSQL_HOST=127.0.0.1
export DRIFTLINE_MYSQL_PORT=$PORT
export DRIFTLINE_MYSQL_DATABASE=$DB
export DRIFTLINE_MYSQL_USER=$DBUSER
export DRIFTLINE_MYSQL_PASSWORD=$PASSWORD
ENV
