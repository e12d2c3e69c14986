#!/usr/bin/env bash
# The test command: formatting, lints (host and guest), then every test —
# guest unit and property tests natively, host unit and component tests, the
# end-to-end suite that drives the real binary over HTTP (the adversarial
# suite, the crash loop, and several nodes on a throwaway PostgreSQL among them), the embedding examples, and each
# fuzz target for a bounded time.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
echo "== clippy (native, all targets)"
cargo clippy --workspace --all-targets --locked -- -D warnings
# The fuzz crate is outside the workspace; lint it here so a changed domain
# signature fails now rather than at the fuzz step.
cargo clippy --manifest-path fuzz/Cargo.toml --all-targets --locked -- -D warnings
echo "== clippy (guest, wasm32-wasip2)"
cargo clippy -p sigma-keys-guest -p sigma-keys-panicking-guest -p sigma-keys-keyvalue-adapter -p sigma-keys-bench-hello -p sigma-keys-bench-inwasm --target wasm32-wasip2 --target-dir target/guest --locked -- -D warnings
echo "== tools (wasmtime CLI, wac, cargo-fuzz; installed once per user, linked from tools/)"
bash scripts/tools.sh
echo "== PostgreSQL server programs (the tests start throwaway clusters)"
bash scripts/postgres.sh
echo "== nginx and Caddy (the tests start them in front of sigma-keys)"
bash scripts/proxies.sh
echo "== schemathesis (PyPI; checks the server against docs/openapi.yaml)"
bash scripts/schemathesis.sh >/dev/null
if ! command -v openssl >/dev/null 2>&1; then
  echo "== openssl (the tests make identity-provider key pairs with it)"
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq openssl; else sudo apt-get install -y -qq openssl; fi
fi
echo "== benchmark smoke test (bench.sh --quick: the suite runs; no timing is asserted)"
bash scripts/bench.sh --quick > target/bench-quick.log 2>&1 || { cat target/bench-quick.log; exit 1; }
tail -n 3 target/bench-quick.log
echo "== tests"
cargo test --workspace --locked
echo "== embedding examples (Python, Node)"
bash scripts/test-examples.sh
echo "== fuzz targets (15 s each)"
bash scripts/fuzz.sh 15
