#!/usr/bin/env bash
# Counts the user-space instructions one forwarded request costs the whole
# gateway, with callgrind: numbers that this shared machine's noise does not
# move, for comparing two builds of the server.
#
#   scripts/count-instructions.sh [SERVER] [SECONDS]
#
# SERVER defaults to target/release/sigma-keys; build it and the bench
# first (`cargo build --release -p sigma-keys-host -p sigma-keys-bench`).
# Runs the bench's upstream, creates a key in a throwaway database, starts
# SERVER under valgrind with instrumentation off, warms it up, then counts
# SECONDS (default 15) of `wrk -t1 -c4` on that key and divides by the
# requests wrk completed. Needs valgrind and wrk (Debian packages).
# `--plain` instead of SERVER counts the bench's plain per-core proxy the
# same way, the floor of this stack with nothing checked; `--native` the
# bench's native gateway (that proxy checking the key with the domain's
# decide compiled natively, no component), the floor of any design of the
# check on this stack.
set -euo pipefail
cd "$(dirname "$0")/.."
server=${1:-target/release/sigma-keys}
seconds=${2:-15}
bench=target/release/sigma-keys-bench
for tool in valgrind callgrind_control callgrind_annotate wrk; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install valgrind wrk)" >&2; exit 1; }
done
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  # valgrind writes its last dump as it exits; let it finish first.
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

"$bench" upstream >"$work/upstream.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 50); do grep -q 'http://' "$work/upstream.log" && break; sleep 0.1; done
upstream=$(grep -o 'http://[0-9.:]*' "$work/upstream.log" | head -n 1)

create_key() {
  "$1" keys create --db "$work/keys.db" --tenant acme --name count --permissions read 2>/dev/null |
    python3 -c 'import json, sys; t = sys.stdin.read(); print(json.loads(t[t.index("{"):])["rawKey"])'
}

if [ "$server" = --plain ] || [ "$server" = --native ]; then
  header=()
  baseline=plain-proxy-per-core
  if [ "$server" = --native ]; then
    key=$(create_key target/release/sigma-keys)
    header=(-H "X-Sigma-ApiKey: $key")
    baseline=native-gateway-per-core
  fi
  SIGMA_KEYS_BENCH_RAW_KEY=${key:-} valgrind --tool=callgrind --instr-atstart=no \
    --callgrind-out-file="$work/cg.out" \
    "$bench" "$baseline" "${upstream#http://}" >"$work/server.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 300); do grep -q 'listening on http://' "$work/server.log" && break; sleep 0.2; done
  address=$(grep -o 'listening on http://[0-9.:]*' "$work/server.log" | head -n 1)
  address=${address#listening on http://}
else
  key=$(create_key "$server")
  address=127.0.0.1:$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  SIGMA_KEYS_LOG=warn valgrind --tool=callgrind --instr-atstart=no \
    --callgrind-out-file="$work/cg.out" \
    "$server" serve --db "$work/keys.db" --upstream "$upstream" --listen "$address" \
    >"$work/server.log" 2>&1 &
  pids+=($!)
  header=(-H "X-Sigma-ApiKey: $key")
fi
pid=${pids[-1]}
url="http://$address/api/v1/records"
for _ in $(seq 1 300); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "${header[@]}" "$url" || true)" = 200 ] && break
  sleep 0.2
done
callgrind_control -i on "$pid" >/dev/null 2>&1
wrk -t1 -c4 -d3s "${header[@]}" "$url" >/dev/null
callgrind_control -z "$pid" >/dev/null 2>&1
requests=$(wrk -t1 -c4 -d"${seconds}s" "${header[@]}" "$url" | awk '/requests in/ {print $1}')
callgrind_control -d "$pid" >/dev/null 2>&1
# The dump holds what ran between the zeroing and the dump.
total=$(awk '/^summary/ {print $2}' "$work/cg.out.1")
echo "$requests requests, $((total / requests)) user-space instructions per request"
