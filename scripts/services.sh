#!/usr/bin/env bash
# Ensure Redis (6379) and PostgreSQL (5432, trust auth, database "test") answer on loopback.
# Installs the Debian packages and starts the servers only when they are missing.
set -uo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

apt_install() {
  if [ "$(id -u)" != 0 ]; then echo "services: need root to install $*" >&2; return 1; fi
  if [ -z "${_APT_UPDATED:-}" ]; then apt-get update -qq >/dev/null && _APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_redis() {
  port_open 6379 && return 0
  command -v redis-server >/dev/null || apt_install redis-server || return 1
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/tiergate-tests.log
  for _ in $(seq 50); do port_open 6379 && return 0; sleep 0.1; done
  echo "services: redis did not start" >&2; return 1
}

ensure_postgres() {
  if ! port_open 5432; then
    if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then apt_install postgresql || return 1; fi
    local ver; ver=$(ls /etc/postgresql | sort -V | tail -n1)
    local hba="/etc/postgresql/$ver/main/pg_hba.conf"
    if ! grep -q "tiergate-tests" "$hba" 2>/dev/null; then
      { echo "# tiergate-tests: trust on loopback"; echo "host all all 127.0.0.1/32 trust";
        echo "local all all trust"; cat "$hba"; } > "$hba.new" && mv "$hba.new" "$hba"
    fi
    pg_ctlcluster --skip-systemctl-redirect "$ver" main start || return 1
    for _ in $(seq 100); do port_open 5432 && break; sleep 0.1; done
  fi
  if ! psql -h 127.0.0.1 -U postgres -d postgres -tAc "select 1 from pg_database where datname='test'" 2>/dev/null | grep -q 1; then
    psql -h 127.0.0.1 -U postgres -d postgres -qc "create database test" || return 1
  fi
}

ensure_redis || echo "services: WARNING: no Redis on 127.0.0.1:6379" >&2
ensure_postgres || echo "services: WARNING: no PostgreSQL on 127.0.0.1:5432" >&2
exit 0
