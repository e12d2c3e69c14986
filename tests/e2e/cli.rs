//! The command line: help, errors, keys without a server.

use serde_json::{Value, json};

use crate::support::{Server, cli};

fn run(args: &[&str]) -> (bool, String, String) {
    let out = cli().args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_command_has_help() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["token", "--help"],
        vec!["keys", "--help"],
        vec!["keys", "list", "--help"],
        vec!["keys", "create", "--help"],
        vec!["keys", "deactivate", "--help"],
        vec!["keys", "delete", "--help"],
    ] {
        let (ok, stdout, _) = run(&args);
        assert!(ok && stdout.contains("Usage:"), "{args:?}");
    }
}

#[test]
fn bad_usage_fails_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("k.db");
    let db = db.to_str().unwrap();
    for (args, says) in [
        (vec!["serve", "--bogus"], "--bogus"),
        (vec!["serve", "--listen", "nowhere"], "--listen"),
        (
            vec!["serve", "--db", db, "--upstream", "ftp://x"],
            "--upstream",
        ),
        (vec!["token", "--db", db], "--tenant"),
        (
            vec!["token", "--db", db, "--tenant", "a", "--ttl", "soon"],
            "--ttl",
        ),
        (
            vec![
                "keys",
                "create",
                "--db",
                db,
                "--tenant",
                "a",
                "--name",
                "n",
                "--permissions",
                "admin",
            ],
            "admin",
        ),
        (vec!["serve", "--db", "/proc/no/such/dir/k.db"], "database"),
    ] {
        let (ok, _, stderr) = run(&args);
        assert!(!ok, "{args:?} succeeded");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.contains(" INFO ")).collect();
        assert!(
            lines[0].starts_with("error: ") && lines.len() <= 2,
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn a_port_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("k.db");
    let (ok, _, stderr) = run(&["serve", "--listen", &addr, "--db", db.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        stderr.contains("cannot listen") && stderr.lines().any(|l| l.starts_with("error:")),
        "{stderr}"
    );
}

#[test]
fn a_short_secret_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("k.db");
    let out = cli()
        .env("SIGMA_JWT_SECRET", "too-short")
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--db",
            db.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 32 bytes"));
}

#[test]
fn a_secret_file_others_can_read_is_refused_and_new_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("k.db");
    let secret = dir.path().join("k.db.secret");
    let serve = || {
        cli()
            .args(["serve", "--listen", "127.0.0.1:0", "--db"])
            .arg(&db)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // A first start creates the database and the secret, both private.
    let mut first = serve();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !(secret.exists() && db.exists()) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let _ = first.kill();
    let _ = first.wait();
    for file in [&db, &secret] {
        let mode = std::fs::metadata(file).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{} is {mode:o}", file.display());
    }
    // A secret that others can read is refused, naming the file, in one line.
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = serve().wait_with_output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains(&secret.display().to_string()),
        "{stderr}"
    );
}

#[test]
fn keys_are_managed_without_a_server_and_work_with_one() {
    let server = Server::start(&[]);
    let db = server.db.to_str().unwrap().to_owned();
    let (ok, stdout, stderr) = run(&[
        "keys",
        "create",
        "--db",
        &db,
        "--tenant",
        "acme",
        "--name",
        "CLI key",
        "--permissions",
        "read,update-data",
    ]);
    assert!(ok, "{stderr}");
    let created: Value = serde_json::from_str(&stdout).unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let raw = created["rawKey"].as_str().unwrap().to_owned();
    assert!(!stderr.contains(&raw));

    // The server sees the key the CLI created.
    let v = server.verify(json!({"key": raw, "permission": "update-data"}));
    assert_eq!(v.json()["keyId"], id.as_str());

    let (ok, stdout, _) = run(&["keys", "list", "--db", &db, "--tenant", "acme"]);
    assert!(ok);
    let list: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(list[0]["id"], id.as_str());
    assert!(!stdout.contains(&raw));

    // The server now holds the key in its lookup cache (a second verify
    // within a second writes nothing); the CLI's writes, from another
    // process, must still be seen at once.
    let v = server.verify(json!({"key": raw, "permission": "read"}));
    assert_eq!(v.json()["valid"], true);
    let (ok, stdout, _) = run(&["keys", "deactivate", "--db", &db, "--tenant", "acme", &id]);
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<Value>(&stdout).unwrap()["active"],
        false
    );
    let v = server.verify(json!({"key": raw, "permission": "read"}));
    assert_eq!(
        v.json(),
        json!({"valid": false, "code": "api_key_deactivated"})
    );

    let (ok, _, stderr) = run(&["keys", "delete", "--db", &db, "--tenant", "globex", &id]);
    assert!(!ok && stderr.contains("No API key"), "{stderr}");
    let (ok, stdout, _) = run(&["keys", "delete", "--db", &db, "--tenant", "acme", &id]);
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<Value>(&stdout).unwrap(),
        json!({"deleted": true})
    );
    let v = server.verify(json!({"key": raw, "permission": "read"}));
    assert_eq!(v.json(), json!({"valid": false, "code": "invalid_api_key"}));
}
