#!/usr/bin/env bash
# Installs (when missing) and starts the real services the tests talk to, on loopback ports only:
#   - PostgreSQL (Debian package): one throw-away cluster; every test creates its own database in it.
#   - redis-server (Debian package): the tests start their own servers from it (one per test, so a test
#     can restart Redis under a running API without touching another test).
#   - an S3-compatible server: PyPI's moto in server mode, in a virtualenv; every test uses its own bucket.
#   - a Docker engine (Debian's docker.io): dockerd is started when no daemon answers.
#
# Source it (`. scripts/services.sh; services_start`) and it exports the variables the test support
# code reads: TEST_DATABASE_URL, REDIS_SERVER_BIN, TEST_S3_ENDPOINT (+ AWS_* test credentials),
# DOCKER_HOST_AVAILABLE. `services_stop` (installed as an EXIT trap by services_start) stops what it started.
#
# SERVICES_DIR overrides the state directory (default: <repo>/target/services).

SERVICES_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SERVICES_DIR="${SERVICES_DIR:-$SERVICES_ROOT/target/services}"
PG_PORT="${TEST_PG_PORT:-54329}"
S3_PORT="${TEST_S3_PORT:-59000}"
_SERVICES_PIDS=()
_SERVICES_PG_DATA=""

_svc_log() { printf '==> services: %s\n' "$*" >&2; }

_svc_apt_updated=0
_svc_apt() {
  local missing=()
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "services: missing Debian packages: ${missing[*]} (run as root to install them)" >&2
    return 1
  fi
  if [ "$_svc_apt_updated" = 0 ]; then
    apt-get update -qq
    _svc_apt_updated=1
  fi
  _svc_log "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

_svc_wait() {
  # _svc_wait <seconds> <description> <command...>: polls the command until it succeeds.
  local secs=$1 what=$2
  shift 2
  local i
  for ((i = 0; i < secs * 10; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "services: $what did not come up within ${secs}s" >&2
  return 1
}

_svc_postgres() {
  _svc_apt postgresql
  local bin
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -x "$bin/initdb" ] || { echo "services: PostgreSQL binaries not found under /usr/lib/postgresql" >&2; return 1; }
  _SERVICES_PG_DATA="$SERVICES_DIR/pg"
  rm -rf "$_SERVICES_PG_DATA"
  mkdir -p "$_SERVICES_PG_DATA"
  local as=()
  if [ "$(id -u)" = 0 ]; then
    chown -R postgres:postgres "$_SERVICES_PG_DATA"
    as=(runuser -u postgres --)
  fi
  "${as[@]}" "$bin/initdb" -D "$_SERVICES_PG_DATA/data" -U postgres --auth=trust -E UTF8 >/dev/null
  "${as[@]}" "$bin/pg_ctl" -D "$_SERVICES_PG_DATA/data" -l "$_SERVICES_PG_DATA/log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $_SERVICES_PG_DATA -c max_connections=400 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
    start >/dev/null
  export TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
  _svc_log "PostgreSQL on 127.0.0.1:$PG_PORT"
}

_svc_redis() {
  _svc_apt redis-server
  REDIS_SERVER_BIN=$(command -v redis-server || echo /usr/bin/redis-server)
  export REDIS_SERVER_BIN
  # Debian's package may start a system instance; the tests never use it.
  _svc_log "redis-server at $REDIS_SERVER_BIN (each test starts its own)"
}

_svc_s3() {
  local venv="${MOTO_VENV:-$SERVICES_ROOT/.venv-moto}"
  if ! [ -x "$venv/bin/moto_server" ]; then
    _svc_log "installing moto[server] into $venv"
    python3 -m venv --clear "$venv" >/dev/null 2>&1 || { _svc_apt python3-venv && python3 -m venv --clear "$venv"; }
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check 'moto[server]>=5.1,<6'
  fi
  mkdir -p "$SERVICES_DIR"
  "$venv/bin/moto_server" -H 127.0.0.1 -p "$S3_PORT" >"$SERVICES_DIR/moto.log" 2>&1 &
  _SERVICES_PIDS+=($!)
  export TEST_S3_ENDPOINT="http://127.0.0.1:$S3_PORT"
  export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-testing}"
  export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-testing}"
  _svc_wait 30 "moto S3 server" curl -sf "$TEST_S3_ENDPOINT/moto-api/" || _svc_wait 5 "moto S3 server" curl -s "$TEST_S3_ENDPOINT/"
  _svc_log "S3 (moto) on $TEST_S3_ENDPOINT"
}

_svc_docker() {
  if ! command -v dockerd >/dev/null 2>&1; then
    _svc_apt docker.io docker-compose iptables || return 0
  else
    _svc_apt docker-compose || true
  fi
  if docker info >/dev/null 2>&1; then
    _svc_log "Docker engine already answering"
  else
    mkdir -p "$SERVICES_DIR"
    dockerd >"$SERVICES_DIR/dockerd.log" 2>&1 &
    _SERVICES_PIDS+=($!)
    if ! _svc_wait 60 "dockerd" docker info; then
      tail -n 30 "$SERVICES_DIR/dockerd.log" >&2 || true
      return 0
    fi
    _svc_log "dockerd started"
  fi
  export DOCKER_HOST_AVAILABLE=1
}

services_stop() {
  local pid
  for pid in "${_SERVICES_PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  if [ -n "$_SERVICES_PG_DATA" ] && [ -d "$_SERVICES_PG_DATA/data" ]; then
    local bin as=()
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    [ "$(id -u)" = 0 ] && as=(runuser -u postgres --)
    "${as[@]}" "$bin/pg_ctl" -D "$_SERVICES_PG_DATA/data" -m immediate stop >/dev/null 2>&1 || true
  fi
  _SERVICES_PIDS=()
}

services_start() {
  mkdir -p "$SERVICES_DIR"
  trap services_stop EXIT
  _svc_apt curl ca-certificates
  _svc_postgres
  _svc_redis
  _svc_s3
  _svc_docker
}
