//! `sigma-keys`: serve the API-key service, mint local tokens, manage keys.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use sigma_keys::jwks::{self, KeySetFeed};
use sigma_keys::runtime::Runtime;
use sigma_keys::secret::{self, Source};
use sigma_keys::store::{self, Location};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use sigma_keys::server::{self, Limits};
use sigma_keys::{KeyRecord, Permission, Service, Settings};

#[derive(Parser)]
#[command(name = "sigma-keys", version, about = "The Sigma PIM API-key service")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How log lines are written to stderr: text, or one JSON object per line
    #[arg(long, global = true, env = "SIGMA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the REST API (and forward authorized requests upstream)
    Serve(Box<ServeArgs>),
    /// Print a Bearer token (JWT) for a tenant, signed with the server's secret
    Token(TokenArgs),
    /// Manage keys directly in the database, without a server
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Copy every key from a SQLite database into PostgreSQL (safe to repeat)
    Migrate(MigrateArgs),
}

#[derive(Args)]
struct DbArg {
    /// The store: a SQLite file, or a postgres:// or postgresql:// URL (also SIGMA_DATABASE_URL) [default: ./sigma-keys.db]
    #[arg(
        long,
        env = "SIGMA_DB",
        hide_env_values = true,
        value_name = "PATH|URL"
    )]
    db: Option<String>,
}

/// The store when neither `--db`, `SIGMA_DB` nor `SIGMA_DATABASE_URL` names one.
const DEFAULT_DB: &str = "./sigma-keys.db";

impl DbArg {
    /// `--db`, else `SIGMA_DB`, else `SIGMA_DATABASE_URL` (the name URLs
    /// usually travel under), else [`DEFAULT_DB`]. Parsed here rather than
    /// by clap, whose errors repeat the value (and so a URL's password).
    fn location(&self) -> Result<Location> {
        let db = self
            .db
            .clone()
            .or_else(|| std::env::var("SIGMA_DATABASE_URL").ok())
            .unwrap_or_else(|| DEFAULT_DB.to_owned());
        db.parse()
            .map_err(|reason| anyhow::anyhow!("--db (or SIGMA_DB, SIGMA_DATABASE_URL) {reason}"))
    }
}

#[derive(Args)]
struct SecretArg {
    /// Read the JWT secret from this file (mode 0600); SIGMA_JWT_SECRET wins. Required on PostgreSQL without SIGMA_JWT_SECRET
    #[arg(long, env = "SIGMA_JWT_SECRET_FILE", value_name = "PATH")]
    jwt_secret_file: Option<PathBuf>,
}

