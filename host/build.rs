//! Builds the guest component (`wasm32-wasip2`, release) so the `sigma-keys`
//! binary embeds it and ships as one file. The guest gets its own target
//! directory, so this nested cargo never waits on the outer build's lock.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let root = manifest_dir.parent().map(PathBuf::from).unwrap_or_default();
    for path in ["guest/src", "guest/Cargo.toml", "wit", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }
    println!("cargo:rerun-if-env-changed=SIGMA_KEYS_COMPONENT");

    // A prebuilt component can be supplied instead (e.g. by a packager).
    if let Some(prebuilt) = env::var_os("SIGMA_KEYS_COMPONENT") {
        println!(
            "cargo:rustc-env=SIGMA_KEYS_COMPONENT_WASM={}",
            PathBuf::from(prebuilt).display()
        );
        return;
    }

    let target_dir = root.join("target").join("guest");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "sigma-keys-guest",
            "--target",
            "wasm32-wasip2",
        ])
        .arg("--target-dir")
        .arg(&target_dir);
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
    let status = cmd.status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => fail(&format!(
            "building the guest component failed ({s}); is the wasm32-wasip2 target installed? (`rustup target add wasm32-wasip2`)"
        )),
        Err(e) => fail(&format!(
            "could not run cargo to build the guest component: {e}"
        )),
    }
    let wasm = target_dir
        .join("wasm32-wasip2")
        .join("release")
        .join("sigma_keys_guest.wasm");
    if !wasm.exists() {
        fail(&format!("the guest build produced no {}", wasm.display()));
    }
    println!(
        "cargo:rustc-env=SIGMA_KEYS_COMPONENT_WASM={}",
        wasm.display()
    );
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1);
}
