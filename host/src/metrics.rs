//! Prometheus metrics, served on the admin listener. Every metric's name,
//! kind and help is here, as data; the server records through the `metrics`
//! facade, which does nothing until [`install`] runs (so a server without
//! `--admin-listen` pays nothing). No label holds a tenant, a key id or a
//! path: every label value comes from a fixed set, so cardinality is bounded.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Result;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Requests, by `route` (the component's route class: `resource`,
/// `authorization`, `management`, `verify`, `secret_scanning`,
/// `api_description`; `none` when the host answered alone), `decision`
/// (`forward`, `reply`, `handle`, `none`) and
/// `outcome` (`forwarded`, `replied`, an error code, or `status_4xx` /
/// `status_5xx` for a management answer).
pub const REQUESTS: &str = "sigma_keys_requests_total";
/// Whole-request latency, by `decision`.
pub const REQUEST_SECONDS: &str = "sigma_keys_request_duration_seconds";
/// Time until the upstream's response head, for forwarded requests.
pub const UPSTREAM_SECONDS: &str = "sigma_keys_upstream_duration_seconds";
/// Forwarded requests the upstream failed, by `kind` (`timeout`, `unreachable`).
pub const UPSTREAM_ERRORS: &str = "sigma_keys_upstream_errors_total";
/// Key lookups answered from the cache or not, by `result` (`hit`, `miss`).
pub const CACHE_LOOKUPS: &str = "sigma_keys_cache_lookups_total";
/// Store calls that reached the backend, by `op`.
pub const STORE_SECONDS: &str = "sigma_keys_store_call_duration_seconds";
/// Store calls that failed in the backend, by `op`.
pub const STORE_ERRORS: &str = "sigma_keys_store_errors_total";
/// Client connections open now.
pub const OPEN_CONNECTIONS: &str = "sigma_keys_open_connections";
/// Requests whose component instance trapped or failed (answered 500).
pub const COMPONENT_TRAPS: &str = "sigma_keys_component_traps_total";
/// PostgreSQL: since the lookup cache was last confirmed current.
pub const FEED_LAG: &str = "sigma_keys_change_feed_lag_seconds";
/// PostgreSQL: how often the change feed reconnected.
pub const FEED_RECONNECTS: &str = "sigma_keys_change_feed_reconnects_total";

/// What kind of metric a name is.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric, with its help text.
const METRICS: &[(&str, Kind, &str)] = &[
    (
        REQUESTS,
        Kind::Counter,
        "Requests, by route class, decision and outcome (forwarded, replied, or the error code).",
    ),
    (
        REQUEST_SECONDS,
        Kind::Histogram,
        "Whole-request latency in seconds, by decision.",
    ),
    (
        UPSTREAM_SECONDS,
        Kind::Histogram,
        "Seconds until the upstream's response head, for forwarded requests.",
    ),
    (
        UPSTREAM_ERRORS,
        Kind::Counter,
        "Forwarded requests the upstream failed, by kind.",
    ),
    (
        CACHE_LOOKUPS,
        Kind::Counter,
        "Key lookups by hash, answered from the cache (hit) or not (miss).",
    ),
    (
        STORE_SECONDS,
        Kind::Histogram,
        "Latency in seconds of store calls that reached the database, by op.",
    ),
    (
        STORE_ERRORS,
        Kind::Counter,
        "Store calls that failed in the database, by op.",
    ),
    (
        OPEN_CONNECTIONS,
        Kind::Gauge,
        "Client connections open now.",
    ),
    (
        COMPONENT_TRAPS,
        Kind::Counter,
        "Requests whose component instance trapped or failed (answered 500).",
    ),
    (
        FEED_LAG,
        Kind::Gauge,
        "PostgreSQL: seconds since the lookup cache was last confirmed current.",
    ),
    (
        FEED_RECONNECTS,
        Kind::Counter,
        "PostgreSQL: how often the change feed reconnected.",
    ),
];

/// Latency buckets, in seconds: the gateway's answers take a millisecond or
/// so, the upstream's and the database's up to their timeouts.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 30.0,
];

/// Whether [`install`] ran: work done only to be recorded (such as reading
/// an answer's error code) is skipped until then.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether metrics are being recorded.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Installs the process-wide recorder; its handle renders the text format.
pub fn install() -> Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)?
        .install_recorder()?;
    for (name, kind, help) in METRICS {
        match kind {
            Kind::Counter => metrics::describe_counter!(*name, *help),
            Kind::Gauge => metrics::describe_gauge!(*name, *help),
            Kind::Histogram => metrics::describe_histogram!(*name, *help),
        }
    }
    ENABLED.store(true, Ordering::Relaxed);
    Ok(handle)
}

/// Error codes are `[a-z_]`, at most this long; anything else is `other`.
const MAX_CODE_LEN: usize = 40;

/// The label for an error code read from an answer: the code when it looks
/// like one of ours, else `other` (so a label never carries arbitrary text).
pub fn code_label(code: &str) -> &str {
    if (1..=MAX_CODE_LEN).contains(&code.len())
        && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
    {
        code
    } else {
        "other"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_named_once_with_our_prefix() {
        for (name, _, help) in METRICS {
            assert!(name.starts_with("sigma_keys_"), "{name}");
            assert!(!help.is_empty(), "{name}");
            assert_eq!(METRICS.iter().filter(|(n, _, _)| n == name).count(), 1);
        }
    }

    #[test]
    fn labels_come_from_fixed_sets() {
        assert_eq!(code_label("invalid_api_key"), "invalid_api_key");
        for bad in [
            "",
            "Invalid",
            "a b",
            "tenant-acme",
            "x".repeat(41).as_str(),
            "é",
        ] {
            assert_eq!(code_label(bad), "other", "{bad}");
        }
    }
}
