//! Loads the sigma-keys component into wasmtime and wires its imports to the
//! key store, the configuration and the request log.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::component::{Component, HasSelf, InstancePre, Linker, ResourceTable};
use wasmtime::{
    Cache, CacheConfig, Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store,
    StoreLimits, StoreLimitsBuilder,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_config::{WasiConfig, WasiConfigVariables};
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyIndices};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::bindings::sigma::api_keys::request_log;
use crate::bindings::sigma::api_keys::store::{
    self, LoggedEvent, StoreError, StoredEvent as Event, StoredKey as KeyRecord,
};
use crate::bindings::{Typed, TypedIndices};
use crate::hop_by_hop::ProxyHooks;
use crate::jwks::KeySetFeed;
use crate::store::{EventQuery, KeyStore, Roll};

/// The component, built from `guest/` and embedded at compile time.
pub const COMPONENT: &[u8] = include_bytes!(env!("SIGMA_KEYS_COMPONENT_WASM"));

/// [`COMPONENT`] compiled ahead of time by `build.rs` for this machine and
/// [`crate::engine::configure`]'s settings, so a start compiles nothing.
const PRECOMPILED: &[u8] = include_bytes!(env!("SIGMA_KEYS_COMPONENT_CWASM"));

/// What the component reads through `wasi:config/store`.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// The HS256 secret for Bearer tokens (its UTF-8 bytes are the key).
    pub jwt_secret: Option<String>,
    /// Where authorized resource requests are forwarded.
    pub upstream: Option<String>,
    /// How long the upstream may take to connect, answer or send more body.
    pub upstream_timeout: Option<Duration>,
    /// Bearer tokens whose `exp` is further ahead are refused (component default: 24 h).
    pub jwt_max_lifetime: Option<Duration>,
    /// Keys one tenant may have (component default: 10,000).
    pub max_keys_per_tenant: Option<u32>,
    /// GitHub's secret scanning public keys, as GitHub publishes them (the
    /// file's text); without them `POST /api/v1/secret-scanning/github` is 404.
    pub github_scanning_keys: Option<String>,
    /// Key-set tokens must carry this `iss`, when given.
    pub jwt_issuer: Option<String>,
    /// Key-set tokens must carry this `aud`, when given.
    pub jwt_audience: Option<String>,
    /// The claim that names the tenant in key-set tokens (component default: `tenant`).
    pub tenant_claim: Option<String>,
    /// Which endpoints a listener serves, as the component names them:
    /// `all` (the default), `public` (all but `/_sigma/auth/`) or `auth`
    /// (only `/_sigma/auth/`).
    pub endpoints: Option<&'static str>,
}

/// Who made an HTTP request, as the component reported it.
#[derive(Clone, Debug, Default)]
pub struct Caller {
    pub tenant: Option<String>,
    pub key_id: Option<String>,
    pub subject: Option<String>,
}

/// Instances that may be alive at once (requests in flight plus typed calls).
pub const MAX_INSTANCES: u32 = 512;
/// Instances kept for typed calls (`Service`, the CLI); the rest serve HTTP.
const TYPED_RESERVE: u32 = 32;
/// How long a request waits for a free instance before it is answered
/// 503 `overloaded`.
pub const INSTANCE_WAIT: Duration = Duration::from_secs(1);
/// The most linear memory one instance may grow to, in every engine
/// configuration.
pub const MAX_MEMORY_BYTES: usize = 256 << 20;
/// The epoch advances this often; guest calls are interrupted on epochs.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// The longest one guest call (one request's decision and handling, or one
/// typed call) may take, store waits included, before it traps.
pub const GUEST_CALL_DEADLINE: Duration = Duration::from_secs(5);

fn pooling_limits() -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(MAX_INSTANCES)
        .total_core_instances(MAX_INSTANCES * 8)
        .total_memories(MAX_INSTANCES * 2)
        .total_tables(MAX_INSTANCES * 8)
        .max_memory_size(MAX_MEMORY_BYTES);
    pool
}

/// No component instance came free within [`INSTANCE_WAIT`]; the request is
/// answered 503 `overloaded`.
#[derive(Debug)]
pub struct Overloaded;

impl std::fmt::Display for Overloaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no component instance came free within {INSTANCE_WAIT:?}"
        )
    }
}

impl std::error::Error for Overloaded {}

/// Warm HTTP instances kept between requests.
const MAX_IDLE_INSTANCES: usize = 64;
/// An instance is retired after this many requests, which bounds whatever a
/// long-lived instance might accumulate.
const MAX_REQUESTS_PER_INSTANCE: u32 = 10_000;

