# Recipes for day-to-day work; the README's two commands need no `just`.

# Build the component and the server (dev profile)
build:
    cargo build -p sigma-keys-host

# Build (release) and serve; pass serve flags after, e.g. `just serve --upstream http://127.0.0.1:9000`
serve *ARGS:
    bash scripts/serve.sh {{ARGS}}

# Everything CI runs: fmt check, clippy (host and guest), all tests
test:
    bash scripts/test.sh

# The benchmark suite (release build, a few minutes): target/bench/report.json
bench:
    bash scripts/bench.sh

# A short benchmark run on the dev build: proves the suite works (CI runs it)
bench-quick:
    bash scripts/bench.sh --quick

# Run each fuzz target for SECONDS (default 60); crashes land in fuzz/artifacts/
fuzz SECONDS="60":
    bash scripts/fuzz.sh {{SECONDS}}

# Format all code
fmt:
    cargo fmt --all
    cargo fmt --manifest-path fuzz/Cargo.toml

# Clippy with warnings as errors, natively and for the guest's wasm target
lint:
    cargo clippy --workspace --all-targets -- -D warnings
    cargo clippy -p sigma-keys-guest -p sigma-keys-panicking-guest -p sigma-keys-keyvalue-adapter -p sigma-keys-bench-hello --target wasm32-wasip2 --target-dir target/guest -- -D warnings

# Build only the component: target/guest/wasm32-wasip2/release/sigma_keys_guest.wasm
component:
    cargo build --release -p sigma-keys-guest --target wasm32-wasip2 --target-dir target/guest

# Compose the component with the wasi:keyvalue adapter: target/composed/sigma_keys_keyvalue.wasm
compose:
    bash scripts/compose.sh

# Refresh wit/deps from the wasmtime crates in Cargo.lock
vendor-wit:
    bash scripts/vendor-wit.sh
