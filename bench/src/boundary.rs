//! What crossing the component boundary costs, on a minimal embedding of
//! the component the host embeds: the host's compilation settings, the store
//! imports answered from a map, no pooling, no server. Each call is made
//! both ways wasmtime offers, `call` (synchronous) and `call_async` (on a
//! fiber, as the host calls), so the suite shows what a synchronous call
//! path would buy before one is built, and where wasmtime's floor is.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{Result, anyhow, bail};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_config::{WasiConfig, WasiConfigVariables};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "sigma:api-keys/typed",
    });
}

/// The same world with async exports, for `call_async`; the imports stay
/// synchronous (the map answers at once) and are the same types.
mod async_bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "sigma:api-keys/typed",
        exports: { default: async },
        with: {
            "sigma:api-keys/store": super::bindings::sigma::api_keys::store,
            "sigma:api-keys/request-log": super::bindings::sigma::api_keys::request_log,
        },
    });
}

use async_bindings::exports::sigma::api_keys::keys as akeys;
use bindings::sigma::api_keys::store::{
    Host as StoreHost, KeyHash, LoggedEvent, StoreError, StoredEvent, StoredKey, Timestamp,
};
use bindings::{Typed, exports::sigma::api_keys::keys};

/// Keys in a map, as the bench's in-memory baselines keep them: the store
/// costs next to nothing, so the figures are the boundary's.
#[derive(Default)]
struct MemoryStore {
    keys: HashMap<KeyHash, StoredKey>,
}

struct Ctx {
    table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    config: WasiConfigVariables,
    store: MemoryStore,
}

impl Ctx {
    fn new() -> Ctx {
        Ctx::with_config(WasiConfigVariables::new())
    }

    fn with_config(config: WasiConfigVariables) -> Ctx {
        Ctx {
            table: ResourceTable::new(),
            wasi: WasiCtx::builder().build(),
            http: WasiHttpCtx::new(),
            config,
            store: MemoryStore::default(),
        }
    }
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
            hooks: wasmtime_wasi_http::default_hooks(),
        }
    }
}

fn unsupported() -> StoreError {
    StoreError::Unavailable("not in the bench's store".to_owned())
}

impl StoreHost for Ctx {
    fn insert(
        &mut self,
        key: StoredKey,
        hash: KeyHash,
        _tenant_limit: u32,
        _event: StoredEvent,
    ) -> Result<(), StoreError> {
        self.store.keys.insert(hash, key);
        Ok(())
    }
    fn find_by_hash(&mut self, hash: KeyHash) -> Result<Option<StoredKey>, StoreError> {
        Ok(self.store.keys.get(&hash).cloned())
    }
    fn list(&mut self, _tenant: String) -> Result<Vec<StoredKey>, StoreError> {
        Err(unsupported())
    }
    fn deactivate(
        &mut self,
        _tenant: String,
        _id: String,
        _at: Timestamp,
        _event: StoredEvent,
    ) -> Result<Option<StoredKey>, StoreError> {
        Err(unsupported())
    }
    fn remove(
        &mut self,
        _tenant: String,
        _id: String,
        _event: StoredEvent,
    ) -> Result<bool, StoreError> {
        Err(unsupported())
    }
    #[allow(clippy::too_many_arguments)]
    fn roll(
        &mut self,
        _tenant: String,
        _id: String,
        _at: Timestamp,
        _expires_at: Timestamp,
        _key: StoredKey,
        _hash: KeyHash,
        _tenant_limit: u32,
        _events: Vec<StoredEvent>,
    ) -> Result<Option<StoredKey>, StoreError> {
        Err(unsupported())
    }
    fn events(
        &mut self,
        _tenant: String,
        _key_id: Option<String>,
        _before: Option<u64>,
        _limit: u32,
    ) -> Result<Vec<LoggedEvent>, StoreError> {
        Err(unsupported())
    }
    fn record_use(&mut self, id: String, at: Timestamp) -> Result<(), StoreError> {
        if let Some(key) = self.store.keys.values_mut().find(|k| k.id == id) {
            key.last_used_at = Some(at);
        }
        Ok(())
    }
}