/// A component instance that serves HTTP requests one at a time, through
/// `gateway` and, for requests that need it, the `wasi:http` handler.
pub(crate) struct HttpInstance {
    pub(crate) store: Store<Ctx>,
    pub(crate) proxy: Proxy,
    pub(crate) typed: Typed,
    served: u32,
    /// Counts this instance against the HTTP share of the pool.
    _slot: OwnedSemaphorePermit,
}

/// Per-call state of one component instance.
pub struct Ctx {
    table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: ProxyHooks,
    db: Arc<dyn KeyStore>,
    config: Arc<WasiConfigVariables>,
    /// The version of the runtime's configuration that `config` is.
    config_version: u64,
    caller: Arc<Mutex<Caller>>,
    limits: StoreLimits,
}

impl WasiView for Ctx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for Ctx {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

impl request_log::Host for Ctx {
    fn identify(
        &mut self,
        tenant: Option<String>,
        key_id: Option<String>,
        subject: Option<String>,
    ) {
        if let Ok(mut caller) = self.caller.lock() {
            *caller = Caller {
                tenant,
                key_id,
                subject,
            };
        }
    }
}

impl store::Host for Ctx {
    async fn insert(
        &mut self,
        key: KeyRecord,
        hash: Vec<u8>,
        tenant_limit: u32,
        event: Event,
    ) -> Result<(), StoreError> {
        self.db.insert(key, hash, tenant_limit, event).await
    }
    async fn find_by_hash(&mut self, hash: Vec<u8>) -> Result<Option<KeyRecord>, StoreError> {
        // The hot path: a cached key is answered here, with no future boxed.
        if let Some(found) = self.db.cached(&hash) {
            return Ok(Some(found));
        }
        self.db.find_by_hash(hash).await
    }
    async fn list(&mut self, tenant: String) -> Result<Vec<KeyRecord>, StoreError> {
        self.db.list(tenant).await
    }
    async fn deactivate(
        &mut self,
        tenant: String,
        id: String,
        at: u64,
        event: Event,
    ) -> Result<Option<KeyRecord>, StoreError> {
        self.db.deactivate(tenant, id, at, event).await
    }
    async fn remove(
        &mut self,
        tenant: String,
        id: String,
        event: Event,
    ) -> Result<bool, StoreError> {
        self.db.remove(tenant, id, event).await
    }
    #[allow(clippy::too_many_arguments)]
    async fn roll(
        &mut self,
        tenant: String,
        id: String,
        at: u64,
        expires_at: u64,
        key: KeyRecord,
        hash: Vec<u8>,
        tenant_limit: u32,
        events: Vec<Event>,
    ) -> Result<Option<KeyRecord>, StoreError> {
        self.db
            .roll(Roll {
                tenant,
                id,
                at,
                expires_at,
                key,
                hash,
                tenant_limit,
                events,
            })
            .await
    }
    async fn events(
        &mut self,
        tenant: String,
        key_id: Option<String>,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<LoggedEvent>, StoreError> {
        self.db
            .events(EventQuery {
                tenant,
                key_id,
                before,
                limit,
            })
            .await
    }
    async fn record_use(&mut self, id: String, at: u64) -> Result<(), StoreError> {
        // Only noted in memory; written in batches off the request path.
        self.db.record_use(&id, at);
        Ok(())
    }
}

/// The compiled component, ready to instantiate per request or per call.
pub struct Runtime {
    engine: Engine,
    pre: InstancePre<Ctx>,
    proxy: ProxyIndices,
    typed: TypedIndices,
    /// What the component names as hop-by-hop, asked once.
    hop_by_hop: OnceLock<Arc<[hyper::header::HeaderName]>>,
    db: Arc<dyn KeyStore>,
    /// What the component reads through `wasi:config/store`, with a version
    /// that changes when a value is replaced (the JWK Set, on rotation).
    config: RwLock<(u64, Arc<WasiConfigVariables>)>,
    /// `config`'s version, read without the lock on every checkout.
    config_version: AtomicU64,
    /// The values behind `config`.
    vars: Mutex<HashMap<String, String>>,
    /// The identity provider's key set, when one is configured.
    key_sets: OnceLock<Arc<KeySetFeed>>,
    /// Shared by every instance, so upstream connections outlive requests.
    hooks: ProxyHooks,
    /// Instances that finished a request and wait for the next.
    warm: Mutex<Vec<HttpInstance>>,
    /// Instances serving HTTP, idle ones included, may not exceed these permits.
    http_slots: Arc<Semaphore>,
}

impl Runtime {
    /// Compiles the embedded component (cached on disk by wasmtime) and links it.
    pub fn new(db: Arc<dyn KeyStore>, settings: &Settings) -> Result<Runtime> {
        let engine = new_engine()?;
        let component = match precompiled(&engine) {
            Ok(component) => component,
            Err(e) => {
                // Another CPU than the build machine's, or other settings:
                // compile as any other component (cached on disk).
                tracing::info!("compiling the component at start: {e:#}");
                compile(&engine, COMPONENT)?
            }
        };
        Runtime::with_component(engine, &component, db, settings)
    }

