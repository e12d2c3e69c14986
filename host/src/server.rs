//! The HTTP server: hyper in front of the component.
//!
//! The component's `gateway.decide` sees each request's head first and
//! decides: answer it, forward it (this server then streams the bytes to the
//! upstream and back itself, which costs a fraction of doing it through
//! `wasi:http`), or pass the whole request to its `wasi:http` handler (the
//! management endpoints, which read a body).
//!
//! Each request runs on a component instance of its own (a warm one that
//! finished an earlier request, or a new one). An instance that traps or
//! panics is dropped, so the failure is a 500 for that request alone, never
//! the server's.
//!
//! Work per client is bounded: connections beyond `max_connections` wait in
//! the accept backlog; a request's headers and body must arrive within
//! `request_timeout`; a management body is read (up to the component's
//! limit) before the request takes an instance; a request that finds no
//! instance free within a second is answered 503 `overloaded`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HOST, HeaderMap, HeaderName, HeaderValue};
use hyper::http::uri::{Authority, PathAndQuery};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiHttpView};

use crate::bindings::exports::sigma::api_keys::gateway::{
    Decided, Decision, Forward, Packed, Reply, RequestHead, RouteClass, Scheme as UpstreamScheme,
    UpstreamFailure,
};
use crate::hop_by_hop::strip_connection_nominated;
use crate::runtime::{Caller, HttpInstance, Overloaded, Runtime};

/// Connection limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// A request's headers must arrive within this time of its first byte
    /// (or of the connection opening).
    pub header_timeout: Duration,
    /// A keep-alive connection with no request in flight closes after this.
    pub idle_timeout: Duration,
    /// A request's headers and body must all arrive within this time of its
    /// first byte, or the connection is closed.
    pub request_timeout: Duration,
    /// Connections served at once; more wait in the accept backlog.
    pub max_connections: usize,
    /// After shutdown starts, how long requests in flight have to finish
    /// before their connections are dropped.
    pub shutdown_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            max_connections: 4096,
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

/// An accepted connection on its way to a worker.
type Accepted = (std::net::TcpStream, SocketAddr, OwnedSemaphorePermit);

/// Starts one serving thread per core, each with a single-threaded runtime
/// of its own: a connection, its requests and the upstream connections they
/// use stay on one thread (as with nginx's worker processes), so serving a
/// request wakes no other thread.
///
/// A worker stops once its channel closes and every connection it serves
/// has ended; `stop` asks those connections to finish the request in flight
/// and close.
fn start_workers(
    runtime: &Arc<Runtime>,
    local: SocketAddr,
    limits: Limits,
    stop: &watch::Receiver<bool>,
) -> Result<Vec<mpsc::UnboundedSender<Accepted>>> {
    let count = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut workers = Vec::with_capacity(count);
    for i in 0..count {
        let (tx, mut rx) = mpsc::unbounded_channel::<Accepted>();
        let threads = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let runtime = runtime.clone();
        let stop = stop.clone();
        std::thread::Builder::new()
            .name(format!("sigma-keys-serve-{i}"))
            .spawn(move || {
                threads.block_on(async move {
                    let mut connections = tokio::task::JoinSet::new();
                    loop {
                        tokio::select! {
                            accepted = rx.recv() => {
                                let Some((stream, peer, slot)) = accepted else { break };
                                let stream = match TcpStream::from_std(stream) {
                                    Ok(s) => s,
                                    Err(e) => {
                                        tracing::warn!("cannot serve an accepted connection: {e}");
                                        continue;
                                    }
                                };
                                let runtime = runtime.clone();
                                let stop = stop.clone();
                                connections.spawn(async move {
                                    connection(runtime, stream, peer, local, limits, stop).await;
                                    drop(slot);
                                });
                            }
                            Some(_) = connections.join_next(), if !connections.is_empty() => {}
                        }
                    }
                    // No more connections will come: finish those in flight
                    // (the server waits at most its shutdown timeout).
                    while connections.join_next().await.is_some() {}
                });
            })?;
        workers.push(tx);
    }
    Ok(workers)
}

