//! Turns `docs/openapi.yaml`, the API's one description, into the JSON the
//! component serves at `GET /api/v1/openapi.json`, so the served document
//! cannot drift from the file.

use std::error::Error;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn Error>> {
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.yaml");
    println!("cargo::rerun-if-changed={}", source.display());
    let yaml = std::fs::read_to_string(&source)
        .map_err(|e| format!("cannot read {}: {e}", source.display()))?;
    let document: serde_json::Value = serde_yaml_ng::from_str(&yaml)
        .map_err(|e| format!("{} is not valid YAML: {e}", source.display()))?;
    let out = PathBuf::from(std::env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?);
    std::fs::write(out.join("openapi.json"), serde_json::to_string(&document)?)?;
    Ok(())
}
