//! The sigma-keys benchmark suite. Every comparison is a ratio against a
//! baseline measured in the same run, on the same machine, so drift between
//! runs cancels out. Writes `target/bench/report.json` and prints a table.
//!
//! `sigma-keys-bench [--quick] [--only SECTION]... --server PATH --wasmtime PATH --hello PATH --inwasm PATH`
//! (`sigma-keys-bench upstream` serves just the bench's upstream, for profiling by hand)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

// sigma-keys' own allocator (host/src/main.rs), for like-for-like baselines.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod boundary;
mod native_db;
mod servers;

/// One line of the report.
struct Measurement {
    name: String,
    value: f64,
    unit: &'static str,
    baseline: Option<String>,
    ratio: Option<f64>,
    note: String,
}

struct Report(Vec<Measurement>);

/// What a comparison should show.
#[derive(Clone, Copy)]
enum Target {
    AtMost(f64),
    AtLeast(f64),
    None,
}

impl Report {
    fn add(&mut self, name: &str, value: f64, unit: &'static str, note: &str) {
        println!("  {name}: {value:.2} {unit} {note}");
        self.0.push(Measurement {
            name: name.into(),
            value,
            unit,
            baseline: None,
            ratio: None,
            note: note.into(),
        });
    }

    /// A row saying whether an absolute target holds (1 met, 0 not).
    fn flag(&mut self, name: &str, met: bool, target: &str) {
        let note = format!("target {target}: {}", if met { "met" } else { "NOT met" });
        self.add(name, if met { 1.0 } else { 0.0 }, "bool", &note);
    }

    /// The value of a measurement already added.
    fn value(&self, name: &str) -> Option<f64> {
        self.0.iter().find(|m| m.name == name).map(|m| m.value)
    }

    /// A comparison row: `name` / `baseline` (both already added), and
    /// whether the target holds.
    /// A ratio computed elsewhere (per round, then the median), against `baseline`.
    fn ratio_row(&mut self, name: &str, value: f64, baseline: &str, note: &str) {
        println!("  {name} = {value:.3} {note}");
        self.0.push(Measurement {
            name: name.into(),
            value,
            unit: "ratio",
            baseline: Some(baseline.into()),
            ratio: Some(value),
            note: note.into(),
        });
    }

    fn compare(&mut self, name: &str, baseline: &str, target: Target) {
        let (Some(v), Some(b)) = (self.value(name), self.value(baseline)) else {
            return;
        };
        let ratio = v / b;
        let (goal, met) = match target {
            Target::AtMost(x) => (format!("target <= {x}"), ratio <= x),
            Target::AtLeast(x) => (format!("target >= {x}"), ratio >= x),
            Target::None => (String::new(), true),
        };
        let note = if goal.is_empty() {
            String::new()
        } else {
            format!("{goal}: {}", if met { "met" } else { "NOT met" })
        };
        println!("  {name} / {baseline} = {ratio:.3} {note}");
        self.0.push(Measurement {
            name: format!("{name} / {baseline}"),
            value: ratio,
            unit: "ratio",
            baseline: Some(baseline.into()),
            ratio: Some(ratio),
            note,
        });
    }

    fn json(&self) -> Value {
        Value::Array(
            self.0
                .iter()
                .map(|m| {
                    json!({"name": m.name, "value": m.value, "unit": m.unit,
                           "baseline": m.baseline, "ratio": m.ratio, "note": m.note})
                })
                .collect(),
        )
    }

    fn markdown(&self) -> String {
        let mut out = String::from(
            "| measurement | value | unit | baseline | ratio | note |\n| --- | ---: | --- | --- | ---: | --- |\n",
        );
        for m in &self.0 {
            out.push_str(&format!(
                "| {} | {:.2} | {} | {} | {} | {} |\n",
                m.name,
                m.value,
                m.unit,
                m.baseline.as_deref().unwrap_or(""),
                m.ratio.map(|r| format!("{r:.3}")).unwrap_or_default(),
                m.note
            ));
        }
        out
    }
}

struct Options {
    quick: bool,
    /// Sections to run; all when empty.
    only: Vec<String>,
    server: PathBuf,
    wasmtime: PathBuf,
    hello: PathBuf,
    inwasm: PathBuf,
    out: PathBuf,
}

fn options() -> Result<Options> {
    let mut args = std::env::args().skip(1);
    let mut o = Options {
        quick: false,
        only: Vec::new(),
        server: PathBuf::new(),
        wasmtime: PathBuf::new(),
        hello: PathBuf::new(),
        inwasm: PathBuf::new(),
        out: PathBuf::from("target/bench"),
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--only" => o.only.push(args.next().context("--only SECTION")?),
            "--server" => o.server = args.next().context("--server PATH")?.into(),
            "--wasmtime" => o.wasmtime = args.next().context("--wasmtime PATH")?.into(),
            "--hello" => o.hello = args.next().context("--hello PATH")?.into(),
            "--inwasm" => o.inwasm = args.next().context("--inwasm PATH")?.into(),
            "--out" => o.out = args.next().context("--out DIR")?.into(),
            other => bail!("unknown argument {other}"),
        }
    }
    for (p, what) in [
        (&o.server, "--server"),
        (&o.wasmtime, "--wasmtime"),
        (&o.hello, "--hello"),
        (&o.inwasm, "--inwasm"),
    ] {
        if !p.exists() {
            bail!("{what} {} does not exist", p.display());
        }
    }
    Ok(o)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The median over `runs` runs of the ns per call of `calls` calls to `f`.
fn median_ns(runs: usize, calls: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        for _ in 0..calls {
            f()?;
        }
        times.push(start.elapsed().as_nanos() as f64 / calls as f64);
    }
    Ok(median(times))
}

/// [`median_ns`] for calls that are awaited.
async fn median_ns_async(
    runs: usize,
    calls: usize,
    mut f: impl AsyncFnMut() -> Result<()>,
) -> Result<f64> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        for _ in 0..calls {
            f().await?;
        }
        times.push(start.elapsed().as_nanos() as f64 / calls as f64);
    }
    Ok(median(times))
}