/// Accepts connections until `shutdown` resolves; then stops accepting (new
/// connections are refused), lets the requests in flight finish, forwarded
/// ones included, and returns once every connection has closed or
/// `limits.shutdown_timeout` has passed.
pub async fn serve(
    runtime: Arc<Runtime>,
    listener: TcpListener,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let local = listener.local_addr()?;
    let capacity = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let slots = Arc::new(Semaphore::new(capacity));
    let (stop, stopped) = watch::channel(false);
    let workers = start_workers(&runtime, local, limits, &stopped)?;
    let mut next = 0usize;
    tokio::pin!(shutdown);
    loop {
        // Take a slot before accepting: past the cap, new connections wait
        // in the kernel's backlog instead of costing memory and tasks here.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot hand an accepted connection to a worker: {e}");
                continue;
            }
        };
        next = (next + 1) % workers.len();
        if let Some(worker) = workers.get(next)
            && worker.send((stream, peer, slot)).is_err()
        {
            anyhow::bail!("a serving thread stopped");
        }
    }
    // Closing the socket refuses new connections; the workers then see
    // their channels close, and every connection hears `stop`.
    drop(listener);
    drop(workers);
    let _ = stop.send(true);
    let open = capacity - slots.available_permits();
    if open > 0 {
        tracing::info!(%local, open, "shutting down: finishing the requests in flight");
    }
    // Each open connection holds a slot until it has closed.
    let all = u32::try_from(capacity).unwrap_or(u32::MAX);
    if tokio::time::timeout(limits.shutdown_timeout, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(
            %local,
            open = capacity - slots.available_permits(),
            "connections still open after the shutdown timeout are dropped"
        );
    }
    Ok(())
}

/// Counts a connection in [`crate::metrics::OPEN_CONNECTIONS`] while it lives.
struct OpenConnection;

impl OpenConnection {
    fn new() -> OpenConnection {
        metrics::gauge!(crate::metrics::OPEN_CONNECTIONS).increment(1.0);
        OpenConnection
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        metrics::gauge!(crate::metrics::OPEN_CONNECTIONS).decrement(1.0);
    }
}

/// Activity on one connection, shared by its IO, its service and its watchdog.
struct Activity {
    opened: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
    /// When the current request's first byte arrived; `NONE` between requests.
    head_since_ms: AtomicU64,
    /// When the request in flight started, while its body is still arriving;
    /// `NONE` once the whole request is in.
    receiving_since_ms: AtomicU64,
    /// Wakes the watchdog when a body starts to arrive, so it never sleeps
    /// past the request deadline. (A head needs no wake-up: the watchdog
    /// never sleeps longer than the header timeout.)
    deadline_started: tokio::sync::Notify,
}

const NONE: u64 = u64::MAX;

impl Activity {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(NONE - 1)
    }
    fn touch(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }
}

/// How the watchdog ends a connection.
enum Close {
    /// Headers too slow: drop it now.
    Abort,
    /// Idle: close it politely.
    Graceful,
}

/// Watches one connection's deadlines, and the server's shutdown, from a
/// task of its own: the connection's task then polls one channel per wake-up
/// instead of a timer, a notification and the shutdown signal. Ends when it
/// has said how to close, or when the connection has ended.
async fn supervise(
    activity: Arc<Activity>,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
    mut close: tokio::sync::oneshot::Sender<Close>,
) {
    let how = tokio::select! {
        how = watchdog(activity, limits) => how,
        // Shutting down: finish the request in flight, then close.
        _ = stop.wait_for(|stop| *stop) => Close::Graceful,
        () = close.closed() => return,
    };
    let _ = close.send(how);
}

async fn watchdog(activity: Arc<Activity>, limits: Limits) -> Close {
    let header_ms = u64::try_from(limits.header_timeout.as_millis()).unwrap_or(NONE - 1);
    let idle_ms = u64::try_from(limits.idle_timeout.as_millis()).unwrap_or(NONE - 1);
    let request_ms = u64::try_from(limits.request_timeout.as_millis()).unwrap_or(NONE - 1);
    loop {
        let now = activity.now_ms();
        let head_since = activity.head_since_ms.load(Ordering::Relaxed);
        let receiving_since = activity.receiving_since_ms.load(Ordering::Relaxed);
        let deadline = if receiving_since != NONE {
            // Headers are in; the body must follow within the request timeout.
            let d = receiving_since.saturating_add(request_ms);
            if now >= d {
                return Close::Abort;
            }
            d
        } else if head_since != NONE {
            let d = head_since.saturating_add(header_ms);
            if now >= d {
                return Close::Abort;
            }
            d
        } else if activity.in_flight.load(Ordering::Relaxed) == 0 {
            let d = activity
                .last_ms
                .load(Ordering::Relaxed)
                .saturating_add(idle_ms);
            if now >= d {
                return Close::Graceful;
            }
            d
        } else {
            now.saturating_add(idle_ms)
        };
        // A head that starts while this sleeps has its deadline at least
        // one header timeout from now; waking by then, the watchdog sees it
        // in time without being woken for every request.
        let wake = deadline.min(now.saturating_add(header_ms));
        let sleep = tokio::time::sleep(Duration::from_millis(wake.saturating_sub(now).max(1)));
        tokio::select! {
            () = sleep => {}
            () = activity.deadline_started.notified() => {}
        }
    }
}

