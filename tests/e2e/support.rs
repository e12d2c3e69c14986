//! Test support: the real `sigma-keys` binary on a free port, a real upstream
//! HTTP server, and a small HTTP/1.1 client that can send anything.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_sigma-keys");

/// A command of the real binary, with a clean environment for the secret.
pub fn cli() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_remove("SIGMA_JWT_SECRET")
        .env("SIGMA_KEYS_LOG", "info");
    cmd
}

/// A table row: method, path, headers, expected status and error code.
pub type Case<'a, P> = (&'a str, P, Vec<(&'a str, &'a str)>, u16, &'a str);

/// A running `sigma-keys serve`.
pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// Where `/_sigma/auth/` is served (`addr` unless `--auth-listen` is given).
    pub auth_addr: SocketAddr,
    /// The admin listener, with `--admin-listen`.
    pub admin_addr: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
    pub db: PathBuf,
    /// What `--db` is given: `db`, or a PostgreSQL URL.
    pub db_arg: String,
    /// Extra environment (the shared JWT secret on PostgreSQL).
    env: Vec<(String, String)>,
    args: Vec<String>,
    starts: usize,
}

impl Server {
    /// Starts a server on a fresh database with extra `serve` arguments.
    pub fn start(args: &[&str]) -> Server {
        Server::start_on(None, &[], args)
    }

    /// Starts a server on `db` (a SQLite file in a new directory when
    /// `None`), with extra environment and `serve` arguments.
    pub fn start_on(db: Option<&str>, env: &[(&str, &str)], args: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys.db");
        let mut server = Server {
            child: None,
            addr: "127.0.0.1:0".parse().expect("addr"),
            auth_addr: "127.0.0.1:0".parse().expect("addr"),
            admin_addr: None,
            db_arg: db.map_or_else(|| path.display().to_string(), str::to_owned),
            db: path,
            dir,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            args: args.iter().map(|s| s.to_string()).collect(),
            starts: 0,
        };
        server.launch();
        server
    }

    /// Starts a server forwarding to `upstream`.
    pub fn with_upstream(upstream: &Upstream, args: &[&str]) -> Server {
        let url = upstream.url();
        let mut all = vec!["--upstream", url.as_str()];
        all.extend_from_slice(args);
        Server::start(&all)
    }

    pub fn log_path(&self, n: usize) -> PathBuf {
        self.dir.path().join(format!("server-{n}.log"))
    }

    /// Everything every run of this server wrote to stderr.
    pub fn logs(&self) -> String {
        (0..self.starts)
            .map(|n| std::fs::read_to_string(self.log_path(n)).unwrap_or_default())
            .collect()
    }

