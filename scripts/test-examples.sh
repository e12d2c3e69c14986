#!/usr/bin/env bash
# The embedding examples in other languages, against the component that
# `cargo test` built (target/guest/.../sigma_keys_guest.wasm). Installs what
# they need (a Python venv, npm packages) idempotently.
set -euo pipefail
cd "$(dirname "$0")/.."
wasm=target/guest/wasm32-wasip2/release/sigma_keys_guest.wasm
[ -f "$wasm" ] || cargo build --locked -p sigma-keys-host

echo "== Rust (examples/embed.rs)"
cargo run --quiet --locked -p sigma-keys-host --example embed

echo "== wasmtime serve composition (scripts/compose.sh)"
bash scripts/compose.sh

echo "== Python (wasmtime-py)"
(
  cd examples/python
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
  .venv/bin/python example.py ../../target/guest/wasm32-wasip2/release/sigma_keys_guest.wasm
  .venv/bin/python -m pytest -q -p no:cacheprovider
)

echo "== Node (jco + better-sqlite3)"
(
  cd examples/node
  # npm ci only when the lockfile changed since the last install.
  if ! cmp -s package-lock.json node_modules/.installed-lock.json 2>/dev/null; then
    npm ci --no-audit --no-fund
    cp package-lock.json node_modules/.installed-lock.json
  fi
  npm run --silent transpile
  node example.js
  node --test
)
