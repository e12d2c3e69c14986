//! Connection-specific headers (RFC 9110 §7.6.1). wasmtime strips the fixed
//! hop-by-hop set before the component sees a message, but only the transport
//! knows which extra headers a `Connection` header names, so they go here.

use std::future::Future;
use std::sync::Arc;

use hyper::HeaderMap;
use hyper::header::{CONNECTION, HeaderName};
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use crate::upstream_pool::UpstreamPool;

/// Removes every header that a `Connection` header names.
pub fn strip_connection_nominated(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
}

/// `wasi:http` hooks: pooled upstream connections, minus connection-specific
/// response headers.
#[derive(Clone, Default)]
pub struct ProxyHooks {
    pub pool: Arc<UpstreamPool>,
}

type SendResult = wasmtime_wasi_http::Result<(
    hyper::Response<WasiBody>,
    Box<dyn Future<Output = wasmtime_wasi_http::Result<(), Error>> + Send>,
)>;

impl WasiHttpHooks for ProxyHooks {
    fn send_request(
        &mut self,
        request: hyper::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<(), Error>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        let pool = self.pool.clone();
        Box::new(async move {
            let (mut response, io) = pool.send(request, options).await?;
            strip_connection_nominated(response.headers_mut());
            let io = io.unwrap_or_else(|| Box::new(async { Ok(()) }));
            Ok((response, io))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_headers_go_others_stay() {
        let mut h = HeaderMap::new();
        h.append(CONNECTION, "keep-alive, X-Hop".parse().unwrap());
        h.append(CONNECTION, "x-other".parse().unwrap());
        h.insert("x-hop", "1".parse().unwrap());
        h.insert("x-other", "1".parse().unwrap());
        h.insert("x-keep", "1".parse().unwrap());
        strip_connection_nominated(&mut h);
        assert!(h.get("x-hop").is_none() && h.get("x-other").is_none());
        assert!(h.get("x-keep").is_some());
    }
}
