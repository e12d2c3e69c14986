#!/usr/bin/env bash
# Installs the proxies that sigma-keys plugs into, nginx and Caddy, from
# Debian's `nginx` and `caddy` packages when missing, idempotently, without
# starting Debian's own services: the tests and the benchmark start them
# themselves, with a config in a temp dir, on free ports.
set -euo pipefail

missing=()
[ -x /usr/sbin/nginx ] || missing+=(nginx)
[ -x /usr/bin/caddy ] || missing+=(caddy)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "installing ${missing[*]} (Debian packages)"
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
DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
[ -x /usr/sbin/nginx ] && [ -x /usr/bin/caddy ]