#[derive(Args)]
struct MigrateArgs {
    /// The SQLite database to copy from
    #[arg(long, value_name = "PATH")]
    from: PathBuf,
    /// The PostgreSQL URL to copy to
    #[arg(
        long,
        value_name = "URL",
        env = "SIGMA_DATABASE_URL",
        hide_env_values = true
    )]
    to: String,
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on
    #[arg(
        long,
        env = "SIGMA_LISTEN",
        default_value = "127.0.0.1:8080",
        value_name = "ADDR"
    )]
    listen: SocketAddr,
    /// Serve the authorization endpoints for proxies (/_sigma/auth/...) on this address only, and nothing else there
    #[arg(long, env = "SIGMA_AUTH_LISTEN", value_name = "ADDR")]
    auth_listen: Option<SocketAddr>,
    /// Serve /metrics (Prometheus), /healthz and /readyz on this address (off unless given; never on --listen)
    #[arg(long, env = "SIGMA_ADMIN_LISTEN", value_name = "ADDR")]
    admin_listen: Option<SocketAddr>,
    #[command(flatten)]
    db: DbArg,
    #[command(flatten)]
    secret: SecretArg,
    /// PostgreSQL: a node answers from its cache only while it has confirmed, within this long, that the cache is current
    #[arg(long, env = "SIGMA_MAX_STALENESS", default_value = "1s", value_parser = parse_duration, value_name = "DURATION")]
    max_staleness: Duration,
    /// Forward authorized resource requests to this base URL (http:// or https://)
    #[arg(long, env = "SIGMA_UPSTREAM", value_name = "URL")]
    upstream: Option<String>,
    /// Give up on the upstream (502/504) when it takes longer than this to connect, answer or send more
    #[arg(long, env = "SIGMA_UPSTREAM_TIMEOUT", default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    upstream_timeout: Duration,
    /// Close a connection whose request headers take longer than this
    #[arg(long, env = "SIGMA_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    header_timeout: Duration,
    /// Close keep-alive connections idle for this long
    #[arg(long, env = "SIGMA_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    idle_timeout: Duration,
    /// Close a connection whose request (headers and body) takes longer than this to arrive
    #[arg(long, env = "SIGMA_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    request_timeout: Duration,
    /// Serve at most this many connections at once; more wait in the accept backlog
    #[arg(long, env = "SIGMA_MAX_CONNECTIONS", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..), value_name = "N")]
    max_connections: u32,
    /// Also accept RS256, ES256 and EdDSA Bearer tokens signed by a key of this JWK Set (an https:// URL, refreshed every 10 minutes and when a token names an unknown kid, or a file)
    #[arg(long, env = "SIGMA_JWT_JWKS", value_name = "URL|PATH")]
    jwt_jwks: Option<String>,
    /// Tokens checked with --jwt-jwks must have this issuer (iss)
    #[arg(
        long,
        env = "SIGMA_JWT_ISSUER",
        value_name = "ISS",
        requires = "jwt_jwks"
    )]
    jwt_issuer: Option<String>,
    /// Tokens checked with --jwt-jwks must have this audience (aud)
    #[arg(
        long,
        env = "SIGMA_JWT_AUDIENCE",
        value_name = "AUD",
        requires = "jwt_jwks"
    )]
    jwt_audience: Option<String>,
    /// The claim that names the tenant in tokens checked with --jwt-jwks
    #[arg(
        long,
        env = "SIGMA_TENANT_CLAIM",
        default_value = "tenant",
        value_name = "NAME"
    )]
    tenant_claim: String,
    /// Refuse Bearer tokens that expire further ahead than this
    #[arg(long, env = "SIGMA_JWT_MAX_LIFETIME", default_value = "24h", value_parser = parse_duration, value_name = "DURATION")]
    jwt_max_lifetime: Duration,
    /// Refuse to create more than this many keys for one tenant (409 key_limit_reached)
    #[arg(long, env = "SIGMA_MAX_KEYS_PER_TENANT", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..), value_name = "N")]
    max_keys_per_tenant: u32,
    /// On SIGTERM or SIGINT, stop accepting and give requests in flight this long to finish
    #[arg(long, env = "SIGMA_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    shutdown_timeout: Duration,
    /// Accept GitHub secret scanning alerts at POST /api/v1/secret-scanning/github, signed by the keys in this file (GitHub's format: https://api.github.com/meta/public_keys/secret_scanning)
    #[arg(long, env = "SIGMA_GITHUB_SCANNING_KEYS", value_name = "PATH")]
    github_scanning_keys: Option<PathBuf>,
}

