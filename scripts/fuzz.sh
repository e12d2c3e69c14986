#!/usr/bin/env bash
# Runs each coverage-guided fuzz target (fuzz/, cargo fuzz with libFuzzer)
# for a bounded time: SECONDS each (default 15). The committed seeds in
# fuzz/seeds/<target> are read, never written; what the fuzzer finds new
# goes to a temporary corpus. A crash fails the run and leaves its input in
# fuzz/artifacts/<target>/. `cargo fuzz` needs no nightly toolchain with
# `-s none` (coverage without a sanitizer; the targets are safe Rust).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-15}
bash scripts/tools.sh >/dev/null
fuzz="$PWD/tools/cargo-fuzz-0.13.2/bin/cargo-fuzz"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for target in path raw_key jwt create_body; do
  mkdir -p "$work/$target"
  log="$work/$target.log"
  if ! (cd fuzz && "$fuzz" run -s none "$target" "$work/$target" "seeds/$target" -- \
      -max_total_time="$seconds" >"$log" 2>&1); then
    tail -n 40 "$log"
    echo "fuzz target $target failed; the input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  echo "fuzz $target: $(grep -E '^Done' "$log" | tail -n 1)"
done