    /// The same for another build of a component of the `service` world.
    pub fn from_component(
        wasm: &[u8],
        db: Arc<dyn KeyStore>,
        settings: &Settings,
    ) -> Result<Runtime> {
        let engine = new_engine()?;
        let component = compile(&engine, wasm)?;
        Runtime::with_component(engine, &component, db, settings)
    }

    fn with_component(
        engine: Engine,
        component: &Component,
        db: Arc<dyn KeyStore>,
        settings: &Settings,
    ) -> Result<Runtime> {
        let mut linker: Linker<Ctx> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        wasmtime_wasi_config::add_to_linker(&mut linker, |c: &mut Ctx| {
            WasiConfig::from(&*c.config)
        })?;
        Typed::add_to_linker::<Ctx, HasSelf<Ctx>>(&mut linker, |c| c)?;
        let pre = linker.instantiate_pre(component)?;
        let mut vars: HashMap<String, String> = HashMap::new();
        if let Some(secret) = &settings.jwt_secret {
            vars.insert("jwt-secret".to_owned(), secret.clone());
        }
        if let Some(upstream) = &settings.upstream {
            vars.insert("upstream".to_owned(), upstream.clone());
        }
        if let Some(timeout) = settings.upstream_timeout {
            vars.insert(
                "upstream-timeout-ms".to_owned(),
                timeout.as_millis().to_string(),
            );
        }
        if let Some(lifetime) = settings.jwt_max_lifetime {
            vars.insert(
                "jwt-max-lifetime-secs".to_owned(),
                lifetime.as_secs().to_string(),
            );
        }
        if let Some(max) = settings.max_keys_per_tenant {
            vars.insert("max-keys-per-tenant".to_owned(), max.to_string());
        }
        if let Some(keys) = &settings.github_scanning_keys {
            vars.insert("github-scanning-keys".to_owned(), keys.clone());
        }
        if let Some(endpoints) = settings.endpoints {
            vars.insert("endpoints".to_owned(), endpoints.to_string());
        }
        for (name, value) in [
            ("jwt-issuer", &settings.jwt_issuer),
            ("jwt-audience", &settings.jwt_audience),
            ("tenant-claim", &settings.tenant_claim),
        ] {
            if let Some(value) = value {
                vars.insert(name.to_owned(), value.clone());
            }
        }
        tick_epochs(&engine)?;
        Ok(Runtime {
            proxy: ProxyIndices::new(&pre)?,
            typed: TypedIndices::new(&pre)?,
            pre,
            hop_by_hop: OnceLock::new(),
            engine,
            db,
            config: RwLock::new((0, Arc::new(vars.clone().into_iter().collect()))),
            config_version: AtomicU64::new(0),
            vars: Mutex::new(vars),
            key_sets: OnceLock::new(),
            hooks: ProxyHooks::default(),
            warm: Mutex::new(Vec::new()),
            http_slots: Arc::new(Semaphore::new((MAX_INSTANCES - TYPED_RESERVE) as usize)),
        })
    }

    /// The configuration now, and its version.
    fn config(&self) -> (u64, Arc<WasiConfigVariables>) {
        match self.config.read() {
            Ok(config) => (config.0, config.1.clone()),
            Err(poisoned) => {
                let config = poisoned.into_inner();
                (config.0, config.1.clone())
            }
        }
    }

    /// Replaces one value the component reads through `wasi:config/store`;
    /// instances see it from their next request or call.
    pub fn set_config(&self, name: &str, value: String) {
        let Ok(mut vars) = self.vars.lock() else {
            return;
        };
        vars.insert(name.to_owned(), value);
        let fresh: WasiConfigVariables = vars.clone().into_iter().collect();
        if let Ok(mut config) = self.config.write() {
            *config = (config.0 + 1, Arc::new(fresh));
            self.config_version.store(config.0, Ordering::Release);
        }
    }