async fn connection(
    runtime: Arc<Runtime>,
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    limits: Limits,
    stop: watch::Receiver<bool>,
) {
    let _open = OpenConnection::new();
    let activity = Arc::new(Activity {
        opened: Instant::now(),
        last_ms: AtomicU64::new(0),
        in_flight: AtomicUsize::new(0),
        head_since_ms: AtomicU64::new(0),
        receiving_since_ms: AtomicU64::new(NONE),
        deadline_started: tokio::sync::Notify::new(),
    });
    let io = TokioIo::new(WatchedIo {
        inner: stream,
        activity: activity.clone(),
    });
    let service_activity = activity.clone();
    // The client's address as the component sees it, written out once per
    // connection rather than once per request.
    let client: Arc<str> = peer.ip().to_canonical().to_string().into();
    let service = service_fn(move |req: Request<Incoming>| {
        let runtime = runtime.clone();
        let client = client.clone();
        let activity = service_activity.clone();
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        let started = activity.head_since_ms.swap(NONE, Ordering::Relaxed);
        let req = if req.body().is_end_stream() {
            req.map(|body| body.map_err(HttpError::from).boxed_unsync())
        } else {
            let started = if started == NONE {
                activity.now_ms()
            } else {
                started
            };
            activity
                .receiving_since_ms
                .store(started, Ordering::Relaxed);
            activity.deadline_started.notify_one();
            let tracker = activity.clone();
            req.map(|body| {
                Receiving {
                    inner: body,
                    activity: tracker,
                }
                .boxed_unsync()
            })
        };
        async move {
            // Boxed: the handling future is many KB, and hyper moves the
            // future it is given into place; a box moves as a pointer.
            let response = Box::pin(handle(&runtime, req, &client, local)).await;
            Ok::<_, Infallible>(response.map(|body| {
                InFlight {
                    inner: body,
                    activity,
                }
                .boxed_unsync()
            }))
        }
    });
    let conn = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let (close_tx, mut close) = tokio::sync::oneshot::channel();
    tokio::spawn(supervise(activity, limits, stop, close_tx));
    let mut closing = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, "connection ended: {e}");
                }
                return;
            }
            how = &mut close, if !closing => match how {
                Ok(Close::Abort) => {
                    tracing::info!(%peer, "closing a connection whose request headers did not arrive in time");
                    return;
                }
                // Idle or shutting down: finish the request in flight, then
                // close. (The supervisor cannot end first while this waits.)
                Ok(Close::Graceful) | Err(_) => {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            },
        }
    }
}

/// A request body still arriving; the request timeout runs until it ends.
struct Receiving {
    inner: Incoming,
    activity: Arc<Activity>,
}

impl Receiving {
    fn done(&self) {
        self.activity
            .receiving_since_ms
            .store(NONE, Ordering::Relaxed);
    }
}

impl Drop for Receiving {
    fn drop(&mut self) {
        // Unread or cut short: hyper will not wait for the rest beyond the
        // timeouts that guard idle connections.
        self.done();
    }
}

