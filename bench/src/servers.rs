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

/// Serves `handler` on a fresh loopback port.
async fn listen<F, Fut>(handler: F) -> anyhow::Result<SocketAddr>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<
            Output = Result<
                Response<http_body_util::combinators::BoxBody<Bytes, hyper::Error>>,
                Infallible,
            >,
        > + Send
        + 'static,
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
    listen(move |mut req: Request<Incoming>| {
        let client = client.clone();
        async move {
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
    })
    .await
}