impl bindings::sigma::api_keys::request_log::Host for Ctx {
    fn identify(
        &mut self,
        _tenant: Option<String>,
        _key_id: Option<String>,
        _subject: Option<String>,
    ) {
    }
}

/// Median ns per call on the minimal embedding.
pub struct Figures {
    /// `auth.required-permission("GET", "/api/v1/records")` with `call`.
    pub call_sync: f64,
    /// The same with `call_async`.
    pub call_async: f64,
    /// `auth.verify` of one key, over the map, with `call`.
    pub verify_sync: f64,
    /// The same with `call_async`.
    pub verify_async: f64,
}

fn engine() -> Result<Engine> {
    let mut config = wasmtime::Config::new();
    sigma_keys::engine::configure(&mut config);
    Ok(Engine::new(&config)?)
}

/// A store with a deadline far away: epoch interruption is on, as in the
/// host, and nothing ticks the epoch here.
fn new_store(engine: &Engine) -> Store<Ctx> {
    store_with(engine, Ctx::new())
}

fn store_with(engine: &Engine, ctx: Ctx) -> Store<Ctx> {
    let mut store = Store::new(engine, ctx);
    store.set_epoch_deadline(u64::MAX / 2);
    store
}

/// The embedded component instantiated for `call`, with this `wasi:config`,
/// and a key of acme's with `read`: the store, the exports and the raw key.
fn typed_sync(
    engine: &Engine,
    component: &Component,
    config: WasiConfigVariables,
) -> Result<(Store<Ctx>, Typed, String)> {
    let mut linker: Linker<Ctx> = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    wasmtime_wasi_config::add_to_linker(&mut linker, |c: &mut Ctx| WasiConfig::from(&c.config))?;
    // The `service` world's wasi:http, unused by typed calls, linked as the host links it.
    wasmtime_wasi_http::p2::add_only_http_to_linker_sync(&mut linker)?;
    Typed::add_to_linker::<Ctx, HasSelf<Ctx>>(&mut linker, |c| c)?;
    let mut store = store_with(engine, Ctx::with_config(config));
    let typed = Typed::instantiate(&mut store, component, &linker)?;
    let created = typed
        .sigma_api_keys_keys()
        .call_create(
            &mut store,
            "acme",
            "bench",
            &[keys::Permission::Read],
            None,
            &cli(),
        )?
        .map_err(|e| anyhow!("create: {}", e.message))?;
    Ok((store, typed, created.raw_key))
}

/// The upstream the `decide` figures forward to; nothing is sent to it.
const DECIDE_UPSTREAM: &str = "http://127.0.0.1:9/base";
/// The path the `decide` figures ask for, under the key's `read`.
pub const DECIDE_PATH: &str = "/api/v1/records?page=2";

/// A resource request's headers as an integration's HTTP client sends them:
/// its key and nine common headers, one of them a spoofed identity header
/// for the gateway to remove.
pub fn client_headers(raw_key: &str) -> Vec<(String, Vec<u8>)> {
    [
        ("host", "pim.example"),
        ("user-agent", "integration-client/2.3.1 (linux; rust)"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, deflate, br"),
        ("accept-language", "en-US,en;q=0.9"),
        ("x-request-id", "5f0c8a9e-3b1d-4c6e-9a2f-7d8e1b0c4a55"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("cache-control", "no-cache"),
        ("x-sigma-tenant", "globex"),
        ("x-sigma-apikey", raw_key),
    ]
    .iter()
    .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec()))
    .collect()
}

/// Which request the `decide` figures decide on.
#[derive(Clone, Copy, Debug)]
pub enum DecideRequest {
    /// [`DECIDE_PATH`] with [`client_headers`]: what an integration sends.
    Usual,
    /// `GET /api/v1/records` with only the key and `Host`: the request the
    /// `proxy_auth` section and `scripts/count-instructions.sh` send.
    KeyOnly,
}

