#!/usr/bin/env bash
# The benchmark suite. `bench.sh` builds release and measures properly (a few
# minutes); `bench.sh --quick` uses the dev build and short runs, as a smoke
# test that the suite works (its numbers mean little). `--only SECTION`
# (repeatable) runs part of it. Both write
# target/bench/report.json and print a markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
bash scripts/tools.sh
bash scripts/postgres.sh
bash scripts/proxies.sh
if ! command -v wrk >/dev/null 2>&1; then
  echo "installing wrk (Debian package)"
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq wrk; else sudo apt-get install -y -qq wrk; fi
fi
quick=""
profile=release
if [ "${1:-}" = "--quick" ]; then quick="--quick"; profile=debug; shift; fi
flag=$([ "$profile" = release ] && echo --release || true)
cargo build $flag --locked -p sigma-keys-host -p sigma-keys-bench
cargo build --release --locked --target wasm32-wasip2 --target-dir target/guest -p sigma-keys-bench-hello
# The probe reuses the guest crate without its WIT layer; a target dir of its
# own keeps that build from replacing target/guest's sigma_keys_guest.wasm.
cargo build --release --locked --target wasm32-wasip2 --target-dir target/bench-guest -p sigma-keys-bench-inwasm
# Further arguments pass through, e.g. `--only proxy_auth`.
exec "target/$profile/sigma-keys-bench" $quick "$@" \
  --server "target/$profile/sigma-keys" \
  --wasmtime tools/wasmtime-48.0.8/bin/wasmtime \
  --hello target/guest/wasm32-wasip2/release/sigma_keys_bench_hello.wasm \
  --inwasm target/bench-guest/wasm32-wasip2/release/sigma_keys_bench_inwasm.wasm \
  --out target/bench
