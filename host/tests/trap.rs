//! A panic, a runaway loop or runaway memory in the guest fails that request
//! alone: the client gets a 500 with the usual error body, and the server
//! goes on serving.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use sigma_keys::runtime::{Runtime, Settings};
use sigma_keys::server::{self, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PANICKING_GUEST: &[u8] = include_bytes!(env!("SIGMA_KEYS_PANICKING_GUEST_WASM"));

async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test]
async fn a_guest_panic_is_a_500_for_that_request_only() {
    let dir = tempfile::tempdir().unwrap();
    let db = sigma_keys::store::open_sqlite(&dir.path().join("keys.db")).unwrap();
    let runtime =
        Arc::new(Runtime::from_component(PANICKING_GUEST, db, &Settings::default()).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::serve(
        runtime.clone(),
        listener,
        Limits::default(),
        async {
            let _ = stopped.await;
        },
    ));

    for _ in 0..3 {
        // A panic while deciding, and one while handling.
        for path in ["/api/v1/records/panic-decide", "/api/v1/records/panic"] {
            let failed = get(addr, path).await;
            assert!(failed.starts_with("HTTP/1.1 500"), "{path}: {failed}");
            assert!(failed.contains(r#""code":"internal""#), "{failed}");
            assert!(!failed.contains("on purpose"), "details leaked: {failed}");
        }
        let fine = get(addr, "/api/v1/records/fine").await;
        assert!(
            fine.starts_with("HTTP/1.1 200") && fine.contains("\r\nok\r\n"),
            "{fine}"
        );
    }

    // A guest call that runs away is stopped at its deadline; one that grows
    // its memory without end is stopped at the memory limit. Each is a 500.
    for (path, within) in [
        (
            "/api/v1/records/spin-decide",
            sigma_keys::runtime::GUEST_CALL_DEADLINE * 2,
        ),
        (
            "/api/v1/records/grow-decide",
            std::time::Duration::from_secs(5),
        ),
    ] {
        let started = std::time::Instant::now();
        let failed = get(addr, path).await;
        assert!(failed.starts_with("HTTP/1.1 500"), "{path}: {failed}");
        assert!(failed.contains(r#""code":"internal""#), "{failed}");
        assert!(
            started.elapsed() < within,
            "{path} took {:?}",
            started.elapsed()
        );
        let fine = get(addr, "/api/v1/records/fine").await;
        assert!(fine.starts_with("HTTP/1.1 200"), "{fine}");
    }

    // A typed call that traps is an error for the caller, not a crash.
    let service = sigma_keys::Service::from_runtime(runtime);
    assert!(service.list("acme").await.is_err());

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