impl DecideRequest {
    fn path(self) -> &'static str {
        match self {
            DecideRequest::Usual => DECIDE_PATH,
            DecideRequest::KeyOnly => "/api/v1/records",
        }
    }

    fn headers(self, raw_key: &str) -> Vec<(String, Vec<u8>)> {
        match self {
            DecideRequest::Usual => client_headers(raw_key),
            DecideRequest::KeyOnly => [("host", "127.0.0.1:8080"), ("x-sigma-apikey", raw_key)]
                .iter()
                .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec()))
                .collect(),
        }
    }
}

/// `headers` as the WIT `packed` record, as the host sends them.
fn packed(headers: &[(String, Vec<u8>)]) -> bindings::exports::sigma::api_keys::gateway::Packed {
    let (bytes, ends) = sigma_keys_guest::domain::headers::pack(
        headers
            .iter()
            .flat_map(|(name, value)| [name.as_bytes(), value.as_slice()]),
    );
    bindings::exports::sigma::api_keys::gateway::Packed { bytes, ends }
}

/// The embedded component on the minimal embedding, with a key, and a
/// request head for `gateway.decide` to forward.
struct DecideSetup {
    store: Store<Ctx>,
    typed: Typed,
    head: bindings::exports::sigma::api_keys::gateway::RequestHead,
}

impl DecideSetup {
    fn new(request: DecideRequest) -> Result<DecideSetup> {
        let config = WasiConfigVariables::from_iter([("upstream", DECIDE_UPSTREAM)]);
        let engine = engine()?;
        let component = Component::new(&engine, sigma_keys::runtime::COMPONENT)?;
        let (store, typed, raw_key) = typed_sync(&engine, &component, config)?;
        let head = bindings::exports::sigma::api_keys::gateway::RequestHead {
            method: "GET".into(),
            path_with_query: request.path().into(),
            headers: packed(&request.headers(&raw_key)),
            peer: Some("198.51.100.7".into()),
            tls: false,
        };
        Ok(DecideSetup { store, typed, head })
    }

    fn call(&mut self) -> Result<()> {
        use bindings::exports::sigma::api_keys::gateway::Decision;
        let decided = self
            .typed
            .sigma_api_keys_gateway()
            .call_decide(&mut self.store, &self.head)?;
        match decided.decision {
            Decision::Forward(_) => Ok(()),
            other => bail!("decide did not forward: {other:?}"),
        }
    }
}

/// Median ns per `gateway.decide` that forwards a request with
/// [`client_headers`], with `call`: what the component costs the gateway
/// for each request it lets through, the crossing both ways included.
pub fn decide(calls: usize, runs: usize) -> Result<f64> {
    let mut setup = DecideSetup::new(DecideRequest::Usual)?;
    crate::median_ns(runs, calls, || setup.call())
}

/// Makes `calls` decides in the component, then in the domain natively,
/// each loop in a function of its own, for instruction counts that machine
/// noise does not move: `valgrind --tool=callgrind sigma-keys-bench
/// decide-calls N`, then the inclusive counts of `component_decide_loop`
/// and `native_decide_loop` divided by N.
pub fn decide_calls(calls: usize, request: DecideRequest) -> Result<()> {
    let mut setup = DecideSetup::new(request)?;
    // Warm: the first call reads the settings and fills the guest's heap.
    setup.call()?;
    component_decide_loop(&mut setup, calls)?;
    let mut native = NativeDecide::new(request)?;
    native.call()?;
    native_decide_loop(&mut native, calls)
}

#[inline(never)]
fn component_decide_loop(setup: &mut DecideSetup, calls: usize) -> Result<()> {
    for _ in 0..calls {
        setup.call()?;
    }
    Ok(())
}