#[derive(Args)]
struct TokenArgs {
    /// The tenant the token acts for
    #[arg(long)]
    tenant: String,
    /// The subject (who is acting), passed upstream as X-Sigma-Subject
    #[arg(long)]
    sub: Option<String>,
    /// How long the token is valid
    #[arg(long, default_value = "1h", value_parser = parse_duration, value_name = "DURATION")]
    ttl: Duration,
    #[command(flatten)]
    db: DbArg,
    #[command(flatten)]
    secret: SecretArg,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// List a tenant's keys (JSON, as GET /api/v1/api-keys)
    List {
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        db: DbArg,
    },
    /// Show one key (JSON, as GET /api/v1/api-keys/ID)
    Get {
        #[arg(long)]
        tenant: String,
        /// The key id (apikey-...)
        id: String,
        #[command(flatten)]
        db: DbArg,
    },
    /// Create a key and print it once (JSON, as POST /api/v1/api-keys)
    Create {
        #[arg(long)]
        tenant: String,
        /// Human-readable name
        #[arg(long)]
        name: String,
        /// Comma-separated: read, update-data, delete-data, update-model, delete-model
        #[arg(long, value_delimiter = ',', value_parser = parse_permission, required = true)]
        permissions: Vec<Permission>,
        /// When the key stops working: an RFC 3339 UTC timestamp (2027-01-31T12:00:00Z), at most 10 years ahead
        #[arg(long, value_parser = parse_timestamp, value_name = "TIMESTAMP")]
        expires_at: Option<u64>,
        #[command(flatten)]
        db: DbArg,
    },
    /// Replace a key by a new one with the same name, permissions and expiry, and print it once
    Roll {
        #[arg(long)]
        tenant: String,
        /// The key id (apikey-...)
        id: String,
        /// How long the old key keeps working, in seconds (0 to 604800)
        #[arg(long, default_value_t = 0, value_name = "SECONDS")]
        grace_period: u32,
        #[command(flatten)]
        db: DbArg,
    },
    /// Show the audit trail, newest first (JSON, as GET /api/v1/api-keys/events)
    Events {
        #[arg(long)]
        tenant: String,
        /// Only this key's events
        #[arg(long, value_name = "ID")]
        key_id: Option<String>,
        /// Continue after a page: its `next`
        #[arg(long)]
        cursor: Option<String>,
        /// Events per page (1 to 500)
        #[arg(long, default_value_t = 100, value_name = "N")]
        limit: u32,
        #[command(flatten)]
        db: DbArg,
    },
    /// Deactivate a key
    Deactivate {
        #[arg(long)]
        tenant: String,
        /// The key id (apikey-...)
        id: String,
        #[command(flatten)]
        db: DbArg,
    },
    /// Delete a key for good
    Delete {
        #[arg(long)]
        tenant: String,
        /// The key id (apikey-...)
        id: String,
        #[command(flatten)]
        db: DbArg,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 30s, 15m, 1h)"))?;
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(d)
}

/// Milliseconds since the epoch of an RFC 3339 UTC timestamp; whether it is
/// in the future and near enough is the component's to say.
fn parse_timestamp(s: &str) -> Result<u64, String> {
    let bad = || "must be an RFC 3339 timestamp in UTC, such as 2027-01-31T12:00:00Z".to_owned();
    let at = humantime::parse_rfc3339(s).map_err(|_| bad())?;
    let since = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| bad())?;
    u64::try_from(since.as_millis()).map_err(|_| bad())
}

fn parse_permission(s: &str) -> Result<Permission, String> {
    sigma_keys::parse_permission(s.trim()).ok_or_else(|| {
        format!("unknown permission {s:?}; use read, update-data, delete-data, update-model or delete-model")
    })
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line: what is wrong; then where to look.
            let text = e.to_string();
            let first: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            eprintln!("{}", first.join(" "));
            eprintln!("Run `sigma-keys --help` (or `sigma-keys <command> --help`) for usage.");
            return ExitCode::from(2);
        }
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SIGMA_KEYS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // One object per line, its fields flattened, for log shippers.
        LogFormat::Json => logs.json().flatten_event(true).with_ansi(false).init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let log_format = cli.log_format;
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match log_format {
                LogFormat::Text => eprintln!("error: {e:#}"),
                LogFormat::Json => tracing::error!("{e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(args) => serve(*args).await,
        Command::Token(args) => {
            let (secret, source) =
                secret::resolve_for(&args.db.location()?, args.secret.jwt_secret_file.as_deref())?;
            note_secret(&source);
            println!(
                "{}",
                secret::mint(&secret, &args.tenant, args.sub.as_deref(), args.ttl)?
            );
            Ok(())
        }
        Command::Keys(cmd) => keys(cmd).await,
        Command::Migrate(args) => migrate(args).await,
    }
}

async fn migrate(args: MigrateArgs) -> Result<()> {
    let Location::Postgres(url) = args
        .to
        .parse::<Location>()
        .map_err(|reason| anyhow::anyhow!("--to {reason}"))?
    else {
        bail!("--to must be a postgres:// or postgresql:// URL");
    };
    if !args.from.is_file() {
        bail!("--from {}: no such SQLite database", args.from.display());
    }
    let source = store::sqlite::Db::open(&args.from)?;
    let keys = source.export().map_err(store_error)?;
    let events = source.export_events().map_err(store_error)?;
    let target = store::postgres::PgStore::open(&url, &store::Options::default()).await?;
    let added = target.import(&keys).await.map_err(store_error);
    let events_added = match added {
        Ok(_) => target.import_events(&events).await.map_err(store_error),
        Err(_) => Ok(0),
    };
    store::KeyStore::close(&target).await;
    let added = added?;
    let events_added = events_added?;
    let deactivated = keys
        .iter()
        .filter(|(k, _)| k.deactivated_at.is_some())
        .count();
    println!(
        "{}",
        serde_json::json!({
            "keys": keys.len(),
            "copied": added,
            "alreadyThere": keys.len() as u64 - added,
            "deactivated": deactivated,
            "events": events.len(),
            "eventsCopied": events_added,
        })
    );
    eprintln!(
        "Copied {added} of {} keys from {} to {} ({} were already there).",
        keys.len(),
        args.from.display(),
        url.redacted(),
        keys.len() as u64 - added
    );
    Ok(())
}

