//! `docs/openapi.yaml` held true: the real server serves it, and
//! schemathesis (PyPI) checks every operation of it against the real server,
//! with generated valid and invalid requests, a valid token and a valid key.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::support::Server;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The spec as the file says it, as JSON.
fn documented() -> Value {
    let yaml = std::fs::read_to_string(repo().join("docs/openapi.yaml")).unwrap();
    serde_yaml_ng::from_str(&yaml).unwrap()
}

#[test]
fn the_served_document_is_docs_openapi_yaml() {
    let server = Server::start(&[]);
    let r = server.send("GET", "/api/v1/openapi.json", &[], None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json(), documented());
}

/// The `st` program, installed into the per-user cache if it is not there.
fn schemathesis() -> PathBuf {
    let out = Command::new("bash")
        .arg(repo().join("scripts/schemathesis.sh"))
        .output()
        .expect("scripts/schemathesis.sh");
    assert!(
        out.status.success(),
        "installing schemathesis failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Every operation, in every phase (examples, coverage, fuzzing, stateful
/// sequences along the links it infers), with positive and negative data:
/// each answer's status, content type, headers and body must be what the
/// document says, and none may be a 5xx. Bounded: 40 cases per operation
/// and phase, a fixed seed (the run is reproducible), one worker.
#[test]
fn schemathesis_finds_the_server_true_to_its_document() {
    let dir = tempfile::tempdir().unwrap();
    let (_, scanning_keys) = crate::lifecycle::github_keys(dir.path(), "st-key");
    let server = Server::start(&["--github-scanning-keys", scanning_keys.to_str().unwrap()]);
    // The key belongs to another tenant than the token's: the run deletes
    // and deactivates what the token can reach, and must not end the key.
    let (_, key) = server.create_key(
        "schemathesis-keys",
        "schemathesis",
        &[
            "read",
            "update-data",
            "delete-data",
            "update-model",
            "delete-model",
        ],
    );
    let token = server.token("schemathesis");
    let config = dir.path().join("schemathesis.toml");
    std::fs::write(
        &config,
        "[auth.openapi.BearerAuth]\nbearer = \"${SIGMA_ST_TOKEN}\"\n\
         [auth.openapi.ApiKeyAuth]\napi_key = \"${SIGMA_ST_KEY}\"\n",
    )
    .unwrap();
    let out = Command::new(schemathesis())
        .arg("--config-file")
        .arg(&config)
        // The file, not the served copy (which the test above holds equal):
        // from a URL, schemathesis skips the operation that serves it.
        .arg("run")
        .arg(repo().join("docs/openapi.yaml"))
        .args(["--url", &format!("http://{}/", server.addr)])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_headers_conformance,response_schema_conformance",
            "--mode",
            "all",
            "--max-examples",
            "40",
            "--seed",
            "20261129",
            "--workers",
            "1",
            "--request-timeout",
            "10",
            "--no-color",
        ])
        .env("SIGMA_ST_TOKEN", &token)
        .env("SIGMA_ST_KEY", &key)
        .current_dir(dir.path())
        .output()
        .expect("schemathesis");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found the server and docs/openapi.yaml apart:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every operation of the document was tested, and something was generated.
    let operations = documented()["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| {
            p.as_object()
                .unwrap()
                .keys()
                .filter(|k| *k != "parameters")
                .count()
        })
        .sum::<usize>();
    assert!(
        report.contains(&format!("Tested: {operations}")),
        "not every one of the {operations} operations was tested:\n{report}"
    );
    assert!(!server.logs().contains("panicked"), "{}", server.logs());
}