impl Body for Receiving {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(frame, Poll::Ready(None | Some(Err(_)))) || self.inner.is_end_stream() {
            self.done();
        }
        frame.map_err(HttpError::from)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body as the server passes it on.
type RequestBody = http_body_util::combinators::UnsyncBoxBody<Bytes, HttpError>;

/// Counts a request as in flight until hyper has sent its whole response body.
struct InFlight {
    inner: HyperOutgoingBody,
    activity: Arc<Activity>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.activity.touch();
        self.activity.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Body for InFlight {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The TCP stream, noting when bytes move.
struct WatchedIo {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for WatchedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            let a = &self.activity;
            a.touch();
            if a.in_flight.load(Ordering::Relaxed) == 0 {
                // The first bytes of a new request: its headers are now on the clock.
                // The watchdog needs no wake-up for it (see `watchdog`).
                let _ = a.head_since_ms.compare_exchange(
                    NONE,
                    a.now_ms(),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
        }
        result
    }
}

impl AsyncWrite for WatchedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.activity.touch();
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// One request: run the component, log one line, never fail the connection.
async fn handle(
    runtime: &Arc<Runtime>,
    mut req: Request<RequestBody>,
    client: &str,
    local: SocketAddr,
) -> Response<HyperOutgoingBody> {
    let started = Instant::now();
    let method = req.method().clone();
    // The path only: a query could carry something secret.
    let path = req.uri().path().to_owned();
    if !req.headers().contains_key(HOST) && req.uri().authority().is_none() {
        // HTTP/1.0 clients may omit Host; wasi:http needs an authority.
        if let Ok(v) = HeaderValue::from_str(&local.to_string()) {
            req.headers_mut().insert(HOST, v);
        }
    }
    strip_connection_nominated(req.headers_mut());
    let caller = Arc::new(Mutex::new(Caller::default()));
    let (response, served) = match respond(runtime, req, client, caller.clone()).await {
        Ok(answered) => answered,
        Err(e) if e.is::<Overloaded>() => {
            tracing::warn!(%method, path, "{e}");
            (
                host_error(HostError::Overloaded),
                Served::host("overloaded"),
            )
        }
        Err(e) => {
            tracing::error!(%method, path, "request failed in the component: {e:#}");
            metrics::counter!(crate::metrics::COMPONENT_TRAPS).increment(1);
            (host_error(HostError::Internal), Served::host("internal"))
        }
    };
    served.record(started);
    let caller = caller.lock().map(|c| c.clone()).unwrap_or_default();
    tracing::info!(
        target: "sigma_keys::request",
        %method,
        path,
        status = response.status().as_u16(),
        latency_ms = format_args!("{:.2}", started.elapsed().as_secs_f64() * 1000.0),
        tenant = caller.tenant.as_deref().unwrap_or("-"),
        key_id = caller.key_id.as_deref().unwrap_or("-"),
    );
    response
}

/// What became of a request, for the metrics.
struct Served {
    /// The component's route class, or `none` when the host answered
    /// before asking the component.
    route: &'static str,
    /// `forward`, `reply`, `handle`, or `none` when the host answered.
    decision: &'static str,
    /// `forwarded`, `replied`, an error code, or a management answer's status class.
    outcome: std::borrow::Cow<'static, str>,
}

impl Served {
    fn host(code: &'static str) -> Served {
        Served {
            route: "none",
            decision: "none",
            outcome: code.into(),
        }
    }

    /// A reply of the component: `replied`, or its error code.
    fn reply(decision: &'static str, reply: &Reply) -> Served {
        let outcome = if reply.status < 400 || !crate::metrics::enabled() {
            "replied".into()
        } else {
            serde_json::from_slice::<serde_json::Value>(&reply.body)
                .ok()
                .and_then(|v| {
                    v["error"]["code"]
                        .as_str()
                        .map(|c| crate::metrics::code_label(c).to_owned())
                })
                .unwrap_or_else(|| "other".to_owned())
                .into()
        };
        Served {
            route: "none",
            decision,
            outcome,
        }
    }

    /// A management answer, streamed by the handler: its status class.
    fn handled(status: hyper::StatusCode) -> Served {
        let outcome = match status.as_u16() {
            0..400 => "replied",
            400..500 => "status_4xx",
            _ => "status_5xx",
        };
        Served {
            route: "none",
            decision: "handle",
            outcome: outcome.into(),
        }
    }

    fn record(self, started: Instant) {
        if !crate::metrics::enabled() {
            return;
        }
        let Served {
            route,
            decision,
            outcome,
        } = self;
        metrics::histogram!(crate::metrics::REQUEST_SECONDS, "decision" => decision)
            .record(started.elapsed().as_secs_f64());
        metrics::counter!(
            crate::metrics::REQUESTS,
            "route" => route,
            "decision" => decision,
            "outcome" => outcome
        )
        .increment(1);
    }
}

/// Asks the component what to do with the request, and does it.
async fn respond(
    runtime: &Arc<Runtime>,
    req: Request<RequestBody>,
    client: &str,
    caller: Arc<Mutex<Caller>>,
) -> Result<(Response<HyperOutgoingBody>, Served)> {
    runtime.refresh_key_set_for(req.headers()).await;
    let mut instance = runtime.http_instance(caller.clone()).await?;
    let head = request_head(&req, client);
    let Decided { route, decision } = {
        let HttpInstance { store, typed, .. } = &mut instance;
        typed
            .sigma_api_keys_gateway()
            .call_decide(store, &head)
            .await?
    };
    let (response, mut served) = match decision {
        Decision::Reply(reply) => {
            runtime.give_back(instance);
            let served = Served::reply("reply", &reply);
            Ok((reply_response(reply), served))
        }
        Decision::Forward(plan) => {
            let hop_by_hop = runtime.hop_by_hop(&mut instance).await?;
            let timeout = Duration::from_millis(plan.timeout_ms);
            match UpstreamTarget::of(plan) {
                Some(target) => {
                    runtime.give_back(instance);
                    let (mut parts, body) = req.into_parts();
                    let mut upstream = Request::new(body);
                    *upstream.method_mut() = parts.method;
                    *upstream.uri_mut() = target.apply(&mut parts.headers);
                    *upstream.headers_mut() = parts.headers;
                    forward(runtime, upstream, timeout, &hop_by_hop, caller).await
                }
                // Headers that HTTP cannot carry: the handler refuses them itself.
                None => {
                    let response = run_component(runtime, instance, req).await?;
                    let served = Served::handled(response.status());
                    Ok((response, served))
                }
            }
        }
        Decision::Handle(body_limit) => {
            // The instance waits for no client: the body (no more of it than
            // the component would read) arrives first.
            runtime.give_back(instance);
            let req = read_body(req, body_limit as usize).await;
            let instance = runtime.http_instance(caller).await?;
            let response = run_component(runtime, instance, req).await?;
            let served = Served::handled(response.status());
            Ok((response, served))
        }
    }?;
    served.route = route_label(route);
    Ok((response, served))
}

/// The metrics label of a route class.
fn route_label(route: RouteClass) -> &'static str {
    match route {
        RouteClass::Resource => "resource",
        RouteClass::Authorization => "authorization",
        RouteClass::Management => "management",
        RouteClass::Verify => "verify",
        RouteClass::SecretScanning => "secret_scanning",
        RouteClass::ApiDescription => "api_description",
    }
}

/// The request with its body read into memory, up to `limit` bytes and one
/// more (so the component sees that it is too large). `Content-Length` then
/// states what was read. A body that fails to arrive (bad chunking, a
/// client gone) fails the same way for the component, which answers it.
async fn read_body(req: Request<RequestBody>, limit: usize) -> Request<RequestBody> {
    let (mut parts, mut body) = req.into_parts();
    let mut bytes = bytes::BytesMut::new();
    let mut complete = true;
    let mut failure = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    bytes.extend_from_slice(&data);
                    if bytes.len() > limit {
                        bytes.truncate(limit + 1);
                        complete = false;
                        break;
                    }
                }
            }
            Err(e) => {
                failure = Some(e);
                complete = false;
                break;
            }
        }
    }
    parts.headers.remove(hyper::header::TRANSFER_ENCODING);
    if complete {
        parts.headers.insert(
            hyper::header::CONTENT_LENGTH,
            HeaderValue::from(bytes.len()),
        );
    } else {
        parts.headers.remove(hyper::header::CONTENT_LENGTH);
    }
    let body = Buffered {
        data: Some(bytes.freeze()),
        failure,
    };
    Request::from_parts(parts, body.boxed_unsync())
}