fn store_error(e: sigma_keys::store::StoreError) -> anyhow::Error {
    match e {
        sigma_keys::store::StoreError::Unavailable(why) => {
            anyhow::anyhow!("the store failed: {why}")
        }
        other => anyhow::anyhow!("the store failed: {other:?}"),
    }
}

fn note_secret(source: &Source) {
    if let Source::Generated(path) = source {
        tracing::info!(
            "Generated a new JWT secret in {} (mode 0600); keep it next to the database.",
            path.display()
        );
    }
}

async fn serve(args: ServeArgs) -> Result<()> {
    if let Some(url) = &args.upstream {
        let uri: hyper::Uri = url
            .parse()
            .with_context(|| format!("--upstream {url:?} is not a URL"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https"))
            || uri.host().is_none()
            || uri.query().is_some()
        {
            bail!(
                "--upstream must be an http:// or https:// URL with a host and no query, e.g. http://127.0.0.1:9000"
            );
        }
    }
    let location = args.db.location()?;
    let secret = || secret::resolve_for(&location, args.secret.jwt_secret_file.as_deref());
    // On PostgreSQL a missing shared secret is reported before connecting;
    // on SQLite the database is opened first, since the secret lives beside it.
    let early = if location.is_postgres() {
        Some(secret()?)
    } else {
        None
    };
    let db = store::open(
        &location,
        &store::Options {
            max_staleness: args.max_staleness,
        },
    )
    .await?;
    // Measured only when someone can read the measurements.
    let admin = match args.admin_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (is the port in use?)"))?;
            let handle = sigma_keys::metrics::install()?;
            Some((listener, handle))
        }
        None => None,
    };
    let db = if admin.is_some() {
        store::metered::Metered::wrap(db)
    } else {
        db
    };
    let (jwt_secret, source) = match early {
        Some(resolved) => resolved,
        None => secret()?,
    };
    note_secret(&source);
    let github_scanning_keys = match &args.github_scanning_keys {
        Some(path) => Some(read_scanning_keys(path)?),
        None => None,
    };
    let settings = Settings {
        jwt_secret: Some(jwt_secret),
        upstream: args.upstream.clone(),
        upstream_timeout: Some(args.upstream_timeout),
        jwt_max_lifetime: Some(args.jwt_max_lifetime),
        max_keys_per_tenant: Some(args.max_keys_per_tenant),
        github_scanning_keys,
        jwt_issuer: args.jwt_issuer.clone(),
        jwt_audience: args.jwt_audience.clone(),
        tenant_claim: Some(args.tenant_claim.clone()),
        endpoints: args.auth_listen.map(|_| "public"),
    };
    let key_sets = match &args.jwt_jwks {
        Some(source) => Some(KeySetFeed::open(jwks::Source::parse(source)?).await?),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {} (is the port in use?)", args.listen))?;
    let auth = match args.auth_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (is the port in use?)"))?;
            let only_auth = Settings {
                endpoints: Some("auth"),
                ..settings.clone()
            };
            Some((listener, Arc::new(Runtime::new(db.clone(), &only_auth)?)))
        }
        None => None,
    };
    let runtime = Arc::new(Runtime::new(db.clone(), &settings)?);
    let refresher = key_sets.as_ref().map(|feed| {
        feed.follow(&runtime);
        if let Some((_, auth_runtime)) = &auth {
            feed.follow(auth_runtime);
        }
        feed.refresh_periodically()
    });
    let local = listener.local_addr()?;
    let db_arg = location.display();
    println!("sigma-keys listening on http://{local}");
    match &auth {
        Some((listener, _)) => println!(
            "  proxy authorization: http://{}/_sigma/auth/ (only there)",
            listener.local_addr()?
        ),
        None => println!("  proxy authorization: http://{local}/_sigma/auth/"),
    }
    let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let admin_task = match admin {
        Some((listener, handle)) => {
            println!(
                "  admin: http://{} (/metrics, /healthz, /readyz)",
                listener.local_addr()?
            );
            let admin = Arc::new(sigma_keys::admin::Admin {
                metrics: handle,
                db: db.clone(),
                draining: draining.clone(),
            });
            Some(tokio::spawn(sigma_keys::admin::serve(admin, listener)))
        }
        None => None,
    };
    println!("  database: {db_arg}");
    match &args.upstream {
        Some(u) => println!("  upstream: {u}"),
        None => {
            println!("  upstream: none (resource requests get 502 no_upstream; set --upstream URL)")
        }
    }
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "sigma-keys".into());
    match location {
        Location::Sqlite(_) => {
            println!("  get a token: {exe} token --db {db_arg} --tenant <tenant>")
        }
        Location::Postgres(_) => println!(
            "  get a token: {exe} token --db <this database URL> --tenant <tenant> (with the same JWT secret)"
        ),
    }
    if let Some(source) = &args.jwt_jwks {
        println!("  identity provider keys: {source} (RS256, ES256, EdDSA tokens)");
    }
    if let Some(path) = &args.github_scanning_keys {
        println!(
            "  secret scanning: POST /api/v1/secret-scanning/github, keys from {}",
            path.display()
        );
    }
    let limits = Limits {
        header_timeout: args.header_timeout,
        idle_timeout: args.idle_timeout,
        request_timeout: args.request_timeout,
        max_connections: args.max_connections as usize,
        shutdown_timeout: args.shutdown_timeout,
    };
    // SIGINT or SIGTERM: stop serving, then write what is pending.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch for SIGTERM")?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        draining.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = stop.send(true);
    });
    let shutdown = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    let public = server::serve(runtime, listener, limits, shutdown(stopped.clone()));
    let served = match auth {
        Some((listener, runtime)) => {
            let auth = server::serve(runtime, listener, limits, shutdown(stopped));
            tokio::try_join!(public, auth).map(|_| ())
        }
        None => public.await,
    };
    if let Some(task) = admin_task {
        task.abort();
    }
    if let Some(task) = refresher {
        task.abort();
    }
    // Pending lastUsedAt values are written before the process exits.
    db.close().await;
    served
}

