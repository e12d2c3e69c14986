#!/usr/bin/env bash
# Installs the stock tools the stock-host tests use, once, into tools/ (ignored
# by git): the wasmtime CLI at the host's wasmtime version and wac (composition).
set -euo pipefail
cd "$(dirname "$0")/.."
WASMTIME_VERSION=48.0.8
WAC_VERSION=0.12.0
if [ ! -x "tools/wasmtime-$WASMTIME_VERSION/bin/wasmtime" ]; then
  echo "installing wasmtime-cli $WASMTIME_VERSION into tools/ (one time, several minutes)"
  cargo install wasmtime-cli --version "$WASMTIME_VERSION" --locked --root "tools/wasmtime-$WASMTIME_VERSION"
fi
if [ ! -x "tools/wac-$WAC_VERSION/bin/wac" ]; then
  echo "installing wac-cli $WAC_VERSION into tools/ (one time)"
  cargo install wac-cli --version "$WAC_VERSION" --locked --root "tools/wac-$WAC_VERSION"
fi
