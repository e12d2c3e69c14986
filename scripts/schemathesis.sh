#!/usr/bin/env bash
# Installs schemathesis (PyPI), which checks the server against
# docs/openapi.yaml, into a venv in the per-user cache; prints the path of
# its `st` program. Idempotent: a second run (or a second clone) reuses it.
set -euo pipefail
version=4.32.5
venv="${XDG_CACHE_HOME:-$HOME/.cache}/sigma-keys/schemathesis-$version"
if ! "$venv/bin/st" --version >/dev/null 2>&1; then
  rm -rf "$venv"
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version" >&2
fi
echo "$venv/bin/st"