fn main() -> Result<()> {
    match std::env::args().nth(1).as_deref() {
        // The bench's upstream as a process of its own (also for profiling by hand).
        Some("upstream") => {
            return tokio::runtime::Runtime::new()?.block_on(async {
                println!(
                    "upstream listening on http://{}",
                    servers::upstream().await?
                );
                std::future::pending::<Result<()>>().await
            });
        }
        // The plain proxy runs in a process of its own, as sigma-keys does:
        // sharing the upstream's threads would spare it the cross-process
        // scheduling that sigma-keys pays.
        Some("plain-proxy") => {
            let upstream: SocketAddr = std::env::args()
                .nth(2)
                .context("plain-proxy HOST:PORT")?
                .parse()?;
            return tokio::runtime::Runtime::new()?.block_on(async {
                println!(
                    "plain proxy listening on http://{}",
                    servers::plain_proxy(upstream).await?
                );
                std::future::pending::<Result<()>>().await
            });
        }
        // The same on sigma-keys' threads: the floor of this stack.
        Some("plain-proxy-per-core") => {
            let upstream: SocketAddr = std::env::args()
                .nth(2)
                .context("plain-proxy-per-core HOST:PORT")?
                .parse()?;
            return servers::plain_proxy_per_core(upstream);
        }
        // The key comes in the environment, not the command line.
        Some("native-gateway-per-core") => {
            let upstream: SocketAddr = std::env::args()
                .nth(2)
                .context("native-gateway-per-core HOST:PORT")?
                .parse()?;
            let raw = std::env::var(NATIVE_GATEWAY_KEY)
                .with_context(|| format!("native-gateway-per-core needs {NATIVE_GATEWAY_KEY}"))?;
            return servers::native_gateway_per_core(upstream, &raw);
        }
        // `gateway.decide` in a loop, for callgrind (see boundary::decide_calls);
        // `key-only` decides on the gateway sections' request instead.
        Some("decide-calls") => {
            let calls: usize = std::env::args()
                .nth(2)
                .context("decide-calls N [key-only]")?
                .parse()?;
            let request = match std::env::args().nth(3).as_deref() {
                None => boundary::DecideRequest::Usual,
                Some("key-only") => boundary::DecideRequest::KeyOnly,
                Some(other) => bail!("decide-calls N [key-only]: unknown request {other}"),
            };
            return boundary::decide_calls(calls, request);
        }
        _ => {}
    }
    let o = options()?;
    let runtime = tokio::runtime::Runtime::new()?;
    let mut report = Report(Vec::new());
    let runs = if o.quick { 1 } else { 3 };
    println!(
        "sigma-keys bench ({}; {runs} run(s) per point, median)",
        if o.quick { "quick" } else { "full" }
    );

    let run = |section: &str| {
        let wanted = o.only.is_empty() || o.only.iter().any(|s| s == section);
        if wanted {
            println!("{section}");
        }
        wanted
    };
    if run("verify_inprocess") {
        verify_inprocess(&runtime, &o, runs, &mut report)?;
    }
    if run("proxy_auth") {
        proxy_auth(&o, runs, &mut report)?;
    }
    if run("forward_auth") {
        forward_auth(&o, runs, &mut report)?;
    }
    if run("verify_http") {
        verify_http(&o, runs, &mut report)?;
    }
    if run("scaling") {
        scaling(&runtime, &o, &mut report)?;
    }
    if run("startup") {
        startup(&o, runs, &mut report)?;
    }
    if run("multi_node") {
        multi_node(&o, runs, &mut report)?;
    }

    std::fs::create_dir_all(&o.out)?;
    let path = o.out.join("report.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report.json())?)?;
    println!("\n{}", report.markdown());
    println!("wrote {}", path.display());
    Ok(())
}

// ---- 1. verify in process: component vs the same code natively ------------

fn verify_inprocess(
    rt: &tokio::runtime::Runtime,
    o: &Options,
    runs: usize,
    report: &mut Report,
) -> Result<()> {
    use sigma_keys_guest::domain::memory::MemoryStore;
    let calls = if o.quick { 2_000 } else { 50_000 };

    // Native: the guest's domain code compiled for this machine, over an
    // in-memory store, and over the same SQLite store the component uses (what
    // the store costs, apart from what the component boundary costs).
    let memory = MemoryStore::default();
    report.add(
        "verify_inprocess.native",
        native_verify_ns(&memory, calls, runs)?,
        "ns/call",
        "domain code, in-memory store",
    );
    let dir = tempfile::tempdir()?;
    let sqlite = native_db::NativeDb(sigma_keys::store::sqlite::Db::open(
        &dir.path().join("n.db"),
    )?);
    report.add(
        "verify_inprocess.native_sqlite",
        native_verify_ns(&sqlite, calls, runs)?,
        "ns/call",
        "domain code, the SQLite store",
    );

    // Component: auth.verify on one warm instance, SQLite store.
    let dir = tempfile::tempdir()?;
    let (verify, call) = rt.block_on(async {
        let service =
            sigma_keys::Service::open(&dir.path().join("k.db"), &sigma_keys::Settings::default())?;
        let created = service
            .create("acme", "bench", &[sigma_keys::Permission::Read])
            .await??;
        let mut session = service.session().await?;
        let verify = median_ns_async(runs, calls, async || {
            session
                .verify(&created.raw_key, sigma_keys::Permission::Read)
                .await??;
            Ok(())
        })
        .await?;
        let call = median_ns_async(runs, calls, async || {
            session
                .required_permission("GET", "/api/v1/records")
                .await??;
            Ok(())
        })
        .await?;
        anyhow::Ok((verify, call))
    })?;
    report.add(
        "verify_inprocess.component",
        verify,
        "ns/call",
        "warm instance, SQLite store",
    );
    // Where the component's time goes: one call that touches neither the
    // store nor a hash, through the component and natively.
    report.add(
        "verify_inprocess.component_call",
        call,
        "ns/call",
        "auth.required-permission on the warm instance: the cost of a call",
    );
    report.add(
        "verify_inprocess.native_call",
        native_call_ns(calls, runs)?,
        "ns/call",
        "the same required-permission, natively",
    );
    report.add(
        "verify_inprocess.wasm_memory",
        boundary::wasm_verify(&o.inwasm, calls, runs)?,
        "ns/call",
        "the same domain verify and in-memory store compiled to wasm, looped inside one call",
    );
    // What the boundary costs on a minimal embedding of the same component,
    // with `call` and with `call_async`, and wasmtime's floor for a call.
    let bare = boundary::component(rt, calls, runs)?;
    for (name, value, what) in [
        (
            "bare_call_async",
            bare.call_async,
            "required-permission, minimal embedding, call_async",
        ),
        (
            "bare_call_sync",
            bare.call_sync,
            "the same, call (no fiber)",
        ),
        (
            "bare_verify_async",
            bare.verify_async,
            "verify over a map in the host, call_async",
        ),
        (
            "bare_verify_sync",
            bare.verify_sync,
            "the same, call (no fiber)",
        ),
    ] {
        report.add(&format!("verify_inprocess.{name}"), value, "ns/call", what);
    }
    // The gateway's own call: a forwarded request with a client's usual headers.
    report.add(
        "verify_inprocess.bare_decide_sync",
        boundary::decide(calls, runs)?,
        "ns/call",
        "gateway.decide forwarding a request with 10 headers, minimal embedding, call",
    );
    report.add(
        "verify_inprocess.native_decide",
        boundary::native_decide(calls, runs)?,
        "ns/call",
        "the same decide, natively",
    );
    let (noop_sync, noop_async) = boundary::noop(rt, &o.inwasm, calls, runs)?;
    report.add(
        "verify_inprocess.noop_call_sync",
        noop_sync,
        "ns/call",
        "an export that takes and returns nothing, call",
    );
    report.add(
        "verify_inprocess.noop_call_async",
        noop_async,
        "ns/call",
        "the same, call_async",
    );
    report.compare(
        "verify_inprocess.component",
        "verify_inprocess.native",
        Target::AtMost(2.0),
    );
    report.compare(
        "verify_inprocess.component",
        "verify_inprocess.native_sqlite",
        Target::None,
    );
    report.compare(
        "verify_inprocess.component_call",
        "verify_inprocess.native_call",
        Target::None,
    );
    report.compare(
        "verify_inprocess.wasm_memory",
        "verify_inprocess.native",
        Target::None,
    );
    // Issue #11's goal: the boundary and the store import at most a quarter
    // of the work itself.
    report.compare(
        "verify_inprocess.component",
        "verify_inprocess.wasm_memory",
        Target::AtMost(1.25),
    );
    // What a synchronous call path would buy, and what is left without it.
    for (name, baseline) in [
        ("bare_call_async", "bare_call_sync"),
        ("noop_call_async", "noop_call_sync"),
        ("bare_verify_async", "bare_verify_sync"),
        ("bare_call_sync", "noop_call_sync"),
        ("bare_verify_sync", "wasm_memory"),
        ("bare_decide_sync", "native_decide"),
    ] {
        report.compare(
            &format!("verify_inprocess.{name}"),
            &format!("verify_inprocess.{baseline}"),
            Target::None,
        );
    }
    Ok(())
}

/// Median ns per `keys::required_permission`, natively.
fn native_call_ns(calls: usize, runs: usize) -> Result<f64> {
    use sigma_keys_guest::domain::keys;
    median_ns(runs, calls, || {
        std::hint::black_box(
            keys::required_permission(
                std::hint::black_box("GET"),
                std::hint::black_box("/api/v1/records"),
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?,
        );
        Ok(())
    })
}

/// Median ns per `keys::verify` of one key, natively, over `store`.
fn native_verify_ns(
    store: &dyn sigma_keys_guest::domain::keys::KeyStore,
    calls: usize,
    runs: usize,
) -> Result<f64> {
    use sigma_keys_guest::domain::{keys, permission::Permission as P};
    let new = keys::NewKey {
        name: "bench",
        permissions: &[P::Read],
        expires_at: None,
    };
    let actor = sigma_keys_guest::domain::events::Actor::cli();
    let (_, raw) =
        keys::create(store, "acme", &new, &actor, 1).map_err(|e| anyhow::anyhow!("{e}"))?;
    median_ns(runs, calls, || {
        keys::verify(store, raw.expose(), P::Read).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(())
    })
}

// ---- load generation ----------------------------------------------------

/// What one wrk run measured.
#[derive(Clone)]
struct Load {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Requests wrk completed.
    requests: f64,
    /// The server process's CPU time (user + system) per request, in µs,
    /// when it was measured.
    cpu_us: Option<f64>,
}

fn wrk(
    url: &str,
    connections: usize,
    secs: u64,
    headers: &[&str],
    script: Option<&Path>,
    expect_2xx: bool,
) -> Result<Load> {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t",
        "2",
        "-c",
        &connections.to_string(),
        "-d",
        &format!("{secs}s"),
        "--latency",
    ]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    if let Some(s) = script {
        cmd.arg("-s").arg(s);
    }
    let out = cmd
        .arg(url)
        .output()
        .context("running wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk output:\n{text}"))?;
    let latency = |pct: &str| -> Result<f64> {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(pct))
            .with_context(|| format!("no {pct} latency in wrk output"))?;
        parse_duration_ms(line.split_whitespace().nth(1).unwrap_or(""))
    };
    if expect_2xx && text.contains("Non-2xx or 3xx responses") {
        bail!("wrk saw error responses from {url}:\n{text}");
    }
    // "  175432 requests in 5.00s, 12.30MB read"
    let requests = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no request count in wrk output:\n{text}"))?;
    Ok(Load {
        rps,
        p50_ms: latency("50%")?,
        p99_ms: latency("99%")?,
        requests,
        cpu_us: None,
    })
}

