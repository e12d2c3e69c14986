//! Builds the guest component (`wasm32-wasip2`, release) so the `sigma-keys`
//! binary embeds it and ships as one file, plus the guest test programs that
//! the host's tests load. The guests get their own target directory, so this
//! nested cargo never waits on the outer build's lock.

use std::env;

#[path = "src/engine.rs"]
mod engine;
use std::path::PathBuf;
use std::process::Command;

/// Packages to build, and the env var each artifact's path is exported as.
const GUESTS: [(&str, &str, &str); 3] = [
    (
        "sigma-keys-guest",
        "sigma_keys_guest.wasm",
        "SIGMA_KEYS_COMPONENT_WASM",
    ),
    // The store-on-wasi:keyvalue adapter, composed with the component for stock hosts.
    (
        "sigma-keys-keyvalue-adapter",
        "sigma_keys_keyvalue_adapter.wasm",
        "SIGMA_KEYS_KEYVALUE_ADAPTER_WASM",
    ),
    (
        "sigma-keys-panicking-guest",
        "sigma_keys_panicking_guest.wasm",
        "SIGMA_KEYS_PANICKING_GUEST_WASM",
    ),
];

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let root = manifest_dir.parent().map(PathBuf::from).unwrap_or_default();
    // docs/openapi.yaml: the component serves it (see guest/build.rs).
    for path in [
        "guest",
        "adapters",
        "tests/programs",
        "wit",
        "Cargo.lock",
        "docs/openapi.yaml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }

    let target_dir = root.join("target").join("guest");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "wasm32-wasip2",
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    for (package, _, _) in GUESTS {
        cmd.args(["-p", package]);
    }
    // Settings meant for the host build must not leak into the guest build.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
    ] {
        cmd.env_remove(var);
    }
    match cmd.status() {
        Ok(s) if s.success() => {}
        Ok(s) => fail(&format!(
            "building the guest component failed ({s}); is the wasm32-wasip2 target installed? (`rustup target add wasm32-wasip2`)"
        )),
        Err(e) => fail(&format!(
            "could not run cargo to build the guest component: {e}"
        )),
    }
    let out = target_dir.join("wasm32-wasip2").join("release");
    for (_, file, var) in GUESTS {
        let wasm = out.join(file);
        if !wasm.exists() {
            fail(&format!("the guest build produced no {}", wasm.display()));
        }
        println!("cargo:rustc-env={var}={}", wasm.display());
    }
    precompile(&out.join(GUESTS[0].1));
}

/// Compiles the component ahead of time with the runtime's settings, so the
/// binary starts without compiling (it falls back to compiling when the
/// artifact does not fit the machine it runs on).
fn precompile(wasm: &std::path::Path) {
    let mut config = wasmtime::Config::new();
    engine::configure(&mut config);
    let compiled = std::fs::read(wasm)
        .map_err(|e| e.to_string())
        .and_then(|bytes| {
            let engine = wasmtime::Engine::new(&config).map_err(|e| e.to_string())?;
            engine
                .precompile_component(&bytes)
                .map_err(|e| e.to_string())
        });
    let compiled = match compiled {
        Ok(c) => c,
        Err(e) => fail(&format!("precompiling the component failed: {e}")),
    };
    let path =
        PathBuf::from(env::var_os("OUT_DIR").unwrap_or_default()).join("sigma_keys_guest.cwasm");
    if let Err(e) = std::fs::write(&path, compiled) {
        fail(&format!("cannot write {}: {e}", path.display()));
    }
    println!(
        "cargo:rustc-env=SIGMA_KEYS_COMPONENT_CWASM={}",
        path.display()
    );
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1);
}
