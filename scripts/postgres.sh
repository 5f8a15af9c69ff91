#!/usr/bin/env bash
# Sourced by scripts/test.sh: provides TASKER_TEST_POSTGRES_URL for the PostgreSQL tests.
# Uses the server at DATABASE_URL when set; otherwise starts a throwaway cluster (initdb +
# pg_ctl on a free port in a temporary directory) and stops it when the shell exits.

postgres_bindir() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [ -n "$dir" ]; then echo "$dir"; return; fi
  command -v initdb >/dev/null 2>&1 && dirname "$(command -v initdb)"
}

free_port() {
  local port
  for _ in $(seq 1 50); do
    port=$(( (RANDOM % 20000) + 20000 ))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "$port"; return; fi
  done
  return 1
}

as_postgres() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

stop_postgres() {
  if [ -n "${TASKER_PG_DIR:-}" ] && [ -d "$TASKER_PG_DIR/data" ]; then
    as_postgres "$TASKER_PG_BIN/pg_ctl" -D "$TASKER_PG_DIR/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$TASKER_PG_DIR"
  fi
}

start_postgres() {
  if [ -n "${DATABASE_URL:-}" ]; then
    export TASKER_TEST_POSTGRES_URL="$DATABASE_URL"
    echo "PostgreSQL: the server at DATABASE_URL"
    return
  fi
  TASKER_PG_BIN=$(postgres_bindir)
  if [ -z "$TASKER_PG_BIN" ]; then
    echo "PostgreSQL binaries not found (scripts/setup.sh installs Debian's postgresql)" >&2
    return 1
  fi
  TASKER_PG_DIR=$(mktemp -d /tmp/tasker-pg.XXXXXX)
  export TASKER_PG_BIN TASKER_PG_DIR
  [ "$(id -u)" = 0 ] && chown postgres "$TASKER_PG_DIR"
  as_postgres "$TASKER_PG_BIN/initdb" -D "$TASKER_PG_DIR/data" -U postgres --auth=trust -E UTF8 >/dev/null
  local port
  port=$(free_port)
  as_postgres "$TASKER_PG_BIN/pg_ctl" -D "$TASKER_PG_DIR/data" -l "$TASKER_PG_DIR/log" -w \
    -o "-p $port -k $TASKER_PG_DIR -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" \
    start >/dev/null
  export TASKER_PG_PORT="$port"
  export TASKER_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$port/postgres"
  trap stop_postgres EXIT
  echo "PostgreSQL: throwaway cluster on port $port ($TASKER_PG_DIR)"
}