/// The CPU time (user + system) a process has used so far, in µs, from
/// `/proc/PID/stat` (in clock ticks, `getconf CLK_TCK` per second).
fn cpu_us(pid: u32) -> Result<f64> {
    static TICK_US: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let tick_us = *TICK_US.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|t| t.trim().parse::<f64>().ok())
            .map_or(10_000.0, |hz| 1e6 / hz)
    });
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    let ticks = |i: usize| -> Result<f64> {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .with_context(|| format!("no field {i} in /proc/{pid}/stat"))
    };
    Ok((ticks(11)? + ticks(12)?) * tick_us)
}

fn parse_duration_ms(s: &str) -> Result<f64> {
    let (num, factor) = if let Some(v) = s.strip_suffix("us") {
        (v, 0.001)
    } else if let Some(v) = s.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1000.0)
    } else {
        bail!("bad wrk duration {s:?}")
    };
    Ok(num.parse::<f64>()? * factor)
}

fn load(
    url: &str,
    connections: usize,
    secs: u64,
    headers: &[&str],
    script: Option<&Path>,
    runs: usize,
) -> Result<Load> {
    load_expecting(url, connections, secs, headers, script, runs, true)
}

/// [`load`], where `expect_2xx` false allows error statuses (an intended 404).
fn load_expecting(
    url: &str,
    connections: usize,
    secs: u64,
    headers: &[&str],
    script: Option<&Path>,
    runs: usize,
    expect_2xx: bool,
) -> Result<Load> {
    // Warm-up, then the median of several runs.
    wrk(url, connections, 1, headers, script, expect_2xx)?;
    let mut all = Vec::new();
    for _ in 0..runs {
        all.push(wrk(url, connections, secs, headers, script, expect_2xx)?);
    }
    Ok(Load {
        rps: median(all.iter().map(|l| l.rps).collect()),
        p50_ms: median(all.iter().map(|l| l.p50_ms).collect()),
        p99_ms: median(all.iter().map(|l| l.p99_ms).collect()),
        requests: all.iter().map(|l| l.requests).sum(),
        cpu_us: None,
    })
}

