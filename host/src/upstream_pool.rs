//! Keep-alive connections to the upstream, shared by all requests.
//!
//! wasmtime's default `wasi:http` client opens a new TCP connection for every
//! outgoing request; in front of an API that is most of the cost of
//! proxying. Plain-HTTP upstream connections are kept here and reused once a
//! response body has been read to its end. HTTPS goes through wasmtime's
//! default client unchanged.

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
use hyper::http::uri::{Authority, Uri};
use tokio::net::TcpStream;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

/// Idle connections kept per upstream authority.
const MAX_IDLE_PER_AUTHORITY: usize = 256;
/// wasmtime's defaults when the guest sets no timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// Drives a connection that is not pooled; it must be spawned.
pub type IoFuture = Box<dyn Future<Output = Result<(), Error>> + Send>;

/// Idle upstream connections by serving thread and upstream authority. A
/// connection is driven by a task on the thread that opened it, so it is
/// only ever reused by that thread: no request wakes another thread.
///
/// Lists, not hash maps: there is one entry per serving thread (one per
/// core) and per upstream (usually one), so a scan of a few entries is
/// cheaper than hashing a key twice per request.
#[derive(Default)]
pub struct UpstreamPool {
    idle: Mutex<Vec<(ThreadId, IdleByAuthority)>>,
}

/// One thread's idle connections, by authority (`Authority` compares
/// host names without regard to case).
type IdleByAuthority = Vec<(Authority, Vec<SendRequest<WasiBody>>)>;

impl UpstreamPool {
    fn take(&self, authority: &Authority) -> Option<SendRequest<WasiBody>> {
        let mut idle = self.idle.lock().ok()?;
        let thread = std::thread::current().id();
        let (_, by_authority) = idle.iter_mut().find(|(t, _)| *t == thread)?;
        let (_, list) = by_authority.iter_mut().find(|(a, _)| a == authority)?;
        while let Some(sender) = list.pop() {
            if sender.is_ready() {
                return Some(sender);
            }
        }
        None
    }

    fn give_back(&self, authority: Authority, sender: SendRequest<WasiBody>) {
        if !sender.is_ready() {
            return;
        }
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        let by_authority = entry(&mut idle, std::thread::current().id());
        let list = entry(by_authority, authority);
        if list.len() < MAX_IDLE_PER_AUTHORITY {
            list.push(sender);
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
        let authority = uri.authority().ok_or(Error::HttpRequestUriInvalid)?.clone();
        let connect_timeout = options
            .and_then(|o| o.connect_timeout)
            .unwrap_or(DEFAULT_TIMEOUT);
        let first_byte_timeout = options
            .and_then(|o| o.first_byte_timeout)
            .unwrap_or(DEFAULT_TIMEOUT);
        let between_bytes_timeout = options
            .and_then(|o| o.between_bytes_timeout)
            .unwrap_or(DEFAULT_TIMEOUT);

        // The request line carries only the path: we are not talking to a
        // proxy. (The path is already parsed; cloning it shares its bytes.)
        *request.uri_mut() = match uri.path_and_query() {
            Some(path) => Uri::from(path.clone()),
            None => Uri::from_static("/"),
        };

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

/// The value for `key` in a short list of pairs, added if missing.
fn entry<K: PartialEq, V: Default>(list: &mut Vec<(K, V)>, key: K) -> &mut V {
    let i = match list.iter().position(|(k, _)| *k == key) {
        Some(i) => i,
        None => {
            list.push((key, V::default()));
            list.len() - 1
        }
    };
    &mut list[i].1
}

async fn connect(authority: &Authority, timeout: Duration) -> Result<SendRequest<WasiBody>, Error> {
    let port = authority.port_u16().unwrap_or(80);
    // `host()` keeps an IPv6 literal's brackets; the resolver wants it bare.
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let address = (host, port);
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
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
    release: Option<(Arc<UpstreamPool>, Authority, SendRequest<WasiBody>)>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connects_to_ip_literals_and_host_names() -> anyhow::Result<()> {
        let mut reached = 0;
        for (bind, host) in [
            ("127.0.0.1:0", "127.0.0.1"),
            ("[::1]:0", "[::1]"),
            ("127.0.0.1:0", "localhost"),
        ] {
            // A machine without IPv6 loopback skips that case.
            let Ok(listener) = tokio::net::TcpListener::bind(bind).await else {
                continue;
            };
            let port = listener.local_addr()?.port();
            let authority: Authority = format!("{host}:{port}").parse()?;
            let sender = connect(&authority, Duration::from_secs(5)).await?;
            let accepted = listener.accept().await?;
            assert!(accepted.0.peer_addr()?.ip().is_loopback());
            drop(sender);
            reached += 1;
        }
        assert!(reached >= 2);
        Ok(())
    }

    #[test]
    fn entries_are_found_again_and_added_once() {
        let mut list: Vec<(Authority, Vec<u8>)> = Vec::new();
        entry(&mut list, Authority::from_static("a.example:80")).push(1);
        entry(&mut list, Authority::from_static("b.example:80")).push(2);
        // Host names compare without regard to case.
        entry(&mut list, Authority::from_static("A.example:80")).push(3);
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].1, [1, 3]);
        assert_eq!(list[1].1, [2]);
    }
}
