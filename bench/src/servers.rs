//! The baselines' servers, in process: a minimal upstream and a plain
//! (no authentication) native hyper reverse proxy in front of it.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// What every handler here answers.
type Answer =
    Result<Response<http_body_util::combinators::BoxBody<Bytes, hyper::Error>>, Infallible>;

/// Serves `handler` on a fresh loopback port.
async fn listen<F, Fut>(handler: F) -> anyhow::Result<SocketAddr>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Answer> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let handler = handler.clone();
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(handler))
                    .await;
            });
        }
    });
    Ok(addr)
}

/// 200 "ok" to everything.
pub async fn upstream() -> anyhow::Result<SocketAddr> {
    listen(|_req| async {
        Ok(Response::new(
            Full::new(Bytes::from_static(b"ok"))
                .map_err(|never| match never {})
                .boxed(),
        ))
    })
    .await
}

/// Forwards every request to `upstream` unchanged.
pub async fn plain_proxy(upstream: SocketAddr) -> anyhow::Result<SocketAddr> {
    // TCP_NODELAY as sigma-keys sets it upstream, so neither waits on Nagle.
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> =
        Client::builder(TokioExecutor::new()).build(connector);
    listen(move |req: Request<Incoming>| forward(client.clone(), upstream, req)).await
}

/// [`plain_proxy`] laid out as sigma-keys serves: one thread accepts and hands
/// each connection, round robin, to one of N threads (N = cores), each with a
/// single-threaded runtime and its own upstream pool. What a hyper forwarder
/// on the same threads as sigma-keys does when it checks nothing: the floor
/// of this stack, against nginx. Blocks serving; prints the address first.
pub fn plain_proxy_per_core(upstream: SocketAddr) -> anyhow::Result<()> {
    per_core("plain proxy per core", move |client, _| {
        move |req| forward(client.clone(), upstream, req)
    })
}

/// [`plain_proxy_per_core`] deciding each request with the domain's
/// `api::decide` compiled natively, over an in-memory store holding
/// `raw_key`'s record, and applying its plan as sigma-keys' host does
/// (remove, `Host`, add; every name and value validated). The same check
/// with no WebAssembly, no component boundary and no database: what this
/// stack would do if the key logic ran in the host, the floor for any
/// design of it. Blocks serving; prints the address first.
pub fn native_gateway_per_core(upstream: SocketAddr, raw_key: &str) -> anyhow::Result<()> {
    use sigma_keys_guest::domain::keys::KeyRecord;
    use sigma_keys_guest::domain::permission::Permission;
    use sigma_keys_guest::domain::raw_key::RawKey;
    let hash = RawKey::parse(raw_key)
        .map_err(|e| anyhow::anyhow!("the key: {e:?}"))?
        .hash();
    let record = KeyRecord {
        id: "apikey-nativebaseline00".into(),
        tenant: "bench".into(),
        name: "bench".into(),
        permissions: vec![Permission::Read],
        created_at: 0,
        last_used_at: None,
        deactivated_at: None,
        expires_at: None,
    };
    let upstream_setting =
        sigma_keys_guest::domain::upstream::Upstream::parse(&format!("http://{upstream}"))
            .map_err(|e| anyhow::anyhow!(e))?;
    let settings = std::sync::Arc::new(sigma_keys_guest::domain::api::Settings {
        upstream: Some(upstream_setting),
        ..Default::default()
    });
    per_core("native gateway per core", move |client, peer| {
        // One store per connection, so its lock is never contended.
        let store = sigma_keys_guest::domain::memory::MemoryStore::default();
        store.rows.borrow_mut().push((record.clone(), hash));
        let store = std::sync::Arc::new(std::sync::Mutex::new(store));
        let settings = settings.clone();
        let peer = peer.ip().to_string();
        move |req| {
            let decision = decide_natively(&store, &settings, &peer, &req);
            gate(client.clone(), decision, req)
        }
    })
}

