#!/usr/bin/env bash
# Installs the tools the tests use, once per user, into a cache outside the
# clone (${XDG_CACHE_HOME:-~/.cache}/sigma-keys/tools), so a second clone
# reuses them: the wasmtime CLI at the host's wasmtime version and wac (the
# stock-host tests), and cargo-fuzz (the fuzz targets). tools/ in the clone
# (ignored by git) links to them.
set -euo pipefail
cd "$(dirname "$0")/.."
WASMTIME_VERSION=48.0.8
WAC_VERSION=0.12.0
CARGO_FUZZ_VERSION=0.13.2
cache="${XDG_CACHE_HOME:-$HOME/.cache}/sigma-keys/tools"
mkdir -p "$cache" tools

# install NAME CRATE VERSION BINARY: cargo install into the cache unless the
# binary is there, then link tools/NAME-VERSION to it.
install() {
  local name=$1 crate=$2 version=$3 binary=$4
  local root="$cache/$name-$version"
  if [ ! -x "$root/bin/$binary" ]; then
    echo "installing $crate $version into $root (once per user, several minutes)"
    cargo install "$crate" --version "$version" --locked --root "$root"
  fi
  # Replace a directory left by an older layout with the link.
  if [ -d "tools/$name-$version" ] && [ ! -L "tools/$name-$version" ]; then
    rm -rf "tools/$name-$version"
  fi
  ln -sfn "$root" "tools/$name-$version"
}

install wasmtime wasmtime-cli "$WASMTIME_VERSION" wasmtime
install wac wac-cli "$WAC_VERSION" wac
install cargo-fuzz cargo-fuzz "$CARGO_FUZZ_VERSION" cargo-fuzz