/// GitHub's key list, read at start so a wrong path or a file that is not
/// the list fails here rather than on GitHub's first alert. The keys
/// themselves are the component's to parse.
fn read_scanning_keys(path: &std::path::Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--github-scanning-keys {}: cannot read", path.display()))?;
    let listed = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| {
            v.get("public_keys")
                .and_then(|k| k.as_array())
                .map(Vec::len)
        });
    match listed {
        Some(n) if n > 0 => Ok(text),
        _ => bail!(
            "--github-scanning-keys {}: not GitHub's key list (a JSON object with a non-empty \"public_keys\" array)",
            path.display()
        ),
    }
}

async fn keys(cmd: KeysCommand) -> Result<()> {
    let (tenant, db) = match &cmd {
        KeysCommand::List { tenant, db }
        | KeysCommand::Get { tenant, db, .. }
        | KeysCommand::Create { tenant, db, .. }
        | KeysCommand::Roll { tenant, db, .. }
        | KeysCommand::Events { tenant, db, .. }
        | KeysCommand::Deactivate { tenant, db, .. }
        | KeysCommand::Delete { tenant, db, .. } => (tenant.clone(), db.location()?),
    };
    let service = Service::open_at(&db, &store::Options::default(), &Settings::default()).await?;
    let output = keys_command(&service, &tenant, cmd).await;
    service.close().await;
    println!("{}", serde_json::to_string_pretty(&output?)?);
    Ok(())
}

