#!/usr/bin/env bash
# Refreshes wit/deps from the WIT that the wasmtime crates we build against ship,
# so the component imports exactly the WASI versions the host implements.
set -euo pipefail
cd "$(dirname "$0")/.."
src_of() {
  cargo metadata --format-version 1 --manifest-path host/Cargo.toml 2>/dev/null |
    python3 -c 'import json,sys,os; m=json.load(sys.stdin); print([os.path.dirname(p["manifest_path"]) for p in m["packages"] if p["name"]==sys.argv[1]][0])' "$1"
}
http=$(src_of wasmtime-wasi-http)
config=$(src_of wasmtime-wasi-config)
# wasi:keyvalue is for the keyvalue adapter (adapters/keyvalue), not the host:
# take it from the wasmtime-wasi-keyvalue crate of the same wasmtime version.
version=$(basename "$http" | sed 's/^wasmtime-wasi-http-//')
keyvalue="$(dirname "$http")/wasmtime-wasi-keyvalue-$version"
[ -d "$keyvalue" ] || cargo info "wasmtime-wasi-keyvalue@$version" >/dev/null
rm -rf wit/deps
mkdir -p wit/deps
for f in "$http"/wit/deps/*.wit; do
  name=$(basename "$f" .wit)
  mkdir -p "wit/deps/$name"
  cp "$f" "wit/deps/$name/$name.wit"
done
cp -r "$config/wit/deps/config" wit/deps/config
cp -r "$keyvalue/wit/deps/keyvalue" wit/deps/keyvalue
echo "wit/deps refreshed from $http, $config and $keyvalue"