#[inline(never)]
fn native_decide_loop(native: &mut NativeDecide, calls: usize) -> Result<()> {
    for _ in 0..calls {
        native.call()?;
    }
    Ok(())
}

/// The domain's `api::decide` natively, over an in-memory store with a key.
struct NativeDecide {
    store: sigma_keys_guest::domain::memory::MemoryStore,
    settings: sigma_keys_guest::domain::api::Settings,
    headers: Vec<(String, Vec<u8>)>,
    path: &'static str,
}

impl NativeDecide {
    fn new(request: DecideRequest) -> Result<NativeDecide> {
        use sigma_keys_guest::domain::api::Settings;
        use sigma_keys_guest::domain::events::Actor;
        use sigma_keys_guest::domain::keys::{self as domain_keys, NewKey};
        use sigma_keys_guest::domain::permission::Permission;
        use sigma_keys_guest::domain::upstream::Upstream;

        let store = sigma_keys_guest::domain::memory::MemoryStore::default();
        let new = NewKey {
            name: "bench",
            permissions: &[Permission::Read],
            expires_at: None,
        };
        let (_, raw) = domain_keys::create(&store, "acme", &new, &Actor::cli(), 10)
            .map_err(|e| anyhow!("create: {}", e.message))?;
        let settings = Settings {
            upstream: Some(Upstream::parse(DECIDE_UPSTREAM).map_err(|e| anyhow!(e))?),
            ..Settings::default()
        };
        Ok(NativeDecide {
            store,
            settings,
            headers: request.headers(raw.expose()),
            path: request.path(),
        })
    }

    fn call(&mut self) -> Result<()> {
        use sigma_keys_guest::domain::api::{self, Caller, Decision, RequestHead};
        let headers = sigma_keys_guest::domain::headers::borrowed(&self.headers);
        let head = RequestHead {
            method: "GET",
            path_with_query: self.path,
            headers: &headers,
            peer: Some("198.51.100.7"),
            tls: false,
        };
        let mut caller = Caller::default();
        match std::hint::black_box(api::decide(&self.store, &self.settings, &head, &mut caller)) {
            Decision::Forward(_) => Ok(()),
            other => bail!("decide did not forward: {other:?}"),
        }
    }
}

/// Median ns per `api::decide` of the same request, natively: the domain
/// work the component's `decide` wraps.
pub fn native_decide(calls: usize, runs: usize) -> Result<f64> {
    let mut native = NativeDecide::new(DecideRequest::Usual)?;
    crate::median_ns(runs, calls, || native.call())
}

fn cli() -> keys::Actor {
    keys::Actor {
        via: keys::ActorVia::Cli,
        subject: None,
    }
}

fn check_route(answer: Result<keys::Permission, keys::Error>) -> Result<()> {
    match answer {
        Ok(keys::Permission::Read) => Ok(()),
        Ok(other) => bail!("required-permission answered {other:?}"),
        Err(e) => bail!("required-permission: {}", e.message),
    }
}

