#!/usr/bin/env bash
# Installs nginx from Debian's `nginx` package when missing, idempotently,
# without starting Debian's own nginx service: the benchmark (and tests)
# start nginx themselves, with a config in a temp dir, on a free port.
set -euo pipefail

if command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; then
  exit 0
fi
echo "installing nginx (Debian package nginx)"
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
# Debian starts a package's service on install unless policy-rc.d says no.
made_policy=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
  as_root chmod +x /usr/sbin/policy-rc.d
  made_policy=1
fi
cleanup() { if [ -n "$made_policy" ]; then as_root rm -f /usr/sbin/policy-rc.d; fi; }
trap cleanup EXIT
as_root apt-get update -qq
DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq nginx >/dev/null
[ -x /usr/sbin/nginx ]
