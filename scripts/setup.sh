#!/usr/bin/env bash
# Installs what building sigma-keys needs, idempotently: the pinned Rust
# toolchain (rust-toolchain.toml) with rustfmt, clippy and the wasm32-wasip2
# target. Sourced by run.sh and test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v rustup >/dev/null 2>&1; then
  echo "error: rustup is needed (https://rustup.rs); it installs the toolchain in rust-toolchain.toml" >&2
  exit 1
fi
toolchain=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
if ! rustup run "$toolchain" rustc --version >/dev/null 2>&1; then
  rustup toolchain install "$toolchain" --profile minimal
fi
installed=$(rustup +"$toolchain" target list --installed)
grep -qx wasm32-wasip2 <<<"$installed" || rustup +"$toolchain" target add wasm32-wasip2
components=$(rustup +"$toolchain" component list --installed)
for c in rustfmt clippy; do
  grep -q "^$c" <<<"$components" || rustup +"$toolchain" component add "$c"
done
