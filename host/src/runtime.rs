//! Loads the sigma-keys component into wasmtime and wires its imports to the
//! SQLite store, the configuration and the request log.

use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{Context, Result};
use wasmtime::component::{Component, HasSelf, InstancePre, Linker, ResourceTable};
use wasmtime::{
    Cache, CacheConfig, Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_config::{WasiConfig, WasiConfigVariables};
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyIndices};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::bindings::sigma::api_keys::request_log;
use crate::bindings::sigma::api_keys::store::{self, StoreError, StoredKey as KeyRecord};
use crate::bindings::{Typed, TypedIndices};
use crate::db::Db;
use crate::hop_by_hop::ProxyHooks;

/// The component, built from `guest/` and embedded at compile time.
pub const COMPONENT: &[u8] = include_bytes!(env!("SIGMA_KEYS_COMPONENT_WASM"));

/// What the component reads through `wasi:config/store`.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// The HS256 secret for Bearer tokens (its UTF-8 bytes are the key).
    pub jwt_secret: Option<String>,
    /// Where authorized resource requests are forwarded.
    pub upstream: Option<String>,
    /// How long the upstream may take to connect, answer or send more body.
    pub upstream_timeout: Option<std::time::Duration>,
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

fn pooling_limits() -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(MAX_INSTANCES)
        .total_core_instances(MAX_INSTANCES * 8)
        .total_memories(MAX_INSTANCES * 2)
        .total_tables(MAX_INSTANCES * 8)
        .max_memory_size(256 << 20);
    pool
}

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
}

/// Per-call state of one component instance.
pub struct Ctx {
    table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: ProxyHooks,
    db: Arc<Db>,
    config: Arc<WasiConfigVariables>,
    caller: Arc<Mutex<Caller>>,
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
    fn insert(&mut self, key: KeyRecord, hash: Vec<u8>) -> Result<(), StoreError> {
        self.db.insert(&key, &hash)
    }
    fn find_by_hash(&mut self, hash: Vec<u8>) -> Result<Option<KeyRecord>, StoreError> {
        self.db.find_by_hash(&hash)
    }
    fn list(&mut self, tenant: String) -> Result<Vec<KeyRecord>, StoreError> {
        self.db.list(&tenant)
    }
    fn deactivate(
        &mut self,
        tenant: String,
        id: String,
        at: u64,
    ) -> Result<Option<KeyRecord>, StoreError> {
        self.db.deactivate(&tenant, &id, at)
    }
    fn remove(&mut self, tenant: String, id: String) -> Result<bool, StoreError> {
        self.db.remove(&tenant, &id)
    }
    fn record_use(&mut self, id: String, at: u64) -> Result<(), StoreError> {
        self.db.record_use(&id, at)
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
    db: Arc<Db>,
    config: Arc<WasiConfigVariables>,
    /// Shared by every instance, so upstream connections outlive requests.
    hooks: ProxyHooks,
    /// Instances that finished a request and wait for the next.
    warm: Mutex<Vec<HttpInstance>>,
}

impl Runtime {
    /// Compiles the embedded component (cached on disk by wasmtime) and links it.
    pub fn new(db: Arc<Db>, settings: &Settings) -> Result<Runtime> {
        Runtime::from_component(COMPONENT, db, settings)
    }

    /// The same for another build of a component of the `service` world.
    pub fn from_component(wasm: &[u8], db: Arc<Db>, settings: &Settings) -> Result<Runtime> {
        let mut config = Config::new();
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
        let engine = match Engine::new(&pooled) {
            Ok(engine) => engine,
            Err(e) => {
                tracing::warn!("pooling allocator unavailable ({e:#}); allocating per instance");
                Engine::new(&config)?
            }
        };
        let component = Component::new(&engine, wasm)
            .map_err(anyhow::Error::from)
            .context("cannot compile the sigma-keys component")?;
        Runtime::with_component(engine, &component, db, settings)
    }

    fn with_component(
        engine: Engine,
        component: &Component,
        db: Arc<Db>,
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
        let mut vars = WasiConfigVariables::new();
        if let Some(secret) = &settings.jwt_secret {
            vars.insert("jwt-secret", secret.as_str());
        }
        if let Some(upstream) = &settings.upstream {
            vars.insert("upstream", upstream.as_str());
        }
        if let Some(timeout) = settings.upstream_timeout {
            vars.insert("upstream-timeout-ms", timeout.as_millis().to_string());
        }
        Ok(Runtime {
            proxy: ProxyIndices::new(&pre)?,
            typed: TypedIndices::new(&pre)?,
            pre,
            hop_by_hop: OnceLock::new(),
            engine,
            db,
            config: Arc::new(vars),
            hooks: ProxyHooks::default(),
            warm: Mutex::new(Vec::new()),
        })
    }

    /// A fresh store for one request or call; `caller` receives the request log's attribution.
    pub(crate) fn new_store(&self, caller: Arc<Mutex<Caller>>) -> Store<Ctx> {
        Store::new(
            &self.engine,
            Ctx {
                table: ResourceTable::new(),
                wasi: WasiCtx::builder().inherit_stderr().build(),
                http: WasiHttpCtx::new(),
                hooks: self.hooks.clone(),
                db: self.db.clone(),
                config: self.config.clone(),
                caller,
            },
        )
    }

    /// An instance ready to handle an HTTP request: a warm one that served
    /// earlier requests, or a new one.
    pub(crate) async fn http_instance(&self, caller: Arc<Mutex<Caller>>) -> Result<HttpInstance> {
        let warm = self.warm.lock().ok().and_then(|mut idle| idle.pop());
        match warm {
            Some(mut instance) => {
                instance.store.data_mut().caller = caller;
                Ok(instance)
            }
            None => {
                let mut store = self.new_store(caller);
                let instance = self.pre.instantiate_async(&mut store).await?;
                Ok(HttpInstance {
                    proxy: self.proxy.load(&mut store, &instance)?,
                    typed: self.typed.load(&mut store, &instance)?,
                    store,
                    served: 0,
                })
            }
        }
    }

    /// Keeps an instance that handled a request to completion for the next one.
    /// An instance that trapped is never given back: it is dropped.
    pub(crate) fn give_back(&self, mut instance: HttpInstance) {
        instance.served += 1;
        if instance.served >= MAX_REQUESTS_PER_INSTANCE {
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

    /// The pool of upstream connections.
    pub(crate) fn upstream(&self) -> Arc<crate::upstream_pool::UpstreamPool> {
        self.hooks.pool.clone()
    }
}