/// A body read ahead: its bytes, then the error that ended it, if any.
struct Buffered {
    data: Option<Bytes>,
    failure: Option<HttpError>,
}

impl Body for Buffered {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(data) = self.data.take().filter(|d| !d.is_empty()) {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.failure.take().map(Err))
    }
    fn is_end_stream(&self) -> bool {
        self.data.as_ref().is_none_or(Bytes::is_empty) && self.failure.is_none()
    }
    fn size_hint(&self) -> SizeHint {
        match (&self.data, &self.failure) {
            (Some(d), None) => SizeHint::with_exact(d.len() as u64),
            (None, None) => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// The request's head for `decide`; `client` is the peer's IP address.
fn request_head(req: &Request<RequestBody>, client: &str) -> RequestHead {
    RequestHead {
        method: req.method().as_str().to_owned(),
        path_with_query: req
            .uri()
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
        headers: packed_headers(req.headers()),
        peer: Some(client.to_owned()),
        tls: false,
    }
}

/// The client's headers as the WIT `packed` record (name, value, name,
/// value, ...): two lists to lower instead of two per header.
fn packed_headers(headers: &HeaderMap) -> Packed {
    let len = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len())
        .sum();
    let mut packed = Packed {
        bytes: Vec::with_capacity(len),
        ends: Vec::with_capacity(headers.len() * 2),
    };
    for (name, value) in headers {
        append(&mut packed, name.as_str().as_bytes());
        append(&mut packed, value.as_bytes());
    }
    packed
}

/// Appends `part` to a WIT `packed` record. An end past `u32::MAX` (never,
/// under hyper's header limits) is written as `u32::MAX`, which the
/// component refuses.
fn append(packed: &mut Packed, part: &[u8]) {
    packed.bytes.extend_from_slice(part);
    packed
        .ends
        .push(u32::try_from(packed.bytes.len()).unwrap_or(u32::MAX));
}

fn reply_response(reply: Reply) -> Response<HyperOutgoingBody> {
    let mut response = Response::new(
        Full::new(Bytes::from(reply.body))
            .map_err(|never: Infallible| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = hyper::StatusCode::from_u16(reply.status)
        .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    for (name, value) in reply.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(&value),
        ) {
            headers.append(name, value);
        }
    }
    response
}

/// A plan's upstream URI and header changes, checked to be valid HTTP
/// before the client's request is touched.
struct UpstreamTarget {
    uri: hyper::Uri,
    host: HeaderValue,
    remove: Vec<HeaderName>,
    add: Vec<(HeaderName, HeaderValue)>,
}

impl UpstreamTarget {
    /// None if the plan's URI, a name or a value is not valid HTTP: then the
    /// `wasi:http` handler takes the request and refuses it itself.
    ///
    /// The plan's strings become the request's parts without being copied
    /// (`Bytes` takes over each one's allocation); each is still checked.
    fn of(plan: Forward) -> Option<UpstreamTarget> {
        let mut uri = hyper::http::uri::Parts::default();
        uri.scheme = Some(match plan.scheme {
            UpstreamScheme::Http => hyper::http::uri::Scheme::HTTP,
            UpstreamScheme::Https => hyper::http::uri::Scheme::HTTPS,
        });
        // Each part parsed once, from the plan's own string; the path must
        // be absolute, so nothing in it can read as part of the authority.
        let authority = Bytes::from(plan.authority);
        uri.authority = Some(Authority::from_maybe_shared(authority.clone()).ok()?);
        if !plan.path_with_query.starts_with('/') {
            return None;
        }
        uri.path_and_query =
            Some(PathAndQuery::from_maybe_shared(Bytes::from(plan.path_with_query)).ok()?);
        let uri = hyper::Uri::from_parts(uri).ok()?;
        let remove = packed_ranges(&plan.remove.ends, plan.remove.bytes.len())
            .map(|name| header_name(plan.remove.bytes.get(name?)?))
            .collect::<Option<Vec<_>>>()?;
        // Each value is a slice of the one buffer, not a copy.
        let bytes = Bytes::from(plan.add.bytes);
        let mut parts = packed_ranges(&plan.add.ends, bytes.len());
        let mut add = Vec::with_capacity(plan.add.ends.len() / 2);
        while let Some(name) = parts.next() {
            let name = header_name(bytes.get(name?)?)?;
            let value = HeaderValue::from_maybe_shared(bytes.slice(parts.next()??)).ok()?;
            add.push((name, value));
        }
        Some(UpstreamTarget {
            uri,
            host: HeaderValue::from_maybe_shared(authority).ok()?,
            remove,
            add,
        })
    }

    /// Turns the client's headers into the upstream's: every header of each
    /// removed name goes (`HeaderMap` names are lower-case, and `remove`
    /// drops all of a name's values), `host` names the upstream, and the
    /// gateway's own headers follow. Returns the URI to request.
    fn apply(self, headers: &mut HeaderMap) -> hyper::Uri {
        for name in &self.remove {
            headers.remove(name);
        }
        // One growth at most: the map was sized for the client's headers.
        headers.reserve(self.add.len() + 1);
        headers.insert(HOST, self.host);
        for (name, value) in self.add {
            headers.append(name, value);
        }
        self.uri
    }
}

/// Where each string of a WIT `packed` record lies in its `len` bytes;
/// `None` for an end that goes backwards or past the bytes.
fn packed_ranges(ends: &[u32], len: usize) -> impl Iterator<Item = Option<std::ops::Range<usize>>> {
    let mut start = 0;
    ends.iter().map(move |&end| {
        let end = usize::try_from(end)
            .ok()
            .filter(|end| (start..=len).contains(end))?;
        let range = start..end;
        start = end;
        Some(range)
    })
}

/// Names a serving thread remembers, so the same few plan names (the
/// gateway's own headers, the client's credential header) are not parsed
/// and copied into a new allocation on every request.
const REMEMBERED_NAMES: usize = 32;

thread_local! {
    static NAMES: std::cell::RefCell<Vec<HeaderName>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `name` as a header name, if it is a valid one. A name seen before is a
/// shared copy of the one parsed then; the first [`REMEMBERED_NAMES`]
/// distinct names are remembered, later ones are parsed every time.
fn header_name(name: &[u8]) -> Option<HeaderName> {
    NAMES.with(|names| {
        let mut names = names.try_borrow_mut().ok()?;
        if let Some(known) = names.iter().find(|n| n.as_str().as_bytes() == name) {
            return Some(known.clone());
        }
        let parsed = HeaderName::from_bytes(name).ok()?;
        // Only a name that is already lower-case compares equal next time.
        if names.len() < REMEMBERED_NAMES && parsed.as_str().as_bytes() == name {
            names.push(parsed.clone());
        }
        Some(parsed)
    })
}

/// Sends the request upstream and streams the answer back.
async fn forward(
    runtime: &Arc<Runtime>,
    upstream: Request<RequestBody>,
    timeout: Duration,
    hop_by_hop: &[HeaderName],
    caller: Arc<Mutex<Caller>>,
) -> Result<(Response<HyperOutgoingBody>, Served)> {
    let timeout = Some(timeout);
    let options = RequestOptions {
        connect_timeout: timeout,
        first_byte_timeout: timeout,
        between_bytes_timeout: timeout,
    };
    let sent = Instant::now();
    let result = runtime.upstream().send(upstream, Some(options)).await;
    metrics::histogram!(crate::metrics::UPSTREAM_SECONDS).record(sent.elapsed().as_secs_f64());
    match result {
        Ok((mut response, io)) => {
            if let Some(io) = io {
                tokio::spawn(async move {
                    if let Err(e) = Box::into_pin(io).await {
                        tracing::debug!("upstream connection ended: {e}");
                    }
                });
            }
            let headers = response.headers_mut();
            strip_connection_nominated(headers);
            // Most responses carry none: one pass over the few names present
            // costs less than looking up every hop-by-hop name.
            if headers.keys().any(|name| hop_by_hop.contains(name)) {
                for name in hop_by_hop {
                    headers.remove(name);
                }
            }
            let served = Served {
                route: "none",
                decision: "forward",
                outcome: "forwarded".into(),
            };
            Ok((response, served))
        }
        Err(e) => {
            tracing::warn!("upstream request failed: {e}");
            let failure = match e {
                HttpError::ConnectionTimeout
                | HttpError::ConnectionReadTimeout
                | HttpError::HttpResponseTimeout => UpstreamFailure::Timeout,
                _ => UpstreamFailure::Unreachable,
            };
            let kind = match failure {
                UpstreamFailure::Timeout => "timeout",
                UpstreamFailure::Unreachable => "unreachable",
            };
            metrics::counter!(crate::metrics::UPSTREAM_ERRORS, "kind" => kind).increment(1);
            let mut instance = runtime.http_instance(caller).await?;
            let reply = {
                let HttpInstance { store, typed, .. } = &mut instance;
                typed
                    .sigma_api_keys_gateway()
                    .call_upstream_failed(store, failure)
                    .await?
            };
            runtime.give_back(instance);
            let served = Served::reply("forward", &reply);
            Ok((reply_response(reply), served))
        }
    }
}

/// Runs the whole request through the component's `wasi:http` handler.
async fn run_component(
    runtime: &Arc<Runtime>,
    mut instance: HttpInstance,
    req: Request<RequestBody>,
) -> Result<Response<HyperOutgoingBody>> {
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let incoming = instance
        .store
        .data_mut()
        .http()
        .new_incoming_request(Scheme::Http, req)?;
    let outparam = instance
        .store
        .data_mut()
        .http()
        .new_response_outparam(sender)?;
    let runtime = runtime.clone();
    // The handler may go on streaming the body after it sets the response;
    // the instance serves the next request only once this one is done.
    let task = tokio::spawn(async move {
        let result = {
            let HttpInstance { store, proxy, .. } = &mut instance;
            proxy
                .wasi_http_incoming_handler()
                .call_handle(store, incoming, outparam)
                .await
        };
        if result.is_ok() {
            runtime.give_back(instance);
        }
        result
    });
    match receiver.await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(code)) => Err(anyhow::anyhow!(
            "the component answered with error {code:?}"
        )),
        Err(_) => match task.await {
            Ok(Ok(())) => Err(anyhow::anyhow!("the component set no response")),
            Ok(Err(e)) => Err(e.into()),
            Err(e) => Err(e.into()),
        },
    }
}