    fn launch(&mut self) {
        let log = std::fs::File::create(self.log_path(self.starts)).expect("log file");
        let mut child = cli()
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--db")
            .arg(&self.db_arg)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn sigma-keys");
        self.starts += 1;
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(rest) = line.strip_prefix("sigma-keys listening on http://") {
                        break rest.trim().parse().expect("listen address");
                    }
                }
                _ => {
                    let _ = child.kill();
                    panic!("sigma-keys did not start:\n{}", self.logs());
                }
            }
        };
        // The next lines say where the authorization endpoints and the
        // admin listener are, before the database line.
        let address = |line: &str, prefix: &str| -> Option<SocketAddr> {
            line.strip_prefix(prefix)
                .and_then(|rest| rest.split(['/', ' ']).next())
                .and_then(|addr| addr.parse().ok())
        };
        let mut auth_addr = None;
        self.admin_addr = None;
        loop {
            match lines.next() {
                Some(Ok(line)) if line.starts_with("  database:") => break,
                Some(Ok(line)) => {
                    auth_addr = auth_addr.or(address(&line, "  proxy authorization: http://"));
                    self.admin_addr = self.admin_addr.or(address(&line, "  admin: http://"));
                }
                _ => panic!("sigma-keys stopped after starting:\n{}", self.logs()),
            }
        }
        let auth_addr = auth_addr.expect("no authorization address");
        // Keep draining stdout so the server never blocks on it.
        std::thread::spawn(move || for _ in lines {});
        self.addr = addr;
        self.auth_addr = auth_addr;
        self.child = Some(child);
    }

    /// `kill -9`, then start again on the same database and secret.
    pub fn kill9_and_restart(&mut self) {
        self.kill9();
        self.launch();
    }

    /// SIGTERM, and wait for the process to exit; its exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        child.wait().ok()
    }

    /// SIGTERM, without waiting for the process to exit.
    pub fn send_sigterm(&self) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
    }

    /// Waits at most `limit` for the process to exit; its exit status and
    /// how long it took, or `None` if it is still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<(std::process::ExitStatus, Duration)> {
        let started = std::time::Instant::now();
        while started.elapsed() < limit {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Some((status, started.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
        }
    }

    /// A Bearer token from `sigma-keys token` for this server's database.
    pub fn token(&self, tenant: &str) -> String {
        let out = cli()
            .args(["token", "--tenant", tenant, "--sub", "e2e", "--db"])
            .arg(&self.db_arg)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("token");
        assert!(
            out.status.success(),
            "token failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("utf8")
            .trim()
            .to_owned()
    }

    pub fn bearer(&self, tenant: &str) -> String {
        format!("Bearer {}", self.token(tenant))
    }

    pub fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Reply {
        request(self.addr, method, path, headers, body)
    }

    /// `POST /api/v1/api-keys/verify` with this body.
    pub fn verify(&self, body: Value) -> Reply {
        self.send(
            "POST",
            "/api/v1/api-keys/verify",
            &[],
            Some(body.to_string().as_bytes()),
        )
    }

    /// Creates a key for `tenant` and returns (id, raw key).
    pub fn create_key(&self, tenant: &str, name: &str, permissions: &[&str]) -> (String, String) {
        let body = serde_json::json!({"name": name, "permissions": permissions}).to_string();
        let auth = self.bearer(tenant);
        let r = self.send(
            "POST",
            "/api/v1/api-keys",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            Some(body.as_bytes()),
        );
        assert_eq!(r.status, 201, "create failed: {}", r.text());
        let v = r.json();
        (
            v["id"].as_str().expect("id").to_owned(),
            v["rawKey"].as_str().expect("rawKey").to_owned(),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// An HTTP response as the client saw it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// Lower-case names; repeated headers joined with ", ".
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
    /// `(status, error code)` of an error reply.
    pub fn error(&self) -> (u16, String) {
        let v = self.json();
        let code = v["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error code: {v}"));
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "no message: {v}"
        );
        (self.status, code.to_owned())
    }
}

/// One request on a new connection (`Connection: close`).
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Reply {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    if let Some(b) = body {
        head.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).expect("write head");
    if let Some(b) = body {
        stream.write_all(b).expect("write body");
    }
    read_reply(&mut BufReader::new(stream), method == "HEAD")
}

/// Reads one response from a connection.
pub fn read_reply(reader: &mut impl BufRead, head_only: bool) -> Reply {
    let mut status_line = String::new();
    reader.read_line(&mut status_line).expect("status line");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut headers = BTreeMap::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("header line");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (n, v) = line.split_once(':').expect("header");
        headers
            .entry(n.trim().to_ascii_lowercase())
            .and_modify(|old: &mut String| {
                old.push_str(", ");
                old.push_str(v.trim());
            })
            .or_insert_with(|| v.trim().to_owned());
    }
    let mut body = Vec::new();
    if head_only || status == 204 || status == 304 {
        // no body
    } else if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).expect("chunk size");
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .expect("hex size");
            if size == 0 {
                let mut end = String::new();
                let _ = reader.read_line(&mut end);
                break;
            }
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).expect("chunk");
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(len) = headers.get("content-length") {
        let mut b = vec![0; len.parse().expect("length")];
        reader.read_exact(&mut b).expect("body");
        body = b;
    } else {
        reader.read_to_end(&mut body).expect("body to end");
    }
    Reply {
        status,
        headers,
        body,
    }
}

/// A real upstream: echoes what it received as JSON, with a few special paths.
pub struct Upstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    /// TCP connections accepted.
    pub connections: Arc<AtomicUsize>,
    _runtime: tokio::runtime::Runtime,
}

impl Upstream {
    pub fn start() -> Upstream {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let connections = Arc::new(AtomicUsize::new(0));
        let accepted = connections.clone();
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                let counter = counter.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        echo(req)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            hits,
            connections,
            _runtime: runtime,
        }
    }

    /// The URL to pass as `--upstream`, with a path prefix to prove it is kept.
    pub fn url(&self) -> String {
        format!("http://{}/pim", self.addr)
    }
}