pub fn component(rt: &tokio::runtime::Runtime, calls: usize, runs: usize) -> Result<Figures> {
    let engine = engine()?;
    let component = Component::new(&engine, sigma_keys::runtime::COMPONENT)?;
    let (mut store, typed, raw_key) = typed_sync(&engine, &component, WasiConfigVariables::new())?;
    let auth = typed.sigma_api_keys_auth();
    let call_sync = crate::median_ns(runs, calls, || {
        check_route(auth.call_required_permission(&mut store, "GET", "/api/v1/records")?)
    })?;
    let verify_sync = crate::median_ns(runs, calls, || {
        auth.call_verify(&mut store, &raw_key, keys::Permission::Read)?
            .map_err(|e| anyhow!("verify: {}", e.message))?;
        Ok(())
    })?;

    let mut linker: Linker<Ctx> = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_config::add_to_linker(&mut linker, |c: &mut Ctx| WasiConfig::from(&c.config))?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    Typed::add_to_linker::<Ctx, HasSelf<Ctx>>(&mut linker, |c| c)?;
    let mut store = new_store(&engine);
    let actor = akeys::Actor {
        via: akeys::ActorVia::Cli,
        subject: None,
    };
    let (call_async, verify_async) = rt.block_on(async {
        let typed =
            async_bindings::Typed::instantiate_async(&mut store, &component, &linker).await?;
        let created = typed
            .sigma_api_keys_keys()
            .call_create(
                &mut store,
                "acme",
                "bench",
                &[akeys::Permission::Read],
                None,
                &actor,
            )
            .await?
            .map_err(|e| anyhow!("create: {}", e.message))?;
        let auth = typed.sigma_api_keys_auth();
        let call = crate::median_ns_async(runs, calls, async || {
            match auth
                .call_required_permission(&mut store, "GET", "/api/v1/records")
                .await?
            {
                Ok(akeys::Permission::Read) => Ok(()),
                Ok(other) => bail!("required-permission answered {other:?}"),
                Err(e) => bail!("required-permission: {}", e.message),
            }
        })
        .await?;
        let verify = crate::median_ns_async(runs, calls, async || {
            auth.call_verify(&mut store, &created.raw_key, akeys::Permission::Read)
                .await?
                .map_err(|e| anyhow!("verify: {}", e.message))?;
            Ok(())
        })
        .await?;
        anyhow::Ok((call, verify))
    })?;
    Ok(Figures {
        call_sync,
        call_async,
        verify_sync,
        verify_async,
    })
}

/// The in-wasm probe, instantiated for synchronous calls.
fn probe_sync(
    engine: &Engine,
    probe: &Path,
) -> Result<(Store<Ctx>, wasmtime::component::Instance)> {
    let component = Component::from_file(engine, probe)?;
    let mut linker: Linker<Ctx> = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    let mut store = new_store(engine);
    let instance = linker.instantiate(&mut store, &component)?;
    Ok((store, instance))
}

/// Median ns per `keys::verify` run as wasm inside the probe component
/// (bench/inwasm), compiled with the host's settings as the component is:
/// one call loops `calls` times, so the boundary is paid once.
pub fn wasm_verify(probe: &Path, calls: usize, runs: usize) -> Result<f64> {
    let (mut store, instance) = probe_sync(&engine()?, probe)?;
    let run = instance.get_typed_func::<(u32,), (u32,)>(&mut store, "run")?;
    let n = u32::try_from(calls)?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        let (ok,) = run.call(&mut store, (n,))?;
        times.push(start.elapsed().as_nanos() as f64 / calls as f64);
        if ok != n {
            bail!("the probe verified {ok} of {n} calls");
        }
    }
    Ok(crate::median(times))
}

/// Median ns per call of the in-wasm probe's `noop` export, which takes and
/// returns nothing: wasmtime's floor for a typed call, with `call` and with
/// `call_async`.
pub fn noop(
    rt: &tokio::runtime::Runtime,
    probe: &Path,
    calls: usize,
    runs: usize,
) -> Result<(f64, f64)> {
    let engine = engine()?;
    let (mut store, instance) = probe_sync(&engine, probe)?;
    let noop = instance.get_typed_func::<(), ()>(&mut store, "noop")?;
    let sync = crate::median_ns(runs, calls, || {
        noop.call(&mut store, ())?;
        Ok(())
    })?;

    let component = Component::from_file(&engine, probe)?;
    let mut linker: Linker<Ctx> = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    let mut store = new_store(&engine);
    let asynchronous = rt.block_on(async {
        let instance = linker.instantiate_async(&mut store, &component).await?;
        let noop = instance.get_typed_func::<(), ()>(&mut store, "noop")?;
        crate::median_ns_async(runs, calls, async || {
            noop.call_async(&mut store, ()).await?;
            Ok(())
        })
        .await
    })?;
    Ok((sync, asynchronous))
}