    /// Follows the identity provider's key set (see [`KeySetFeed::follow`]).
    pub(crate) fn follow_key_set(&self, feed: Arc<KeySetFeed>) {
        let _ = self.key_sets.set(feed);
    }

    /// Before a request: fetches the key set again if the request's token
    /// names a key it lacks (see [`KeySetFeed::refresh_for`]).
    pub(crate) async fn refresh_key_set_for(&self, headers: &hyper::HeaderMap) {
        if let Some(feed) = self.key_sets.get() {
            feed.refresh_for(headers).await;
        }
    }

    /// A fresh store for one request or call; `caller` receives the request log's attribution.
    pub(crate) fn new_store(&self, caller: Arc<Mutex<Caller>>) -> Store<Ctx> {
        let (version, config) = self.config();
        let mut store = Store::new(
            &self.engine,
            Ctx {
                table: ResourceTable::new(),
                wasi: WasiCtx::builder()
                    .stderr(crate::component_log::ComponentLog)
                    .build(),
                http: WasiHttpCtx::new(),
                hooks: self.hooks.clone(),
                db: self.db.clone(),
                config,
                config_version: version,
                caller,
                limits: StoreLimitsBuilder::new()
                    .memory_size(MAX_MEMORY_BYTES)
                    .build(),
            },
        );
        store.limiter(|ctx| &mut ctx.limits);
        arm_deadline(&mut store);
        store
    }

    /// An instance ready to handle an HTTP request: a warm one that served
    /// earlier requests, or a new one.
    /// Waits at most [`INSTANCE_WAIT`] for room in the pool, then fails with
    /// [`Overloaded`]. The instance's guest calls share one deadline.
    pub(crate) async fn http_instance(&self, caller: Arc<Mutex<Caller>>) -> Result<HttpInstance> {
        let warm = self.warm.lock().ok().and_then(|mut idle| idle.pop());
        if let Some(mut instance) = warm {
            let ctx = instance.store.data_mut();
            ctx.caller = caller;
            if self.config_version.load(Ordering::Acquire) != ctx.config_version {
                (ctx.config_version, ctx.config) = self.config();
            }
            arm_deadline(&mut instance.store);
            return Ok(instance);
        }
        let slot = tokio::time::timeout(INSTANCE_WAIT, self.http_slots.clone().acquire_owned())
            .await
            .map_err(|_| Overloaded)?
            .map_err(|_| Overloaded)?;
        let mut store = self.new_store(caller);
        let instance = self.pre.instantiate_async(&mut store).await?;
        Ok(HttpInstance {
            proxy: self.proxy.load(&mut store, &instance)?,
            typed: self.typed.load(&mut store, &instance)?,
            store,
            served: 0,
            _slot: slot,
        })
    }

    /// Keeps an instance that handled a request to completion for the next one.
    /// An instance that trapped is never given back: it is dropped.
    pub(crate) fn give_back(&self, mut instance: HttpInstance) {
        instance.served += 1;
        if instance.served >= MAX_REQUESTS_PER_INSTANCE {
            return;
        }
        // A request waits for room: free this instance's slot for it
        // rather than keep the instance idle.
        if self.http_slots.available_permits() == 0 {
            return;
        }
        if let Ok(mut idle) = self.warm.lock()
            && idle.len() < MAX_IDLE_INSTANCES
        {
            instance.store.data_mut().caller = Arc::default();
            idle.push(instance);
        }
    }

    /// An instance for typed calls to `keys` and `auth`.
    pub(crate) async fn typed(&self) -> Result<(Store<Ctx>, Typed)> {
        let mut store = self.new_store(Arc::default());
        let instance = self.pre.instantiate_async(&mut store).await?;
        let typed = self.typed.load(&mut store, &instance)?;
        Ok((store, typed))
    }

    /// The headers never passed on from an upstream response, as the
    /// component names them (asked of `instance` the first time).
    pub(crate) async fn hop_by_hop(
        &self,
        instance: &mut HttpInstance,
    ) -> Result<Arc<[hyper::header::HeaderName]>> {
        if let Some(names) = self.hop_by_hop.get() {
            return Ok(names.clone());
        }
        let HttpInstance { store, typed, .. } = instance;
        let names: Arc<[hyper::header::HeaderName]> = typed
            .sigma_api_keys_gateway()
            .call_hop_by_hop_headers(store)
            .await?
            .iter()
            .filter_map(|n| hyper::header::HeaderName::from_bytes(n.as_bytes()).ok())
            .collect();
        Ok(self.hop_by_hop.get_or_init(|| names).clone())
    }

