//! Keep-alive connections to the upstream, shared by all requests.
//!
//! wasmtime's default `wasi:http` client opens a new TCP connection for every
//! outgoing request; in front of an API that is most of the cost of
//! proxying. Plain-HTTP upstream connections are kept here and reused once a
//! response body has been read to its end. HTTPS goes through wasmtime's
//! default client unchanged.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread::ThreadId;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use hyper::client::conn::http1::{self, SendRequest};
use tokio::net::TcpStream;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

/// Idle connections kept per upstream authority.
const MAX_IDLE_PER_AUTHORITY: usize = 256;
/// wasmtime's defaults when the guest sets no timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// Drives a connection that is not pooled; it must be spawned.
pub type IoFuture = Box<dyn Future<Output = Result<(), Error>> + Send>;

/// Idle upstream connections by serving thread and `host:port`. A
/// connection is driven by a task on the thread that opened it, so it is
/// only ever reused by that thread: no request wakes another thread.
#[derive(Default)]
pub struct UpstreamPool {
    idle: Mutex<HashMap<ThreadId, IdleByAuthority>>,
}

/// One thread's idle connections, by `host:port`.
type IdleByAuthority = HashMap<String, Vec<SendRequest<WasiBody>>>;

impl UpstreamPool {
    fn take(&self, authority: &str) -> Option<SendRequest<WasiBody>> {
        let mut idle = self.idle.lock().ok()?;
        let list = idle
            .get_mut(&std::thread::current().id())?
            .get_mut(authority)?;
        while let Some(sender) = list.pop() {
            if sender.is_ready() {
                return Some(sender);
            }
        }
        None
    }

    fn give_back(&self, authority: String, sender: SendRequest<WasiBody>) {
        if !sender.is_ready() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            let list = idle
                .entry(std::thread::current().id())
                .or_default()
                .entry(authority)
                .or_default();
            if list.len() < MAX_IDLE_PER_AUTHORITY {
                list.push(sender);
            }
        }
    }

    /// Sends `request` (absolute URI) upstream. A connection that is not
    /// pooled (HTTPS) comes with the future that drives it.
    pub async fn send(
        self: Arc<Self>,
        mut request: hyper::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> Result<(hyper::Response<WasiBody>, Option<IoFuture>), Error> {
        let uri = request.uri().clone();
        if uri.scheme() != Some(&hyper::http::uri::Scheme::HTTP) {
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            return Ok((response.map(BodyExt::boxed_unsync), Some(Box::new(io))));
        }
        let authority = uri.authority().ok_or(Error::HttpRequestUriInvalid)?;
        let authority = match authority.port() {
            Some(_) => authority.to_string(),
            None => format!("{authority}:80"),
        };
        let connect_timeout = options
            .and_then(|o| o.connect_timeout)
            .unwrap_or(DEFAULT_TIMEOUT);
        let first_byte_timeout = options
            .and_then(|o| o.first_byte_timeout)
            .unwrap_or(DEFAULT_TIMEOUT);
        let between_bytes_timeout = options
            .and_then(|o| o.between_bytes_timeout)
            .unwrap_or(DEFAULT_TIMEOUT);

        // The request line carries only the path: we are not talking to a proxy.
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        *request.uri_mut() = path.parse().map_err(|_| Error::HttpRequestUriInvalid)?;

        // A pooled connection may have been closed by the upstream meanwhile;
        // hyper hands the unsent request back, and a fresh connection gets it.
        let mut sender = match self.take(&authority) {
            Some(s) => s,
            None => connect(&authority, connect_timeout).await?,
        };
        let response = match tokio::time::timeout(
            first_byte_timeout,
            sender.try_send_request(request),
        )
        .await
        {
            Err(_) => return Err(Error::ConnectionReadTimeout),
            Ok(Ok(response)) => response,
            Ok(Err(mut failed)) => match failed.take_message() {
                Some(request) => {
                    sender = connect(&authority, connect_timeout).await?;
                    match tokio::time::timeout(first_byte_timeout, sender.send_request(request))
                        .await
                    {
                        Err(_) => return Err(Error::ConnectionReadTimeout),
                        Ok(result) => result.map_err(Error::from)?,
                    }
                }
                None => return Err(Error::from(failed.into_error())),
            },
        };
        let (parts, incoming) = response.into_parts();
        let body = PooledBody {
            incoming,
            between_bytes_timeout,
            deadline: None,
            release: Some((self, authority, sender)),
        };
        Ok((
            hyper::Response::from_parts(parts, body.boxed_unsync()),
            None,
        ))
    }
}

async fn connect(authority: &str, timeout: Duration) -> Result<SendRequest<WasiBody>, Error> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(authority)).await {
        Ok(stream) => stream.map_err(Error::Connect)?,
        Err(_) => return Err(Error::ConnectionTimeout),
    };
    let _ = stream.set_nodelay(true);
    let (sender, connection) =
        tokio::time::timeout(timeout, http1::handshake(TokioIo::new(stream)))
            .await
            .map_err(|_| Error::ConnectionTimeout)??;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("upstream connection ended: {e}");
        }
    });
    Ok(sender)
}

/// An upstream response body that hands its connection back to the pool
/// when it ends, and fails if the upstream goes quiet for too long.
struct PooledBody {
    incoming: Incoming,
    between_bytes_timeout: Duration,
    /// Armed while the body waits for bytes; most bodies never wait, so
    /// most responses never touch the timer wheel.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    release: Option<(Arc<UpstreamPool>, String, SendRequest<WasiBody>)>,
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        match Pin::new(&mut self.incoming).poll_frame(cx) {
            Poll::Ready(None) => {
                if let Some((pool, authority, sender)) = self.release.take() {
                    pool.give_back(authority, sender);
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                self.release = None;
                Poll::Ready(Some(Err(Error::from(e))))
            }
            Poll::Ready(Some(Ok(frame))) => {
                self.deadline = None;
                self.release_if_done();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                let timeout = self.between_bytes_timeout;
                let deadline = self
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        self.release = None;
                        Poll::Ready(Some(Err(Error::HttpResponseTimeout)))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }
}

impl PooledBody {
    /// Once the body has been read to its end, the connection can serve another request.
    fn release_if_done(&mut self) {
        if self.incoming.is_end_stream()
            && let Some((pool, authority, sender)) = self.release.take()
        {
            pool.give_back(authority, sender);
        }
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A body dropped half-read leaves its connection mid-response: not reusable.
        self.release_if_done();
    }
}