async fn keys_command(
    service: &Service,
    tenant: &str,
    cmd: KeysCommand,
) -> Result<serde_json::Value> {
    let tenant = tenant.to_owned();
    let output = match cmd {
        KeysCommand::List { .. } => {
            let list = service.list(&tenant).await?.map_err(key_error)?;
            serde_json::Value::Array(list.iter().map(record_json).collect())
        }
        KeysCommand::Create {
            name,
            permissions,
            expires_at,
            ..
        } => {
            let created = service
                .create_expiring(&tenant, &name, &permissions, expires_at)
                .await?
                .map_err(key_error)?;
            let mut v = record_json(&created.key);
            if let Some(obj) = v.as_object_mut() {
                obj.insert("rawKey".into(), created.raw_key.into());
            }
            eprintln!("Store the rawKey now: it is shown only this once.");
            v
        }
        KeysCommand::Roll {
            id, grace_period, ..
        } => {
            let rolled = service
                .roll(&tenant, &id, grace_period)
                .await?
                .map_err(key_error)?;
            let mut v = record_json(&rolled.created.key);
            if let Some(obj) = v.as_object_mut() {
                obj.insert("rawKey".into(), rolled.created.raw_key.into());
                obj.insert("rolledFrom".into(), rolled.previous.id.clone().into());
            }
            eprintln!(
                "Store the rawKey now: it is shown only this once. {} stops working at {}.",
                rolled.previous.id,
                rolled
                    .previous
                    .expires_at
                    .map_or_else(|| "once".into(), timestamp)
            );
            v
        }
        KeysCommand::Events {
            key_id,
            cursor,
            limit,
            ..
        } => {
            let page = service
                .events(&tenant, key_id.as_deref(), cursor.as_deref(), limit)
                .await?
                .map_err(key_error)?;
            serde_json::json!({
                "events": page.events.iter().map(event_json).collect::<Vec<_>>(),
                "next": page.next,
            })
        }
        KeysCommand::Get { id, .. } => {
            record_json(&service.get(&tenant, &id).await?.map_err(key_error)?)
        }
        KeysCommand::Deactivate { id, .. } => {
            record_json(&service.deactivate(&tenant, &id).await?.map_err(key_error)?)
        }
        KeysCommand::Delete { id, .. } => {
            service.delete(&tenant, &id).await?.map_err(key_error)?;
            serde_json::json!({"deleted": true})
        }
    };
    Ok(output)
}

fn key_error(e: sigma_keys::KeyError) -> anyhow::Error {
    anyhow::anyhow!("{}", e.message)
}

fn timestamp(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn record_json(k: &KeyRecord) -> serde_json::Value {
    let mut v = serde_json::json!({
        "id": k.id,
        "name": k.name,
        "permissions": k.permissions.iter().map(|p| sigma_keys::permission_name(*p)).collect::<Vec<_>>(),
        "active": k.active,
        "createdAt": timestamp(k.created_at),
        "lastUsedAt": k.last_used_at.map(timestamp),
        "expiresAt": k.expires_at.map(timestamp),
    });
    if let (Some(at), Some(obj)) = (k.deactivated_at, v.as_object_mut()) {
        obj.insert("deactivatedAt".into(), timestamp(at).into());
    }
    v
}

/// An event as `GET /api/v1/api-keys/events` shows it.
fn event_json(e: &sigma_keys::Event) -> serde_json::Value {
    use sigma_keys::{ActorVia, EventDetails, EventKind};
    let kind = match e.kind {
        EventKind::Created => "key.created",
        EventKind::Deactivated => "key.deactivated",
        EventKind::Deleted => "key.deleted",
        EventKind::Rolled => "key.rolled",
        EventKind::Leaked => "key.leaked",
    };
    let via = match e.actor.via {
        ActorVia::Token => "token",
        ActorVia::Cli => "cli",
        ActorVia::SecretScanning => "secret-scanning",
    };
    let details = match &e.details {
        EventDetails::Nothing => serde_json::json!({}),
        EventDetails::Rolled(r) => serde_json::json!({
            "newKeyId": r.new_key_id,
            "gracePeriodSeconds": r.grace_period_seconds,
        }),
        EventDetails::Leaked(l) => serde_json::json!({"url": l.url, "source": l.source}),
    };
    serde_json::json!({
        "id": e.id,
        "at": timestamp(e.at),
        "type": kind,
        "keyId": e.key_id,
        "actor": {"via": via, "subject": e.actor.subject},
        "details": details,
    })
}
