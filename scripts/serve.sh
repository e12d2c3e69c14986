#!/usr/bin/env bash
# The run command: installs the toolchain and target if needed, builds the
# component and the server (release), and serves. Extra arguments go to
# `sigma-keys serve`, e.g. --upstream http://127.0.0.1:9000.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --release --locked -p sigma-keys-host --bin sigma-keys
exec target/release/sigma-keys serve "$@"