fn add_load(report: &mut Report, name: &str, l: &Load, note: &str) {
    report.add(&format!("{name}.rps"), l.rps, "req/s", note);
    report.add(&format!("{name}.p50"), l.p50_ms, "ms", note);
    report.add(&format!("{name}.p99"), l.p99_ms, "ms", note);
}

// ---- the real server ----------------------------------------------------

/// A `sigma-keys serve` child process.
struct Serve {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(bin: &Path, db: &Path, extra: &[&str], cache: Option<&Path>) -> Result<Serve> {
    let mut cmd = Command::new(bin);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--db"])
        .arg(db)
        .args(extra)
        .env("SIGMA_KEYS_LOG", "warn")
        .env_remove("SIGMA_JWT_SECRET")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(c) = cache {
        cmd.env("XDG_CACHE_HOME", c);
    }
    child(&mut cmd)
}

/// Starts a server process that prints `... listening on http://ADDR`.
fn child(cmd: &mut Command) -> Result<Serve> {
    let mut child = cmd.stdout(Stdio::piped()).spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some((_, rest)) = line.split_once(" listening on http://") {
                    break rest.trim().parse()?;
                }
            }
            _ => bail!("{cmd:?} did not start"),
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Ok(Serve { child, addr })
}

fn token(bin: &Path, db: &Path) -> Result<String> {
    let out = Command::new(bin)
        .args(["token", "--tenant", "bench", "--ttl", "2h", "--db"])
        .arg(db)
        .output()?;
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// One HTTP/1.1 request on its own connection; (status, body).
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .context("status")?;
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

fn create_key(addr: SocketAddr, bearer: &str) -> Result<String> {
    let auth = format!("Bearer {bearer}");
    let (status, body) = http(
        addr,
        "POST",
        "/api/v1/api-keys",
        &[("Authorization", &auth)],
        r#"{"name":"bench","permissions":["read"]}"#,
    )?;
    if status != 201 {
        bail!("create failed: {status} {body}");
    }
    let v: Value = serde_json::from_str(&body)?;
    Ok(v["rawKey"].as_str().context("rawKey")?.to_owned())
}

fn lua_post(dir: &Path, name: &str, body: &str, headers: &[(&str, &str)]) -> Result<PathBuf> {
    let mut script = format!(
        "wrk.method = \"POST\"\nwrk.body = {}\n",
        serde_json::to_string(body)?
    );
    for (n, v) in headers {
        script.push_str(&format!(
            "wrk.headers[\"{n}\"] = {}\n",
            serde_json::to_string(v)?
        ));
    }
    let path = dir.join(name);
    std::fs::write(&path, script)?;
    Ok(path)
}

// ---- 2. proxying with authentication ------------------------------------

/// The variable that hands the native gateway baseline its raw key.
const NATIVE_GATEWAY_KEY: &str = "SIGMA_KEYS_BENCH_RAW_KEY";

fn proxy_auth(o: &Options, runs: usize, report: &mut Report) -> Result<()> {
    let secs = if o.quick { 2 } else { 5 };
    // Every server is a process of its own, so none shares threads with
    // another (or with this process) and each pays the same scheduling.
    let upstream_server = child(Command::new(std::env::current_exe()?).arg("upstream"))?;
    let upstream = upstream_server.addr;
    let plain_proxy =
        child(Command::new(std::env::current_exe()?).args(["plain-proxy", &upstream.to_string()]))?;
    let plain = plain_proxy.addr;
    let per_core_proxy = child(
        Command::new(std::env::current_exe()?)
            .args(["plain-proxy-per-core", &upstream.to_string()]),
    )?;
    let per_core = per_core_proxy.addr;
    let nginx = servers::Nginx::start(upstream)?;
    let Gateway {
        dir: _dir,
        db,
        up,
        sigma,
        key,
    } = Gateway::start(o, upstream)?;
    // The same key checked by the domain compiled natively, in the host.
    let native_gateway = child(
        Command::new(std::env::current_exe()?)
            .args(["native-gateway-per-core", &upstream.to_string()])
            .env(
                NATIVE_GATEWAY_KEY,
                key.strip_prefix("X-Sigma-ApiKey: ").unwrap_or(&key),
            ),
    )?;
    // The same database and key, with metrics recorded (`--admin-listen`).
    let metered = serve(
        &o.server,
        &db,
        &["--upstream", &up, "--admin-listen", "127.0.0.1:0"],
        None,
    )?;

    // (name, URL, headers, whether only 2xx counts, note). The last one is the
    // same server, key and authentication on a path that is no resource (a
    // 404 from the component): everything but the forwarding leg.
    let cases: [LoadCase<'_>; 8] = [
        (
            "proxy_auth.upstream_direct",
            format!("http://{upstream}/api/v1/records"),
            &[][..],
            true,
            "the limit: no proxy",
        ),
        (
            "proxy_auth.plain_proxy",
            format!("http://{plain}/api/v1/records"),
            &[][..],
            true,
            "native hyper proxy, no auth",
        ),
        (
            "proxy_auth.plain_proxy_per_core",
            format!("http://{per_core}/api/v1/records"),
            &[][..],
            true,
            "the same on sigma-keys' threads (one single-threaded runtime and upstream pool per core), no auth",
        ),
        (
            "proxy_auth.nginx",
            format!("http://{}/api/v1/records", nginx.addr),
            &[][..],
            true,
            "nginx (Debian) proxy_pass with upstream keep-alive, 2 workers, no auth",
        ),
        (
            "proxy_auth.native_gateway_per_core",
            format!("http://{}/api/v1/records", native_gateway.addr),
            &[key.as_str()][..],
            true,
            "the per-core proxy checking the same key with the domain's decide compiled natively (no component, in-memory store): the floor of any design of this check on this stack",
        ),
        (
            "proxy_auth.sigma_keys",
            format!("http://{}/api/v1/records", sigma.addr),
            &[key.as_str()][..],
            true,
            "sigma-keys serve --upstream, valid key",
        ),
        (
            "proxy_auth.sigma_keys_metrics",
            format!("http://{}/api/v1/records", metered.addr),
            &[key.as_str()][..],
            true,
            "the same with --admin-listen: every request recorded in the metrics",
        ),
        (
            "proxy_auth.sigma_keys_no_forward",
            format!("http://{}/api/v1/widgets", sigma.addr),
            &[key.as_str()][..],
            false,
            "same key on an unknown path: authentication, route, 404; no forwarding",
        ),
    ];
    let index = |name: &str| cases.iter().position(|c| c.0 == name);
    // The processes whose CPU per request is measured, by case.
    let pids: Vec<Option<u32>> = cases
        .iter()
        .map(|(name, ..)| match *name {
            "proxy_auth.plain_proxy" => Some(plain_proxy.child.id()),
            "proxy_auth.plain_proxy_per_core" => Some(per_core_proxy.child.id()),
            "proxy_auth.native_gateway_per_core" => Some(native_gateway.child.id()),
            "proxy_auth.sigma_keys" | "proxy_auth.sigma_keys_no_forward" => Some(sigma.child.id()),
            _ => None,
        })
        .collect();
    let rounds = interleaved(report, &cases, &pids, runs, secs)?;
    let (
        Some(sigma_i),
        Some(plain_i),
        Some(nginx_i),
        Some(bare_i),
        Some(direct_i),
        Some(metered_i),
        Some(per_core_i),
        Some(native_i),
    ) = (
        index("proxy_auth.sigma_keys"),
        index("proxy_auth.plain_proxy"),
        index("proxy_auth.nginx"),
        index("proxy_auth.sigma_keys_no_forward"),
        index("proxy_auth.upstream_direct"),
        index("proxy_auth.sigma_keys_metrics"),
        index("proxy_auth.plain_proxy_per_core"),
        index("proxy_auth.native_gateway_per_core"),
    )
    else {
        bail!("a proxy_auth case is missing");
    };
    // What recording metrics costs, within each round.
    ratio_within_rounds(report, &cases, &rounds, (metered_i, sigma_i), runs, None);
    // What forwarding adds to checking, against what the plain proxy spends
    // on forwarding alone, in CPU per request, within each round.
    let extra: Vec<f64> = (0..runs)
        .filter_map(|r| {
            let cpu = |i: usize| rounds[i].get(r).and_then(|l| l.cpu_us);
            Some(cpu(sigma_i)? - cpu(bare_i)? - cpu(plain_i)?)
        })
        .collect();
    if !extra.is_empty() {
        let value = median(extra.clone());
        report.add(
            "proxy_auth.forwarding_cpu_over_plain_proxy",
            value,
            "µs",
            &format!(
                "(sigma_keys - sigma_keys_no_forward) - plain_proxy, CPU per request; target <= 3: {}; {}",
                if value <= 3.0 { "met" } else { "NOT met" },
                spread(&extra, runs)
            ),
        );
    }
    // Each ratio is taken within a round (both sides measured minutes
    // apart at most), then the median of the rounds.
    for (baseline, target) in [
        (bare_i, None),
        (plain_i, Some(0.85)),
        (nginx_i, Some(0.75)),
        (direct_i, None),
        (per_core_i, None),
        (native_i, None),
    ] {
        ratio_within_rounds(report, &cases, &rounds, (sigma_i, baseline), runs, target);
    }
    // The floor of this stack: a hyper forwarder on sigma-keys' threads that
    // checks nothing, against nginx.
    ratio_within_rounds(report, &cases, &rounds, (per_core_i, nginx_i), runs, None);
    // The floor of any design of the check on this stack: the domain's
    // decide run natively in that forwarder, against nginx and against it.
    ratio_within_rounds(report, &cases, &rounds, (native_i, nginx_i), runs, None);
    ratio_within_rounds(report, &cases, &rounds, (native_i, per_core_i), runs, None);
    let p99 = report
        .value("proxy_auth.sigma_keys.p99")
        .context("proxy_auth.sigma_keys.p99 was not measured")?;
    report.flag(
        "proxy_auth.sigma_keys.p99_under_3ms",
        p99 < 3.0,
        "p99 < 3 ms at 64 connections",
    );
    drop(nginx);
    Ok(())
}

/// A load case: name, URL, headers, whether only 2xx counts, note.
type LoadCase<'a> = (&'a str, String, &'a [&'a str], bool, &'a str);