/// Failures the host answers itself, when no component instance can.
#[derive(Clone, Copy)]
enum HostError {
    /// 500: the component failed (a trap, a panic); details in the log.
    Internal,
    /// 503: no component instance came free in time.
    Overloaded,
}

/// The one mapping of host failures to HTTP, in the component's error shape.
fn host_error(e: HostError) -> Response<HyperOutgoingBody> {
    let (status, code, message, retry_after) = match e {
        HostError::Internal => (
            hyper::StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "An internal error occurred; the details are in the server log. Retry later.",
            None,
        ),
        HostError::Overloaded => (
            hyper::StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "The server is busy with other requests. Retry shortly.",
            Some(1),
        ),
    };
    let body = serde_json::json!({"error": {"code": code, "message": message}});
    let mut response = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never: Infallible| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        hyper::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    if let Some(seconds) = retry_after {
        headers.insert(hyper::header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `parts` packed as the guest packs them.
    fn pack<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> Packed {
        let mut packed = Packed {
            bytes: Vec::new(),
            ends: Vec::new(),
        };
        for part in parts {
            append(&mut packed, part);
        }
        packed
    }

    fn plan(remove: &[&str], add: &[(&str, &[u8])]) -> Forward {
        Forward {
            scheme: UpstreamScheme::Http,
            authority: "upstream.internal:8080".into(),
            path_with_query: "/base/api/v1/records?x=1".into(),
            remove: pack(remove.iter().map(|n| n.as_bytes())),
            add: pack(add.iter().flat_map(|(n, v)| [n.as_bytes(), *v])),
            timeout_ms: 1000,
        }
    }

    #[test]
    fn every_header_of_a_removed_name_goes_and_the_gateway_sets_its_own() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("host", "client.example"),
            ("x-sigma-tenant", "globex"),
            ("accept", "text/plain"),
            ("x-sigma-tenant", "initech"),
            ("connection", "x-hop"),
            ("x-hop", "1"),
            ("x-hop", "2"),
            ("accept", "*/*"),
        ] {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let target = UpstreamTarget::of(plan(
            &["host", "x-sigma-tenant", "connection", "x-hop"],
            &[("x-sigma-tenant", b"acme"), ("x-forwarded-proto", b"http")],
        ))
        .expect("a valid plan");
        let uri = target.apply(&mut headers);
        assert_eq!(
            uri.to_string(),
            "http://upstream.internal:8080/base/api/v1/records?x=1"
        );
        let mut sent: Vec<(String, String)> = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("?").to_owned()))
            .collect();
        sent.sort();
        assert_eq!(
            sent,
            [
                ("accept", "*/*"),
                ("accept", "text/plain"),
                ("host", "upstream.internal:8080"),
                ("x-forwarded-proto", "http"),
                ("x-sigma-tenant", "acme"),
            ]
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
        );
    }

    #[test]
    fn a_plan_that_is_not_valid_http_is_left_to_the_handler() {
        for bad in [
            plan(&["bad name"], &[]),
            plan(&[], &[("x-sigma-subject", b"a\nb")]),
            plan(&[], &[("bad name", b"v")]),
        ] {
            assert!(UpstreamTarget::of(bad).is_none());
        }
        let mut bad_authority = plan(&[], &[]);
        bad_authority.authority = "a b".into();
        assert!(UpstreamTarget::of(bad_authority).is_none());
        // Malformed packing: an end past the bytes, an end going backwards,
        // a name without its value.
        let mut past = plan(&["accept"], &[]);
        past.remove.ends = vec![7];
        let mut backwards = plan(&[], &[("x-a", b"1"), ("x-b", b"2")]);
        backwards.add.ends = vec![3, 4, 2, 8];
        let mut unpaired = plan(&[], &[("x-a", b"1")]);
        unpaired.add.ends.pop();
        for bad in [past, backwards, unpaired] {
            assert!(UpstreamTarget::of(bad).is_none());
        }
        // A path that does not start with `/` could read as part of the
        // authority (`http://upstream@evil.example/`): refused.
        for path in ["@evil.example/", "", "?x=1", "evil"] {
            let mut relative = plan(&[], &[]);
            relative.path_with_query = path.into();
            assert!(UpstreamTarget::of(relative).is_none(), "{path:?}");
        }
    }

    /// The status and error code `decide` answers for `headers`.
    async fn refusal(instance: &mut HttpInstance, headers: Packed) -> (u16, String) {
        let head = RequestHead {
            method: "GET".into(),
            path_with_query: "/api/v1/records".into(),
            headers,
            peer: None,
            tls: false,
        };
        let HttpInstance { store, typed, .. } = instance;
        let decided = typed
            .sigma_api_keys_gateway()
            .call_decide(store, &head)
            .await
            .unwrap();
        let Decision::Reply(reply) = decided.decision else {
            panic!("not a reply: {:?}", decided.decision);
        };
        let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        let code = body["error"]["code"].as_str().unwrap().to_owned();
        (reply.status, code)
    }

    /// The client's headers cross as one packed buffer, and a head whose
    /// packing is malformed is refused 400, never decided on.
    #[tokio::test]
    async fn the_component_reads_packed_headers_and_refuses_malformed_ones() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::open_sqlite(&dir.path().join("k.db")).unwrap();
        let runtime = Runtime::new(db, &crate::runtime::Settings::default()).unwrap();
        let mut instance = runtime.http_instance(Arc::default()).await.unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(HOST, HeaderValue::from_static("a.example"));
        headers.insert(
            "x-sigma-apikey",
            HeaderValue::from_static("sigma_sk_live_nope"),
        );
        // Read: the key is found among the packed headers (and is not valid).
        let read = refusal(&mut instance, packed_headers(&headers)).await;
        assert_eq!(read, (401, "invalid_api_key".to_owned()));
        let mut malformed = packed_headers(&headers);
        malformed.ends[1] = 99;
        let refused = refusal(&mut instance, malformed).await;
        assert_eq!(refused, (400, "invalid_request".to_owned()));
    }

    #[test]
    fn remembered_names_are_the_names_asked_for() {
        // Twice each: the second time comes from the remembered list.
        for _ in 0..2 {
            for name in ["x-sigma-tenant", "host", "x-forwarded-for", "X-Upper"] {
                let parsed = header_name(name.as_bytes()).expect("a valid name");
                assert_eq!(parsed.as_str(), name.to_ascii_lowercase());
            }
            assert!(header_name(b"bad name").is_none());
            assert!(header_name(b"").is_none());
        }
    }
}
