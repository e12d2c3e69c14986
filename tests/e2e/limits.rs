//! Body size, header and idle timeouts.

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::support::{Server, closed_within, read_reply};

#[test]
fn oversized_management_bodies_get_413_as_soon_as_the_limit_is_crossed() {
    let server = Server::start(&[]);
    let auth = server.bearer("acme");

    // Declared too large: refused without reading.
    let big = vec![b' '; 64 * 1024 + 1];
    let r = server.send(
        "POST",
        "/api/v1/api-keys",
        &[("Authorization", &auth)],
        Some(&big),
    );
    assert_eq!(r.error(), (413, "payload_too_large".into()));
    // Exactly at the limit is read (and then judged on its JSON).
    let mut at_limit = br#"{"name": "k", "permissions": ["read"]}"#.to_vec();
    at_limit.resize(64 * 1024, b' ');
    assert_eq!(
        server
            .send(
                "POST",
                "/api/v1/api-keys",
                &[("Authorization", &auth)],
                Some(&at_limit)
            )
            .status,
        201
    );

    // Chunked, never finished: the 413 arrives while the client is still sending.
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "POST /api/v1/api-keys/verify HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .unwrap();
    let chunk = vec![b' '; 8 * 1024];
    for _ in 0..9 {
        write!(stream, "{:x}\r\n", chunk.len()).unwrap();
        stream.write_all(&chunk).unwrap();
        stream.write_all(b"\r\n").unwrap();
    }
    stream.flush().unwrap();
    let r = read_reply(&mut BufReader::new(stream), false);
    assert_eq!(r.error(), (413, "payload_too_large".into()));
    // Nothing was created by the refused requests.
    let list = server
        .send("GET", "/api/v1/api-keys", &[("Authorization", &auth)], None)
        .json();
    assert_eq!(list.as_array().unwrap().len(), 1);
}

#[test]
fn slow_headers_are_cut_off() {
    let server = Server::start(&["--header-timeout", "1s", "--idle-timeout", "30s"]);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .write_all(b"GET /api/v1/api-keys HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let started = Instant::now();
    assert!(
        closed_within(&mut stream, Duration::from_secs(5)),
        "still open"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    // A connection that sends nothing at all is cut off too.
    let mut silent = TcpStream::connect(server.addr).unwrap();
    assert!(closed_within(&mut silent, Duration::from_secs(5)));
}

#[test]
fn slow_headers_on_a_kept_alive_connection_are_cut_off_at_the_header_timeout() {
    // The connection has served a request and sits idle, its idle deadline
    // far away; a head that then starts and stalls must still be cut off one
    // header timeout after its first byte, not at the idle timeout.
    let server = Server::start(&["--header-timeout", "1s", "--idle-timeout", "30s"]);
    let stream = TcpStream::connect(server.addr).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    write!(
        writer,
        "POST /api/v1/api-keys/verify HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{{}}"
    )
    .unwrap();
    assert_eq!(read_reply(&mut reader, false).status, 400);
    std::thread::sleep(Duration::from_millis(1500));
    writer
        .write_all(b"GET /api/v1/api-keys HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let started = Instant::now();
    let mut stream = reader.into_inner();
    assert!(
        closed_within(&mut stream, Duration::from_secs(6)),
        "still open"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
}

#[test]
fn idle_keep_alive_connections_close_after_the_idle_timeout_not_the_header_timeout() {
    let server = Server::start(&["--header-timeout", "1s", "--idle-timeout", "3s"]);
    let stream = TcpStream::connect(server.addr).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let ask = |w: &mut TcpStream| {
        write!(
            w,
            "POST /api/v1/api-keys/verify HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{{}}"
        )
        .unwrap()
    };
    ask(&mut writer);
    assert_eq!(read_reply(&mut reader, false).status, 400);
    // Idle longer than the header timeout: still open.
    std::thread::sleep(Duration::from_millis(1800));
    ask(&mut writer);
    assert_eq!(read_reply(&mut reader, false).status, 400);
    // Idle longer than the idle timeout: closed.
    let started = Instant::now();
    let mut stream = reader.into_inner();
    assert!(closed_within(&mut stream, Duration::from_secs(8)));
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(2500), "{waited:?}");
}

#[test]
fn a_management_body_that_breaks_off_is_a_400_not_a_500() {
    let server = Server::start(&[]);
    let r = crate::support::raw(
        server.addr,
        b"POST /api/v1/api-keys/verify HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\
          Connection: close\r\n\r\n2\r\n{}\r\nzz\r\n",
    );
    assert_eq!(r.error(), (400, "invalid_request".into()));
    assert!(
        !server.logs().contains("request failed"),
        "{}",
        server.logs()
    );
}