type EchoBody = http_body_util::combinators::BoxBody<bytes::Bytes, std::convert::Infallible>;

async fn echo(
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<EchoBody>, std::convert::Infallible> {
    use http_body_util::BodyExt;
    let method = req.method().to_string();
    let path = req.uri().to_string();
    let mut headers = serde_json::Map::new();
    for (n, v) in req.headers() {
        let entry = headers
            .entry(n.as_str().to_owned())
            .or_insert_with(|| Value::Array(vec![]));
        if let Value::Array(list) = entry {
            list.push(Value::String(
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            ));
        }
    }
    if path.ends_with("/slow") {
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    if path.ends_with("/drip") {
        // A response whose second half comes 700 ms after the first: a proxy
        // that buffers delivers both at once.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let _ = tx.send(bytes::Bytes::from_static(b"first;")).await;
            tokio::time::sleep(Duration::from_millis(700)).await;
            let _ = tx.send(bytes::Bytes::from_static(b"second")).await;
        });
        let body = Drip(rx).boxed();
        return Ok(hyper::Response::new(body));
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let digest = {
        use sha2::Digest;
        sha2::Sha256::digest(&body)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let out = serde_json::json!({
        "method": method,
        "path": path,
        "headers": headers,
        "bodyLength": body.len(),
        "bodySha256": digest,
        "body": if body.len() <= 1024 { String::from_utf8_lossy(&body).into_owned() } else { String::new() },
    });
    let mut response = hyper::Response::new(
        http_body_util::Full::new(bytes::Bytes::from(out.to_string())).boxed(),
    );
    response.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response.headers_mut().insert(
        "x-upstream",
        hyper::header::HeaderValue::from_static("echo"),
    );
    if path.ends_with("/hop") {
        // A connection-specific header that a proxy must not pass on.
        let headers = response.headers_mut();
        headers.insert(
            "connection",
            hyper::header::HeaderValue::from_static("x-up-hop"),
        );
        headers.insert("x-up-hop", hyper::header::HeaderValue::from_static("1"));
    }
    Ok(response)
}

/// A response body fed from a channel, frame by frame.
struct Drip(tokio::sync::mpsc::Receiver<bytes::Bytes>);

impl hyper::body::Body for Drip {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|o| o.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

/// Every byte of every file in `dir` whose name starts with `prefix`.
pub fn files_bytes(dir: &Path, prefix: &str) -> Vec<u8> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        if entry.file_name().to_string_lossy().starts_with(prefix) {
            all.extend(std::fs::read(entry.path()).unwrap_or_default());
        }
    }
    all
}

/// One of the ordinary Python upstreams of `tests/e2e/upstreams/recording.py`
/// (`http`: http.server with HTTP/1.1 keep-alive; `wsgi`: wsgiref), recording
/// every request that reaches it.
pub struct PyUpstream {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl PyUpstream {
    pub fn start(mode: &str) -> PyUpstream {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("requests.jsonl");
        std::fs::write(&log, "").expect("log");
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e/upstreams/recording.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(mode)
            .arg(&log)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("port line");
        let port: u16 = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("python upstream did not start: {line:?}"));
        PyUpstream {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request that reached the application so far.
    pub fn records(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for PyUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends raw bytes on a new connection and reads one response.
pub fn raw(addr: SocketAddr, bytes: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    stream.write_all(bytes).expect("write");
    read_reply(&mut BufReader::new(stream), false)
}

/// One request on a new connection, or none if the server is gone (it was
/// killed before or while answering).
pub fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Option<Reply> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\n\r\n",
        body.map_or(0, <[u8]>::len)
    ));
    stream.write_all(head.as_bytes()).ok()?;
    stream.write_all(body.unwrap_or_default()).ok()?;
    let mut all = Vec::new();
    std::io::Read::read_to_end(&mut stream, &mut all).ok()?;
    // A response cut off by the kill is no acknowledgement.
    let text = String::from_utf8_lossy(&all);
    let (head, rest) = text.split_once("\r\n\r\n")?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    if rest.len() < length {
        return None;
    }
    Some(read_reply(
        &mut BufReader::new(all.as_slice()),
        method == "HEAD",
    ))
}

/// Whether the server closes `stream` within `limit` (reading and dropping
/// whatever it sends first).
pub fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    stream.set_read_timeout(Some(limit)).expect("timeout");
    let mut buf = [0u8; 512];
    loop {
        match std::io::Read::read(stream, &mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}
