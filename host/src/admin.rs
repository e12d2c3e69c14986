//! The admin listener (`--admin-listen`): `GET /metrics` (Prometheus text
//! format), `GET /healthz` (the process serves) and `GET /readyz` (the
//! store answers and, on PostgreSQL, the change feed is within its
//! staleness bound). Never on the public listener, and off unless asked
//! for, so several nodes can share a machine.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use wasmtime_wasi_http::io::TokioIo;

use crate::metrics::{FEED_LAG, FEED_RECONNECTS};
use crate::store::KeyStore;

/// The Prometheus text exposition format's content type.
const METRICS_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the admin endpoints look at.
pub struct Admin {
    pub metrics: PrometheusHandle,
    pub db: Arc<dyn KeyStore>,
    /// Set when shutdown starts: `/readyz` then answers 503, so a load
    /// balancer stops sending new requests while those in flight finish.
    pub draining: Arc<AtomicBool>,
}

/// Serves the admin endpoints until the task is dropped.
pub async fn serve(admin: Arc<Admin>, listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(answer(&admin, &req).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(admin: &Admin, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
        return json(
            StatusCode::NOT_FOUND,
            &error(
                "unknown_resource",
                "The admin listener serves /metrics, /healthz and /readyz.",
            ),
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = json(
            StatusCode::METHOD_NOT_ALLOWED,
            &error(
                "method_not_allowed",
                "This endpoint accepts only GET and HEAD.",
            ),
        );
        r.headers_mut()
            .insert("allow", HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match path {
        "/metrics" => {
            if let Some(feed) = admin.db.feed() {
                let lag = feed.lag.map_or(f64::INFINITY, |l| l.as_secs_f64());
                metrics::gauge!(FEED_LAG).set(lag);
                metrics::counter!(FEED_RECONNECTS).absolute(feed.reconnects);
            }
            admin.metrics.run_upkeep();
            let mut r = Response::new(Full::new(Bytes::from(admin.metrics.render())));
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(METRICS_TYPE));
            r
        }
        "/healthz" => json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
        _ => {
            let verdict = if admin.draining.load(Ordering::Relaxed) {
                Err("the server is shutting down".to_owned())
            } else {
                admin.db.ready().await
            };
            match verdict {
                Ok(()) => json(StatusCode::OK, &serde_json::json!({"status": "ready"})),
                Err(reason) => {
                    tracing::warn!("not ready: {reason}");
                    json(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &serde_json::json!({"status": "not_ready", "reason": reason}),
                    )
                }
            }
        }
    }
}

fn error(code: &str, message: &str) -> serde_json::Value {
    serde_json::json!({"error": {"code": code, "message": message}})
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    let headers = r.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