/// Measures every case `runs` times, interleaved: each round measures every
/// case once, so a slow moment of this shared machine lands on all of them
/// rather than on one. Reports each case's medians and spread; returns every
/// round's loads, by case.
///
/// `pids` names, by case, a server process whose CPU time per request is
/// measured too (`None`, or a shorter list: not measured).
fn interleaved(
    report: &mut Report,
    cases: &[LoadCase<'_>],
    pids: &[Option<u32>],
    runs: usize,
    secs: u64,
) -> Result<Vec<Vec<Load>>> {
    for (_, url, headers, expect_2xx, _) in cases {
        wrk(url, 64, 1, headers, None, *expect_2xx)?;
    }
    let mut rounds: Vec<Vec<Load>> = vec![Vec::new(); cases.len()];
    for _ in 0..runs {
        for (i, (_, url, headers, expect_2xx, _)) in cases.iter().enumerate() {
            let pid = pids.get(i).copied().flatten();
            let before = pid.map(cpu_us).transpose()?;
            let mut load = wrk(url, 64, secs, headers, None, *expect_2xx)?;
            if let (Some(pid), Some(before)) = (pid, before) {
                load.cpu_us = Some((cpu_us(pid)? - before) / load.requests.max(1.0));
            }
            rounds[i].push(load);
        }
    }
    for ((name, _, _, _, note), loads) in cases.iter().zip(&rounds) {
        let rps: Vec<f64> = loads.iter().map(|l| l.rps).collect();
        let note = format!("{note}; {}", spread(&rps, runs));
        add_load(
            report,
            name,
            &Load {
                rps: median(rps),
                p50_ms: median(loads.iter().map(|l| l.p50_ms).collect()),
                p99_ms: median(loads.iter().map(|l| l.p99_ms).collect()),
                requests: loads.iter().map(|l| l.requests).sum(),
                cpu_us: None,
            },
            &note,
        );
        let cpu: Vec<f64> = loads.iter().filter_map(|l| l.cpu_us).collect();
        if !cpu.is_empty() {
            let note = format!(
                "server CPU (user + system) per request; {}",
                spread(&cpu, runs)
            );
            report.add(&format!("{name}.cpu_per_request"), median(cpu), "µs", &note);
        }
    }
    Ok(rounds)
}

/// The row `cases[a].rps / cases[b].rps`: each ratio taken within a round
/// (both sides measured seconds apart), then the median of the rounds.
fn ratio_within_rounds(
    report: &mut Report,
    cases: &[LoadCase<'_>],
    rounds: &[Vec<Load>],
    (a, b): (usize, usize),
    runs: usize,
    target: Option<f64>,
) {
    let ratios: Vec<f64> = rounds[a]
        .iter()
        .zip(&rounds[b])
        .map(|(x, y)| x.rps / y.rps)
        .collect();
    let value = median(ratios.clone());
    let base_name = format!("{}.rps", cases[b].0);
    let mut note = spread(&ratios, runs);
    if let Some(t) = target {
        note = format!(
            "target >= {t}: {}; {note}",
            if value >= t { "met" } else { "NOT met" }
        );
    }
    report.ratio_row(
        &format!("{}.rps / {base_name}", cases[a].0),
        value,
        &base_name,
        &note,
    );
}

/// sigma-keys forwarding to `upstream`, on a fresh database with one key.
struct Gateway {
    dir: tempfile::TempDir,
    db: PathBuf,
    /// The `--upstream` URL.
    up: String,
    sigma: Serve,
    /// The key's header line, for wrk.
    key: String,
}

impl Gateway {
    fn start(o: &Options, upstream: SocketAddr) -> Result<Gateway> {
        let dir = tempfile::tempdir()?;
        let db = dir.path().join("k.db");
        let up = format!("http://{upstream}");
        let sigma = serve(&o.server, &db, &["--upstream", &up], None)?;
        let raw = create_key(sigma.addr, &token(&o.server, &db)?)?;
        Ok(Gateway {
            dir,
            db,
            up,
            sigma,
            key: format!("X-Sigma-ApiKey: {raw}"),
        })
    }
}

// ---- 2b. nginx asking sigma-keys (auth_request) -------------------------

/// nginx with `auth_request` to sigma-keys (the documented config) against
/// nginx proxying alone, beside sigma-keys' own gateway, interleaved.
fn forward_auth(o: &Options, runs: usize, report: &mut Report) -> Result<()> {
    let secs = if o.quick { 2 } else { 5 };
    let upstream_server = child(Command::new(std::env::current_exe()?).arg("upstream"))?;
    let upstream = upstream_server.addr;
    let Gateway {
        dir: _dir,
        sigma,
        key,
        ..
    } = Gateway::start(o, upstream)?;
    let nginx = servers::Nginx::start(upstream)?;
    let asking = servers::Nginx::with_auth_request(upstream, sigma.addr)?;
    let cases: [LoadCase<'_>; 3] = [
        (
            "forward_auth.nginx",
            format!("http://{}/api/v1/records", nginx.addr),
            &[][..],
            true,
            "nginx (Debian) proxy_pass with upstream keep-alive, 2 workers, no auth",
        ),
        (
            "forward_auth.nginx_auth_request",
            format!("http://{}/api/v1/records", asking.addr),
            &[key.as_str()][..],
            true,
            "the same nginx asking sigma-keys with auth_request (docs/proxies.md's config), valid key",
        ),
        (
            "forward_auth.sigma_keys",
            format!("http://{}/api/v1/records", sigma.addr),
            &[key.as_str()][..],
            true,
            "sigma-keys' own gateway, same key and upstream",
        ),
    ];
    let rounds = interleaved(report, &cases, &[], runs, secs)?;
    ratio_within_rounds(report, &cases, &rounds, (1, 0), runs, None);
    ratio_within_rounds(report, &cases, &rounds, (2, 0), runs, None);
    drop((nginx, asking));
    Ok(())
}

/// "median of N interleaved runs, min–max A–B", for a note.
fn spread(values: &[f64], runs: usize) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let show = |v: f64| {
        if v.abs() < 10.0 {
            format!("{v:.3}")
        } else {
            format!("{v:.0}")
        }
    };
    format!(
        "median of {runs} interleaved run(s), min {} max {}",
        show(min),
        show(max)
    )
}

// ---- 3. the verify endpoint vs a stock runtime's hello world ------------

fn verify_http(o: &Options, runs: usize, report: &mut Report) -> Result<()> {
    let secs = if o.quick { 2 } else { 5 };
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("k.db");
    let sigma = serve(&o.server, &db, &[], None)?;
    let raw = create_key(sigma.addr, &token(&o.server, &db)?)?;
    let body = json!({"key": raw, "permission": "read"}).to_string();
    let script = lua_post(
        dir.path(),
        "verify.lua",
        &body,
        &[("Content-Type", "application/json")],
    )?;

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut hello = Command::new(&o.wasmtime)
        .args(["serve", "--addr", &format!("127.0.0.1:{port}")])
        .arg(&o.hello)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let started = Instant::now();
    while TcpStream::connect(addr).is_err() {
        if started.elapsed() > Duration::from_secs(60) {
            bail!("wasmtime serve did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let stock = load(&format!("http://{addr}/"), 64, secs, &[], None, runs);
    let _ = hello.kill();
    let _ = hello.wait();
    add_load(
        report,
        "verify_http.wasmtime_serve_hello",
        &stock?,
        "stock wasmtime serve, hello world",
    );
    let ours = load(
        &format!("http://{}/api/v1/api-keys/verify", sigma.addr),
        64,
        secs,
        &[],
        Some(&script),
        runs,
    )?;
    add_load(
        report,
        "verify_http.sigma_keys",
        &ours,
        "POST /api/v1/api-keys/verify",
    );
    report.compare(
        "verify_http.sigma_keys.rps",
        "verify_http.wasmtime_serve_hello.rps",
        Target::AtLeast(1.5),
    );
    Ok(())
}

// ---- 4. scaling with the number of keys ---------------------------------

/// Fills a fresh database with `n` random keys (hashes only) in one transaction.
fn fill(db: &Path, n: usize) -> Result<()> {
    drop(sigma_keys::store::sqlite::Db::open(db)?); // creates the schema
    let mut conn = rusqlite::Connection::open(db)?;
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare(
            "INSERT INTO api_keys (id, tenant, name, key_hash, permissions, created_at) VALUES (?1, ?2, 'filler', ?3, 'read', ?4)",
        )?;
        let mut hash = [0u8; 32];
        for i in 0..n {
            rand_core::TryRngCore::try_fill_bytes(&mut rand_core::OsRng, &mut hash)?;
            stmt.execute(rusqlite::params![
                format!("apikey-fill{i:016}"),
                format!("t{}", i % 1000),
                &hash[..],
                i as i64
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

fn db_bytes(db: &Path) -> u64 {
    let mut total = 0;
    for suffix in ["", "-wal", "-shm"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        total += std::fs::metadata(PathBuf::from(p))
            .map(|m| m.len())
            .unwrap_or(0);
    }
    total
}

fn rss_kib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmRSS:")
                    .map(|v| v.trim().trim_end_matches(" kB").trim().to_owned())
            })
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn scaling(_rt: &tokio::runtime::Runtime, o: &Options, report: &mut Report) -> Result<()> {
    let sizes: &[usize] = if o.quick {
        &[1_000, 10_000]
    } else {
        &[1_000, 100_000, 1_000_000]
    };
    let secs = if o.quick { 2 } else { 4 };
    let mut first = None;
    for &n in sizes {
        let dir = tempfile::tempdir()?;
        let db = dir.path().join("k.db");
        fill(&db, n)?;
        let sigma = serve(&o.server, &db, &[], None)?;
        let raw = create_key(sigma.addr, &token(&o.server, &db)?)?;
        let body = json!({"key": raw, "permission": "read"}).to_string();
        let script = lua_post(dir.path(), "verify.lua", &body, &[])?;
        let l = load(
            &format!("http://{}/api/v1/api-keys/verify", sigma.addr),
            8,
            secs,
            &[],
            Some(&script),
            1,
        )?;
        let name = format!("scaling.verify_p50.keys_{n}");
        report.add(&name, l.p50_ms, "ms", "POST verify, 8 connections");
        match &first {
            None => first = Some(name),
            Some(base) => report.compare(&name, &base.clone(), Target::AtMost(1.5)),
        }
        report.add(
            &format!("scaling.db_bytes_per_key.keys_{n}"),
            db_bytes(&db) as f64 / n as f64,
            "bytes",
            "database + WAL",
        );
        if Some(&n) == sizes.last() {
            report.add(
                &format!("scaling.server_rss.keys_{n}"),
                rss_kib(sigma.child.id()) / 1024.0,
                "MiB",
                "after the verify load",
            );
        }
    }

    // Durable key creation: every 201 is on disk (synchronous=FULL).
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("k.db");
    // One tenant creates keys for the whole run: lift the per-tenant limit.
    let sigma = serve(
        &o.server,
        &db,
        &["--max-keys-per-tenant", "4000000000"],
        None,
    )?;
    let bearer = format!("Bearer {}", token(&o.server, &db)?);
    let script = lua_post(
        dir.path(),
        "create.lua",
        r#"{"name":"bench","permissions":["read"]}"#,
        &[("Authorization", &bearer)],
    )?;
    let l = wrk(
        &format!("http://{}/api/v1/api-keys", sigma.addr),
        8,
        secs,
        &[],
        Some(&script),
        true,
    )?;
    report.add(
        "scaling.create_durable",
        l.rps,
        "keys/s",
        "POST /api-keys, 8 connections, fsync per key",
    );
    Ok(())
}

// ---- 5. start-up ----------------------------------------------------------

fn startup(o: &Options, runs: usize, report: &mut Report) -> Result<()> {
    let mut cold = Vec::new();
    let mut cached = Vec::new();
    for _ in 0..runs {
        let cache = tempfile::tempdir()?;
        for (i, list) in [&mut cold, &mut cached].into_iter().enumerate() {
            let dir = tempfile::tempdir()?;
            let db = dir.path().join("k.db");
            let start = Instant::now();
            let s = serve(&o.server, &db, &[], Some(cache.path()))?;
            loop {
                if let Ok((200, _)) = http(
                    s.addr,
                    "POST",
                    "/api/v1/api-keys/verify",
                    &[],
                    r#"{"key":"x","permission":"read"}"#,
                ) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            list.push(start.elapsed().as_secs_f64() * 1000.0);
            if i == 0 {
                // wasmtime writes its cache in the background.
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
    report.add(
        "startup.cold",
        median(cold),
        "ms",
        "process start to first 200, empty compilation cache",
    );
    report.add(
        "startup.cached",
        median(cached),
        "ms",
        "process start to first 200, cached compilation",
    );
    report.compare("startup.cached", "startup.cold", Target::None);
    let cached_ms = report.value("startup.cached").unwrap_or(f64::MAX);
    report.flag(
        "startup.cached_under_300ms",
        cached_ms < 300.0,
        &format!("cached start < 300 ms ({cached_ms:.0} ms)"),
    );
    // The component is compiled when the binary is built: an empty cache
    // must not mean compiling at start.
    let cold_ms = report.value("startup.cold").unwrap_or(f64::MAX);
    report.flag(
        "startup.cold_under_100ms",
        cold_ms < 100.0,
        &format!("cold start < 100 ms ({cold_ms:.0} ms)"),
    );
    Ok(())
}

// ---- 6. several nodes on PostgreSQL ---------------------------------------

#[allow(clippy::all, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#[path = "../../tests/pg_cluster.rs"]
mod pg_cluster;

/// The shared JWT secret of the nodes on PostgreSQL.
const NODE_SECRET: &str = "bench-shared-secret-for-every-node-0123456789";

fn serve_on(bin: &Path, db: &str, extra: &[&str]) -> Result<Serve> {
    let mut cmd = Command::new(bin);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--db", db])
        .args(extra)
        .env("SIGMA_KEYS_LOG", "warn")
        .env("SIGMA_JWT_SECRET", NODE_SECRET)
        .stderr(Stdio::null());
    child(&mut cmd)
}

fn token_on(bin: &Path, db: &str) -> Result<String> {
    let out = Command::new(bin)
        .args(["token", "--tenant", "bench", "--ttl", "2h", "--db", db])
        .env("SIGMA_JWT_SECRET", NODE_SECRET)
        .output()?;
    if !out.status.success() {
        bail!("token failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

fn verify_valid(addr: SocketAddr, raw: &str) -> Result<bool> {
    let body = json!({"key": raw, "permission": "read"}).to_string();
    let (status, text) = http(addr, "POST", "/api/v1/api-keys/verify", &[], &body)?;
    if status != 200 {
        bail!("verify answered {status}: {text}");
    }
    Ok(serde_json::from_str::<Value>(&text)?["valid"] == true)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Three nodes on one throwaway PostgreSQL: how fast a deactivation on one
/// reaches the others, and what PostgreSQL costs against SQLite on the hot
/// paths (cache hits both).
fn multi_node(o: &Options, runs: usize, report: &mut Report) -> Result<()> {
    let secs = if o.quick { 2 } else { 5 };
    let revocations = if o.quick { 20 } else { 200 };
    let cluster = pg_cluster::PgCluster::start();
    let url = cluster.new_database();
    let upstream_server = child(Command::new(std::env::current_exe()?).arg("upstream"))?;
    let up = format!("http://{}", upstream_server.addr);
    let plain_proxy = child(
        Command::new(std::env::current_exe()?)
            .args(["plain-proxy", &upstream_server.addr.to_string()]),
    )?;
    let nodes = [
        serve_on(&o.server, &url, &["--upstream", &up])?,
        serve_on(&o.server, &url, &["--upstream", &up])?,
        serve_on(&o.server, &url, &["--upstream", &up])?,
    ];
    let bearer = token_on(&o.server, &url)?;
    let auth = format!("Bearer {bearer}");

    // Revocation propagation: from the deactivation's 200 on one node to the
    // first refusal on each other node, polling both in turn.
    let mut times_ms = Vec::new();
    for i in 0..revocations {
        let writer = &nodes[i % 3];
        let others = [&nodes[(i + 1) % 3], &nodes[(i + 2) % 3]];
        let raw = create_key(writer.addr, &bearer)?;
        for n in others {
            // Twice: the second answer comes from the node's cache.
            verify_valid(n.addr, &raw)?;
            if !verify_valid(n.addr, &raw)? {
                bail!("a new key was refused by another node");
            }
        }
        let id = {
            let (status, body) = http(
                writer.addr,
                "GET",
                "/api/v1/api-keys",
                &[("Authorization", &auth)],
                "",
            )?;
            if status != 200 {
                bail!("list failed: {status}");
            }
            let list: Value = serde_json::from_str(&body)?;
            list.as_array()
                .and_then(|a| a.last())
                .and_then(|k| k["id"].as_str())
                .context("no key listed")?
                .to_owned()
        };
        let (status, body) = http(
            writer.addr,
            "POST",
            &format!("/api/v1/api-keys/{id}/deactivate"),
            &[("Authorization", &auth)],
            "",
        )?;
        if status != 200 {
            bail!("deactivate failed: {status} {body}");
        }
        let acknowledged = Instant::now();
        let mut pending: Vec<&Serve> = others.to_vec();
        while !pending.is_empty() {
            if acknowledged.elapsed() > Duration::from_secs(5) {
                bail!("a node still accepted a deactivated key after 5 s");
            }
            let mut still = Vec::new();
            for n in pending {
                if verify_valid(n.addr, &raw)? {
                    still.push(n);
                } else {
                    times_ms.push(acknowledged.elapsed().as_secs_f64() * 1000.0);
                }
            }
            pending = still;
        }
    }
    times_ms.sort_by(f64::total_cmp);
    let note = format!("{revocations} deactivations, each seen by 2 other nodes");
    report.add(
        "multi_node.revocation.p50",
        percentile(&times_ms, 50.0),
        "ms",
        &note,
    );
    report.add(
        "multi_node.revocation.p99",
        percentile(&times_ms, 99.0),
        "ms",
        &note,
    );
    report.add(
        "multi_node.revocation.max",
        percentile(&times_ms, 100.0),
        "ms",
        &note,
    );
    let p99 = percentile(&times_ms, 99.0);
    report.flag(
        "multi_node.revocation.p99_under_100ms",
        p99 < 100.0,
        "p99 < 100 ms",
    );

    // The hot paths on PostgreSQL against SQLite, in the same run.
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("k.db");
    let sqlite = serve(&o.server, &db, &["--upstream", &up], None)?;
    let sqlite_key = create_key(sqlite.addr, &token(&o.server, &db)?)?;
    let pg_key = create_key(nodes[0].addr, &bearer)?;
    for (name, addr, raw, note) in [
        (
            "multi_node.verify_sqlite",
            sqlite.addr,
            &sqlite_key,
            "verify endpoint, SQLite node",
        ),
        (
            "multi_node.verify_postgres",
            nodes[0].addr,
            &pg_key,
            "verify endpoint, PostgreSQL node",
        ),
    ] {
        let body = json!({"key": raw, "permission": "read"}).to_string();
        let script = lua_post(
            dir.path(),
            &format!("{name}.lua"),
            &body,
            &[("Content-Type", "application/json")],
        )?;
        let measured = load(
            &format!("http://{addr}/api/v1/api-keys/verify"),
            64,
            secs,
            &[],
            Some(&script),
            runs,
        )?;
        add_load(report, name, &measured, note);
    }
    report.compare(
        "multi_node.verify_postgres.rps",
        "multi_node.verify_sqlite.rps",
        Target::AtLeast(0.9),
    );
    let plain = load(
        &format!("http://{}/api/v1/records", plain_proxy.addr),
        64,
        secs,
        &[],
        None,
        runs,
    )?;
    add_load(
        report,
        "multi_node.plain_proxy",
        &plain,
        "native hyper proxy, no auth",
    );
    for (name, addr, raw, note) in [
        (
            "multi_node.proxy_sqlite",
            sqlite.addr,
            &sqlite_key,
            "gateway, SQLite node",
        ),
        (
            "multi_node.proxy_postgres",
            nodes[0].addr,
            &pg_key,
            "gateway, PostgreSQL node",
        ),
    ] {
        let key = format!("X-Sigma-ApiKey: {raw}");
        let measured = load(
            &format!("http://{addr}/api/v1/records"),
            64,
            secs,
            &[&key],
            None,
            runs,
        )?;
        add_load(report, name, &measured, note);
    }
    report.compare(
        "multi_node.proxy_sqlite.rps",
        "multi_node.plain_proxy.rps",
        Target::None,
    );
    report.compare(
        "multi_node.proxy_postgres.rps",
        "multi_node.plain_proxy.rps",
        Target::None,
    );
    report.compare(
        "multi_node.proxy_postgres.rps",
        "multi_node.proxy_sqlite.rps",
        Target::AtLeast(0.9),
    );
    drop(nodes);
    Ok(())
}