    /// The key store the component's `store` imports are wired to.
    pub fn store(&self) -> Arc<dyn KeyStore> {
        self.db.clone()
    }

    /// The pool of upstream connections.
    pub(crate) fn upstream(&self) -> Arc<crate::upstream_pool::UpstreamPool> {
        self.hooks.pool.clone()
    }
}

/// The engine every component runs on.
fn new_engine() -> Result<Engine> {
    let mut config = Config::new();
    crate::engine::configure(&mut config);
    match CacheConfig::from_file(None).and_then(Cache::new) {
        Ok(cache) => {
            config.cache(Some(cache));
        }
        Err(e) => tracing::debug!("compilation cache disabled: {e:#}"),
    }
    // Typed calls and HTTP pool misses create instances; the pooling
    // allocator makes that cheap by reusing pre-reserved memory slots
    // instead of mapping and unmapping memory per instance.
    let mut pooled = config.clone();
    pooled.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling_limits()));
    match Engine::new(&pooled) {
        Ok(engine) => Ok(engine),
        Err(e) => {
            tracing::warn!("pooling allocator unavailable ({e:#}); allocating per instance");
            Ok(Engine::new(&config)?)
        }
    }
}

fn compile(engine: &Engine, wasm: &[u8]) -> Result<Component> {
    Component::new(engine, wasm)
        .map_err(anyhow::Error::from)
        .context("cannot compile the sigma-keys component")
}

/// The embedded component as `build.rs` compiled it, if `engine` can run
/// that code (wasmtime checks its version, settings and CPU features).
fn precompiled(engine: &Engine) -> Result<Component> {
    if Engine::detect_precompiled(PRECOMPILED) != Some(wasmtime::Precompiled::Component) {
        anyhow::bail!("the embedded artifact is not a precompiled component");
    }
    // SAFETY: the bytes are the output of `Engine::precompile_component` in
    // our own build script, for this component, embedded in this binary;
    // `deserialize` refuses them (an error, not undefined behaviour) when
    // they do not fit this engine.
    #[allow(unsafe_code)]
    let component = unsafe { Component::deserialize(engine, PRECOMPILED) };
    component.map_err(anyhow::Error::from)
}

/// Gives the store's next guest calls [`GUEST_CALL_DEADLINE`] from now.
pub(crate) fn arm_deadline(store: &mut Store<Ctx>) {
    let ticks = GUEST_CALL_DEADLINE.as_millis() / EPOCH_TICK.as_millis().max(1);
    store.set_epoch_deadline(u64::try_from(ticks).unwrap_or(u64::MAX));
}

/// Advances the engine's epoch every [`EPOCH_TICK`] while the engine lives.
fn tick_epochs(engine: &Engine) -> Result<()> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("sigma-keys-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .context("cannot start the epoch thread")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The artifact `build.rs` made loads in the runtime's engine: a start
    /// compiles nothing (a settings drift would silently fall back to
    /// compiling, so it fails here instead).
    #[test]
    fn the_precompiled_component_fits_the_engine() {
        let engine = new_engine().unwrap();
        precompiled(&engine).unwrap();
    }

    /// Past the HTTP share of the pool, a request waits [`INSTANCE_WAIT`] and
    /// is then refused with [`Overloaded`], never a pool error (a 500); an
    /// instance given back lets the next one through.
    #[tokio::test]
    async fn a_full_pool_is_overloaded_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::open_sqlite(&dir.path().join("k.db")).unwrap();
        let runtime = Runtime::new(db, &Settings::default()).unwrap();
        let mut held = Vec::new();
        for _ in 0..(MAX_INSTANCES - TYPED_RESERVE) {
            held.push(runtime.http_instance(Arc::default()).await.unwrap());
        }
        let started = std::time::Instant::now();
        let refused = runtime.http_instance(Arc::default()).await.err().unwrap();
        assert!(refused.is::<Overloaded>(), "{refused:#}");
        assert!(started.elapsed() >= INSTANCE_WAIT);
        // Typed calls keep their reserve.
        assert!(runtime.typed().await.is_ok());
        runtime.give_back(held.pop().unwrap());
        assert!(runtime.http_instance(Arc::default()).await.is_ok());
    }
}
