//! The JWT secret: from `SIGMA_JWT_SECRET`, from `--jwt-secret-file`, or (on
//! SQLite only) generated once and kept next to the database as
//! `<db>.secret` (mode 0600). On PostgreSQL every node must share it, so it
//! is never generated there. Also mints tokens for local use.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use rand_core::{OsRng, TryRngCore};

/// The environment variable that holds the secret.
pub const ENV_VAR: &str = "SIGMA_JWT_SECRET";
/// Shortest accepted secret, in bytes (HS256 wants at least the hash size).
pub const MIN_LEN: usize = 32;

/// Where the secret came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Env,
    File(PathBuf),
    Generated(PathBuf),
}

/// The secret file that belongs to a database.
pub fn file_for(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".secret");
    PathBuf::from(name)
}

/// The secret to use with `db`, creating the file if there is neither it nor the variable.
pub fn resolve(db: &Path) -> Result<(String, Source)> {
    resolve_from(std::env::var_os(ENV_VAR), db)
}

/// The secret for the store at `location`: the variable, else `file`, else
/// (SQLite only) the file beside the database, created when missing.
pub fn resolve_for(
    location: &crate::store::Location,
    file: Option<&Path>,
) -> Result<(String, Source)> {
    let env = std::env::var_os(ENV_VAR);
    match (env, file, location) {
        (None, Some(file), _) => {
            read_file(file).map(|value| (value, Source::File(file.to_owned())))
        }
        (env, _, crate::store::Location::Sqlite(db)) => resolve_from(env, db),
        (Some(env), _, crate::store::Location::Postgres(_)) => {
            from_env(env).map(|v| (v, Source::Env))
        }
        (None, None, crate::store::Location::Postgres(_)) => bail!(
            "on PostgreSQL every node must share the JWT secret: set {ENV_VAR} or pass --jwt-secret-file PATH"
        ),
    }
}

fn from_env(value: std::ffi::OsString) -> Result<String> {
    let Some(value) = value.to_str().map(str::to_owned) else {
        bail!("{ENV_VAR} is not valid UTF-8");
    };
    if value.len() < MIN_LEN {
        bail!(
            "{ENV_VAR} is {} bytes long; it must be at least {MIN_LEN} bytes",
            value.len()
        );
    }
    Ok(value)
}

/// A secret kept in a file that only its owner may read.
fn read_file(path: &Path) -> Result<String> {
    let text = fs::read_to_string(path)
        .with_context(|| format!("cannot read the secret file {}", path.display()))?;
    check_private(path)?;
    let value = text.trim().to_owned();
    if value.len() < MIN_LEN {
        bail!(
            "the secret in {} is shorter than {MIN_LEN} bytes",
            path.display()
        );
    }
    Ok(value)
}

fn check_private(path: &Path) -> Result<()> {
    let mode = fs::metadata(path)
        .with_context(|| format!("cannot read the secret file {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        bail!(
            "the secret file {} is open to group or others (mode {:o}); run `chmod 600 {}`",
            path.display(),
            mode & 0o777,
            path.display()
        );
    }
    Ok(())
}

/// [`resolve`] with the variable's value passed in.
fn resolve_from(env: Option<std::ffi::OsString>, db: &Path) -> Result<(String, Source)> {
    if let Some(value) = env {
        return from_env(value).map(|value| (value, Source::Env));
    }
    let path = file_for(db);
    match fs::metadata(&path) {
        Ok(_) => read_file(&path).map(|value| (value, Source::File(path))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let value = generate()?;
            write_new(&path, &value)?;
            Ok((value, Source::Generated(path)))
        }
        Err(e) => Err(e).with_context(|| format!("cannot read the secret file {}", path.display())),
    }
}

fn generate() -> Result<String> {
    let mut bytes = [0u8; 32];
    OsRng
        .try_fill_bytes(&mut bytes)
        .context("cannot read the OS random number generator")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn write_new(path: &Path, value: &str) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create the secret file {}", path.display()))?;
    file.write_all(value.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    // The umask cannot widen 0600, but be explicit.
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    Ok(())
}

/// An HS256 token for `tenant`, valid for `ttl`.
pub fn mint(secret: &str, tenant: &str, subject: Option<&str>, ttl: Duration) -> Result<String> {
    if tenant.trim().is_empty() {
        bail!("--tenant must not be empty");
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let mut claims = serde_json::json!({
        "tenant": tenant,
        "iat": now,
        "exp": now + ttl.as_secs().max(1),
    });
    if let (Some(sub), Some(obj)) = (subject, claims.as_object_mut()) {
        obj.insert("sub".into(), serde_json::Value::String(sub.into()));
    }
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    Ok(jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_secret_is_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("keys.db");
        let (first, source) = resolve_from(None, &db).unwrap();
        assert_eq!(source, Source::Generated(file_for(&db)));
        assert_eq!(first.len(), 64);
        let mode = fs::metadata(file_for(&db)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (second, source) = resolve_from(None, &db).unwrap();
        assert_eq!((second, source), (first, Source::File(file_for(&db))));
    }

    #[test]
    fn a_secret_file_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("keys.db");
        resolve_from(None, &db).unwrap();
        for mode in [0o644, 0o640, 0o604, 0o660] {
            fs::set_permissions(file_for(&db), fs::Permissions::from_mode(mode)).unwrap();
            let e = resolve_from(None, &db).unwrap_err().to_string();
            assert!(e.contains(&file_for(&db).display().to_string()), "{e}");
        }
        fs::set_permissions(file_for(&db), fs::Permissions::from_mode(0o400)).unwrap();
        assert!(resolve_from(None, &db).is_ok());
    }

    #[test]
    fn the_variable_wins_and_must_be_long_enough() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("keys.db");
        let long = "x".repeat(MIN_LEN);
        assert_eq!(
            resolve_from(Some(long.clone().into()), &db).unwrap(),
            (long, Source::Env)
        );
        assert!(resolve_from(Some("short".into()), &db).is_err());
        assert!(
            !file_for(&db).exists(),
            "no file is written when the variable is set"
        );
    }
}