/// The domain's decision about `req`, natively.
fn decide_natively(
    store: &std::sync::Mutex<sigma_keys_guest::domain::memory::MemoryStore>,
    settings: &sigma_keys_guest::domain::api::Settings,
    peer: &str,
    req: &Request<Incoming>,
) -> Option<sigma_keys_guest::domain::api::Decision> {
    use sigma_keys_guest::domain::api::{Caller, RequestHead, decide};
    let headers: Vec<(&str, &[u8])> = req
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_bytes()))
        .collect();
    let head = RequestHead {
        method: req.method().as_str(),
        path_with_query: req.uri().path_and_query().map_or("/", |p| p.as_str()),
        headers: &headers,
        peer: Some(peer),
        tls: false,
    };
    let store = store.lock().ok()?;
    Some(decide(&*store, settings, &head, &mut Caller::default()))
}

/// Applies `decision` to `req`: forwarded as planned, or answered.
async fn gate(
    client: Client<HttpConnector, Incoming>,
    decision: Option<sigma_keys_guest::domain::api::Decision>,
    req: Request<Incoming>,
) -> Answer {
    use sigma_keys_guest::domain::api::Decision;
    let status = |code: u16, body: Vec<u8>| {
        let mut r = Response::new(
            Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed(),
        );
        *r.status_mut() =
            hyper::StatusCode::from_u16(code).unwrap_or(hyper::StatusCode::BAD_GATEWAY);
        Ok(r)
    };
    let plan = match decision {
        Some(Decision::Forward(plan)) => plan,
        Some(Decision::Reply(reply)) => {
            let (code, _, body) = reply.to_http();
            return status(code, body);
        }
        _ => return status(502, Vec::new()),
    };
    let (mut parts, body) = req.into_parts();
    for name in &plan.remove {
        parts.headers.remove(name.as_str());
    }
    let (Ok(host), Ok(uri)) = (
        hyper::header::HeaderValue::from_str(&plan.upstream.authority),
        format!("http://{}{}", plan.upstream.authority, plan.path_with_query).parse::<hyper::Uri>(),
    ) else {
        return status(502, Vec::new());
    };
    parts.headers.insert(hyper::header::HOST, host);
    for (name, value) in plan.add.iter() {
        let (Ok(name), Ok(value)) = (
            hyper::header::HeaderName::from_bytes(name.as_bytes()),
            hyper::header::HeaderValue::from_bytes(value),
        ) else {
            return status(502, Vec::new());
        };
        parts.headers.append(name, value);
    }
    parts.uri = uri;
    match client.request(Request::from_parts(parts, body)).await {
        Ok(resp) => Ok(resp.map(|b| b.boxed())),
        Err(_) => status(502, Vec::new()),
    }
}

/// Serves as sigma-keys does: one thread accepts and hands each connection,
/// round robin, to one of N threads (N = cores), each with a
/// single-threaded runtime and its own pooled upstream client. `service`
/// makes each connection's request handler from that client and the
/// client's address. Blocks serving; prints "`label` listening on" and the
/// address first.
fn per_core<M, H, Fut>(label: &str, service: M) -> anyhow::Result<()>
where
    M: Fn(Client<HttpConnector, Incoming>, SocketAddr) -> H + Clone + Send + 'static,
    H: Fn(Request<Incoming>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Answer> + Send + 'static,
{
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    println!("{label} listening on http://{}", listener.local_addr()?);
    let count = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut workers = Vec::with_capacity(count);
    for _ in 0..count {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<std::net::TcpStream>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let service = service.clone();
        std::thread::spawn(move || {
            runtime.block_on(async move {
                let mut connector = HttpConnector::new();
                connector.set_nodelay(true);
                let client: Client<HttpConnector, Incoming> =
                    Client::builder(TokioExecutor::new()).build(connector);
                while let Some(stream) = rx.recv().await {
                    let Ok(stream) = tokio::net::TcpStream::from_std(stream) else {
                        continue;
                    };
                    let Ok(peer) = stream.peer_addr() else {
                        continue;
                    };
                    let handler = service(client.clone(), peer);
                    tokio::spawn(async move {
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service_fn(handler))
                            .await;
                    });
                }
            });
        });
        workers.push(tx);
    }
    for (stream, worker) in listener.incoming().zip(workers.iter().cycle()) {
        let Ok(stream) = stream else { continue };
        if stream.set_nodelay(true).is_err() || stream.set_nonblocking(true).is_err() {
            continue;
        }
        let _ = worker.send(stream);
    }
    Ok(())
}

