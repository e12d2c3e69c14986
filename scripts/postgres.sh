#!/usr/bin/env bash
# Installs PostgreSQL's server programs (initdb, pg_ctl) and psql from
# Debian's `postgresql` package when missing, idempotently. The tests and the
# benchmark start throwaway clusters of their own with them; no cluster is
# created or started here.
set -euo pipefail

if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && command -v psql >/dev/null 2>&1; then
  exit 0
fi
echo "installing PostgreSQL (Debian package postgresql)"
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
# No main cluster: the tests make their own.
as_root mkdir -p /etc/postgresql-common/createcluster.d
echo "create_main_cluster = false" | as_root tee /etc/postgresql-common/createcluster.d/sigma-keys.conf >/dev/null
as_root apt-get update -qq
DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq postgresql >/dev/null
ls /usr/lib/postgresql/*/bin/initdb >/dev/null
