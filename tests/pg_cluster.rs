//! A throwaway PostgreSQL cluster for tests: `initdb` and `pg_ctl` from
//! Debian's `postgresql` package, in a temporary directory, on a free
//! loopback port, run as the `postgres` user when the tests run as root
//! (`initdb` refuses root). Shared by the store's conformance suite and the
//! end-to-end tests (included by path in both).
//!
//! `SIGMA_TEST_DATABASE_URL` (a URL whose user may create databases) is used
//! instead when set; tests that stop the server start a cluster of their own.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// The password of the test role; tests check it never appears in output.
pub const PASSWORD: &str = "pw-never-printed-7f3a9c";
const USER: &str = "sigma";

pub struct PgCluster {
    root: PathBuf,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
    tls: bool,
}

fn bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL's server is not installed (no /usr/lib/postgresql/*/bin/initdb); \
             run ./scripts/setup.sh or apt-get install postgresql"
        ),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl PgCluster {
    /// initdb + pg_ctl start; panics with the server's log when that fails.
    pub fn start() -> PgCluster {
        PgCluster::init(false)
    }

    /// The same with TLS on: a certificate for `localhost` only (not for
    /// 127.0.0.1), signed by a throwaway CA in [`PgCluster::ca_file`].
    pub fn start_tls() -> PgCluster {
        PgCluster::init(true)
    }

    fn init(tls: bool) -> PgCluster {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let as_postgres = is_root();
        let root = std::env::temp_dir().join(format!(
            "sigma-keys-pg-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let cluster = PgCluster {
            root,
            bin: bin_dir(),
            port: free_port(),
            as_postgres,
            tls,
        };
        std::fs::write(cluster.root.join("pw"), PASSWORD).unwrap();
        if tls {
            cluster.make_certificates();
        }
        if as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&cluster.root)
                .status()
                .unwrap();
            assert!(status.success(), "chown to postgres failed");
        }
        let out = cluster
            .tool("initdb")
            .arg("-D")
            .arg(cluster.data())
            .args([
                "--username",
                USER,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", cluster.root.join("pw").display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.start_server();
        cluster
    }

    /// A CA (`ca.pem`), a second unrelated CA (`other-ca.pem`) and the
    /// server's key and certificate, by the openssl CLI.
    fn make_certificates(&self) {
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&self.root)
                .output()
                .expect("openssl (installed with Debian's postgresql)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let key = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for ca in ["ca", "other-ca"] {
            let mut args = vec!["req", "-x509"];
            args.extend(key);
            let (k, c, s) = (
                format!("{ca}.key"),
                format!("{ca}.pem"),
                format!("/CN={ca}"),
            );
            args.extend(["-keyout", &k, "-out", &c, "-days", "2", "-subj", &s]);
            run(&args);
        }
        let mut args = vec!["req"];
        args.extend(key);
        args.extend([
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]);
        run(&args);
        std::fs::write(self.root.join("ext"), "subjectAltName=DNS:localhost\n").unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext",
        ]);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            self.root.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
    }

    /// The CA that signed the server's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.root.join("ca.pem")
    }

    /// A CA that did not.
    pub fn other_ca_file(&self) -> PathBuf {
        self.root.join("other-ca.pem")
    }

    fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    /// A PostgreSQL program, as the user that owns the cluster.
    fn tool(&self, name: &str) -> Command {
        let program = self.bin.join(name);
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        command.stdin(Stdio::null());
        command
    }

    fn start_server(&self) {
        let out = self
            .tool("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.root.join("log"))
            .args(["-w", "-t", "60", "-o"])
            .arg(format!(
                "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off -c max_connections=300{}",
                self.port,
                self.root.display(),
                if self.tls {
                    format!(
                        " -c ssl=on -c ssl_cert_file={0}/server.pem -c ssl_key_file={0}/server.key",
                        self.root.display()
                    )
                } else {
                    String::new()
                }
            ))
            .arg("start")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.root.join("log")).unwrap_or_default()
        );
    }

    /// `pg_ctl stop -m immediate`: the server dies without a clean shutdown.
    pub fn stop_immediate(&self) {
        let _ = self
            .tool("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// Starts the server again (crash recovery included), on the same port.
    pub fn restart(&self) {
        self.start_server();
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `db` with the test role's password.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    /// The same without `sslmode`: `postgres://…@HOST:PORT/DB`.
    pub fn base_url(&self, host: &str, db: &str) -> String {
        format!("postgres://{USER}:{PASSWORD}@{host}:{}/{db}", self.port)
    }

    /// Runs SQL through psql on the local socket; its output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new("psql")
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.root)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                USER,
                "-d",
                db,
                "-c",
                sql,
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A new empty database; its URL.
    pub fn new_database(&self) -> String {
        let name = unique_name();
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        self.url(&name)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Stops the server when this process ends, however it ends (a static
    /// is never dropped).
    fn stop_with_process(&self) {
        let pg_ctl = self.bin.join("pg_ctl");
        let stop = if self.as_postgres {
            format!(
                "runuser -u postgres -- {} -D {} -m immediate stop",
                pg_ctl.display(),
                self.data().display()
            )
        } else {
            format!(
                "{} -D {} -m immediate stop",
                pg_ctl.display(),
                self.data().display()
            )
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {stop} >/dev/null 2>&1; rm -rf {root}",
            pid = std::process::id(),
            root = self.root.display()
        );
        let _ = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop_immediate();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn unique_name() -> String {
    static COUNT: AtomicU32 = AtomicU32::new(0);
    format!(
        "t{}_{}",
        std::process::id(),
        COUNT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The cluster this process's tests share (started on first use).
pub fn shared() -> &'static PgCluster {
    static SHARED: OnceLock<PgCluster> = OnceLock::new();
    SHARED.get_or_init(|| {
        let cluster = PgCluster::start();
        cluster.stop_with_process();
        cluster
    })
}

/// A URL of a new, empty database: on `SIGMA_TEST_DATABASE_URL`'s server
/// when set, else on the shared throwaway cluster.
pub fn database_url() -> String {
    match std::env::var("SIGMA_TEST_DATABASE_URL") {
        Ok(base) if !base.is_empty() => {
            let name = unique_name();
            let out = Command::new("psql")
                .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", &base, "-c"])
                .arg(format!("CREATE DATABASE {name}"))
                .stdin(Stdio::null())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "cannot create a database on SIGMA_TEST_DATABASE_URL: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            replace_database(&base, &name)
        }
        _ => shared().new_database(),
    }
}

/// `url` with its database name replaced by `name`.
fn replace_database(url: &str, name: &str) -> String {
    let (head, query) = url
        .split_once('?')
        .map_or((url, None), |(h, q)| (h, Some(q)));
    let scheme_end = head.find("://").map_or(0, |i| i + 3);
    let base = match head[scheme_end..].find('/') {
        Some(slash) => &head[..scheme_end + slash],
        None => head,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}