/// `req` to `upstream` through `client`, unchanged but for the URI.
async fn forward(
    client: Client<HttpConnector, Incoming>,
    upstream: SocketAddr,
    mut req: Request<Incoming>,
) -> Answer {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    *req.uri_mut() = format!("http://{upstream}{path}")
        .parse()
        .unwrap_or_default();
    match client.request(req).await {
        Ok(resp) => Ok(resp.map(|b| b.boxed())),
        Err(_) => {
            let mut r = Response::new(
                Full::new(Bytes::from_static(b"bad gateway"))
                    .map_err(|never| match never {})
                    .boxed(),
            );
            *r.status_mut() = hyper::StatusCode::BAD_GATEWAY;
            Ok(r)
        }
    }
}

/// nginx from Debian's package as the reverse proxy most users would
/// otherwise run: `proxy_pass` with upstream keep-alive, 2 workers (one per
/// core), no access log, no authentication. Started with a config in a temp
/// dir, on a free port; stopped (with its workers) on drop.
pub struct Nginx {
    child: std::process::Child,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

/// Where Debian's package puts the binary.
const NGINX: &str = "/usr/sbin/nginx";

/// The proxy configs users are told to paste, as the docs give them.
const PROXIES_DOC: &str = include_str!("../../docs/proxies.md");

impl Nginx {
    /// nginx proxying to `upstream`, without authentication.
    pub fn start(upstream: SocketAddr) -> anyhow::Result<Nginx> {
        Nginx::serving(|addr| {
            Ok(format!(
                "upstream backend {{
        server {upstream};
        keepalive 64;
    }}
    server {{
        listen {addr};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }}
    }}"
            ))
        })
    }

    /// nginx with `auth_request` to sigma-keys at `sigma`, exactly as
    /// docs/proxies.md configures it (only the addresses replaced).
    pub fn with_auth_request(upstream: SocketAddr, sigma: SocketAddr) -> anyhow::Result<Nginx> {
        use anyhow::Context as _;
        let start = PROXIES_DOC
            .find("```nginx\n")
            .context("docs/proxies.md has no nginx config")?;
        let block = &PROXIES_DOC[start + "```nginx\n".len()..];
        let block = &block[..block.find("```").context("unclosed nginx config")?];
        Nginx::serving(|addr| {
            for placeholder in ["listen 8000;", "127.0.0.1:8081", "127.0.0.1:9000"] {
                anyhow::ensure!(
                    block.contains(placeholder),
                    "the documented nginx config lost {placeholder:?}"
                );
            }
            Ok(block
                .replace("listen 8000;", &format!("listen {addr};"))
                .replace("127.0.0.1:8081", &sigma.to_string())
                .replace("127.0.0.1:9000", &upstream.to_string()))
        })
    }

    /// nginx with `server` (given the address to listen on) in its `http` block.
    fn serving(server: impl FnOnce(SocketAddr) -> anyhow::Result<String>) -> anyhow::Result<Nginx> {
        use anyhow::Context as _;
        let dir = tempfile::tempdir()?;
        // nginx takes a port, not port 0: take a free one and let it go.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let root = dir.path().display().to_string();
        let server = server(addr)?;
        let conf = format!(
            "worker_processes 2;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    {server}
}}
"
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let child = std::process::Command::new(NGINX)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&conf_path)
            .args(["-g", "daemon off;"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("cannot run {NGINX} (scripts/proxies.sh installs it)"))?;
        let nginx = Nginx { child, addr, dir };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::net::TcpStream::connect(addr).is_err() {
            if std::time::Instant::now() > deadline {
                let log =
                    std::fs::read_to_string(nginx.dir.path().join("error.log")).unwrap_or_default();
                anyhow::bail!("nginx did not start on {addr}: {log}");
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Ok(nginx)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM lets the master stop its workers; SIGKILL would orphan them.
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}
