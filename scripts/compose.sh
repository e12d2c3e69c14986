#!/usr/bin/env bash
# Composes the service component with the wasi:keyvalue store adapter into one
# component that imports only standard WASI:
#   target/composed/sigma_keys_keyvalue.wasm
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/tools.sh
cargo build --release --locked --target wasm32-wasip2 --target-dir target/guest \
  -p sigma-keys-guest -p sigma-keys-keyvalue-adapter
out=target/guest/wasm32-wasip2/release
mkdir -p target/composed
tools/wac-0.12.0/bin/wac plug "$out/sigma_keys_guest.wasm" \
  --plug "$out/sigma_keys_keyvalue_adapter.wasm" \
  -o target/composed/sigma_keys_keyvalue.wasm
echo "target/composed/sigma_keys_keyvalue.wasm"
