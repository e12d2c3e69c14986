//! Any store, measured: cache hits and misses, and the latency and failures
//! of the calls that reach the backend. Written once as a wrapper, so each
//! backend stays plain.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use super::{Event, EventQuery, FeedStatus, KeyRecord, KeyStore, LoggedEvent, Roll, StoreError};
use crate::metrics::{CACHE_LOOKUPS, STORE_ERRORS, STORE_SECONDS};

/// `inner`, with every call recorded in the metrics.
pub struct Metered {
    inner: Arc<dyn KeyStore>,
}

impl Metered {
    pub fn wrap(inner: Arc<dyn KeyStore>) -> Arc<dyn KeyStore> {
        Arc::new(Metered { inner })
    }
}

/// Runs a backend call, recording its latency and whether the backend failed
/// (a refusal such as `limit-reached` is an answer, not a failure).
async fn timed<T>(
    op: &'static str,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let started = Instant::now();
    let result = call.await;
    metrics::histogram!(STORE_SECONDS, "op" => op).record(started.elapsed().as_secs_f64());
    if let Err(StoreError::Unavailable(_)) = &result {
        metrics::counter!(STORE_ERRORS, "op" => op).increment(1);
    }
    result
}

#[async_trait::async_trait]
impl KeyStore for Metered {
    async fn insert(
        &self,
        key: KeyRecord,
        hash: Vec<u8>,
        tenant_limit: u32,
        event: Event,
    ) -> Result<(), StoreError> {
        timed("insert", self.inner.insert(key, hash, tenant_limit, event)).await
    }
    fn cached(&self, hash: &[u8]) -> Option<KeyRecord> {
        let found = self.inner.cached(hash);
        let result = if found.is_some() { "hit" } else { "miss" };
        metrics::counter!(CACHE_LOOKUPS, "result" => result).increment(1);
        found
    }
    async fn find_by_hash(&self, hash: Vec<u8>) -> Result<Option<KeyRecord>, StoreError> {
        timed("find_by_hash", self.inner.find_by_hash(hash)).await
    }
    async fn list(&self, tenant: String) -> Result<Vec<KeyRecord>, StoreError> {
        timed("list", self.inner.list(tenant)).await
    }
    async fn deactivate(
        &self,
        tenant: String,
        id: String,
        at: u64,
        event: Event,
    ) -> Result<Option<KeyRecord>, StoreError> {
        timed("deactivate", self.inner.deactivate(tenant, id, at, event)).await
    }
    async fn remove(&self, tenant: String, id: String, event: Event) -> Result<bool, StoreError> {
        timed("remove", self.inner.remove(tenant, id, event)).await
    }
    async fn roll(&self, roll: Roll) -> Result<Option<KeyRecord>, StoreError> {
        timed("roll", self.inner.roll(roll)).await
    }
    async fn events(&self, query: EventQuery) -> Result<Vec<LoggedEvent>, StoreError> {
        timed("events", self.inner.events(query)).await
    }
    fn record_use(&self, id: &str, at: u64) {
        self.inner.record_use(id, at);
    }
    async fn flush_uses(&self) -> Result<(), StoreError> {
        timed("flush_uses", self.inner.flush_uses()).await
    }
    async fn close(&self) {
        self.inner.close().await;
    }
    async fn ready(&self) -> Result<(), String> {
        self.inner.ready().await
    }
    fn feed(&self) -> Option<FeedStatus> {
        self.inner.feed()
    }
}
