//! The identity provider's key set (`--jwt-jwks URL|PATH`): fetched (or
//! read) at start, again every [`REFRESH_EVERY`], and at once, at most every
//! [`MIN_REFRESH_GAP`], when a token names a key id the set lacks (the
//! provider has rotated its keys). The host only fetches and hands the text
//! to the component as `jwt-jwks`; the component parses the keys and
//! decides which token passes.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{AUTHORIZATION, HeaderMap};
use wasmtime_wasi_http::RequestOptions;

use crate::runtime::Runtime;

/// How often the set is fetched again.
pub const REFRESH_EVERY: Duration = Duration::from_secs(10 * 60);
/// An unknown key id triggers a fetch at most this often.
pub const MIN_REFRESH_GAP: Duration = Duration::from_secs(60);
/// A key set larger than this is refused.
const MAX_BYTES: usize = 1 << 20;
/// How long a fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the key set comes from.
#[derive(Clone, Debug)]
pub enum Source {
    Url(hyper::Uri),
    File(PathBuf),
}

impl Source {
    /// An `http://` or `https://` URL, or else a file path.
    pub fn parse(value: &str) -> Result<Source> {
        if let Some(rest) = value
            .strip_prefix("http://")
            .or_else(|| value.strip_prefix("https://"))
        {
            // Never echoed: the value would be a password in logs and errors.
            let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
            if authority.contains('@') {
                bail!(
                    "--jwt-jwks: a URL with credentials (user:password@host) is refused; \
                     JWK Sets are public, fetched without credentials"
                );
            }
            let uri: hyper::Uri = value
                .parse()
                .with_context(|| format!("--jwt-jwks {value:?} is not a URL"))?;
            if uri.host().is_none() {
                bail!("--jwt-jwks {value:?} has no host");
            }
            Ok(Source::Url(uri))
        } else {
            Ok(Source::File(PathBuf::from(value)))
        }
    }

    async fn fetch(&self) -> Result<String> {
        let text = match self {
            Source::File(path) => tokio::fs::read_to_string(path)
                .await
                .with_context(|| format!("cannot read {}", path.display()))?,
            Source::Url(uri) => fetch_url(uri).await?,
        };
        Ok(text)
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Url(uri) => write!(f, "{uri}"),
            Source::File(path) => write!(f, "{}", path.display()),
        }
    }
}

async fn fetch_url(uri: &hyper::Uri) -> Result<String> {
    let request = hyper::Request::get(uri.clone())
        .header(hyper::header::ACCEPT, "application/json")
        .body(
            Empty::<Bytes>::new()
                .map_err(|never| match never {})
                .boxed(),
        )?;
    let options = RequestOptions {
        connect_timeout: Some(FETCH_TIMEOUT),
        first_byte_timeout: Some(FETCH_TIMEOUT),
        between_bytes_timeout: Some(FETCH_TIMEOUT),
    };
    let fetch = async {
        let (response, io) = wasmtime_wasi_http::default_send_request(request, Some(options))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let io = tokio::spawn(io);
        if !response.status().is_success() {
            bail!("it answered {}", response.status());
        }
        let body = Limited::new(response.into_body(), MAX_BYTES)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading the body failed: {e}"))?
            .to_bytes();
        io.abort();
        Ok(String::from_utf8(body.to_vec())?)
    };
    tokio::time::timeout(FETCH_TIMEOUT * 2, fetch)
        .await
        .map_err(|_| anyhow::anyhow!("it did not answer in time"))?
}

/// The key ids of a JWK Set, or why the text is not one. The keys
/// themselves are the component's to judge.
fn key_ids(text: &str) -> Result<Vec<String>> {
    let value: serde_json::Value = serde_json::from_str(text).context("it is not JSON")?;
    let keys = value
        .get("keys")
        .and_then(|k| k.as_array())
        .filter(|k| !k.is_empty())
        .context("it is not a JWK Set (a JSON object with a non-empty \"keys\" array)")?;
    Ok(keys
        .iter()
        .filter_map(|k| k.get("kid").and_then(|kid| kid.as_str()).map(str::to_owned))
        .collect())
}

/// The `kid` in the header of a request's Bearer token, if any.
fn token_kid(headers: &HeaderMap) -> Option<String> {
    let auth = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = auth.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let header = token.trim().split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()?;
    let header: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    header.get("kid")?.as_str().map(str::to_owned)
}

struct State {
    kids: Vec<String>,
    text: String,
    /// When an unknown key id last caused a fetch.
    asked: Option<Instant>,
}

/// The key set, kept current for every runtime that follows it.
pub struct KeySetFeed {
    source: Source,
    state: Mutex<State>,
    /// Serialises fetches, so one rotation is fetched once.
    fetching: tokio::sync::Mutex<()>,
    followers: Mutex<Vec<Weak<Runtime>>>,
}

impl KeySetFeed {
    /// Fetches the set once; a source that does not give a JWK Set stops
    /// the start.
    pub async fn open(source: Source) -> Result<Arc<KeySetFeed>> {
        let text = source
            .fetch()
            .await
            .with_context(|| format!("--jwt-jwks {source}"))?;
        let kids = key_ids(&text).with_context(|| format!("--jwt-jwks {source}"))?;
        Ok(Arc::new(KeySetFeed {
            source,
            state: Mutex::new(State {
                kids,
                text,
                asked: None,
            }),
            fetching: tokio::sync::Mutex::new(()),
            followers: Mutex::new(Vec::new()),
        }))
    }

    /// The set's text now.
    pub fn text(&self) -> String {
        self.state
            .lock()
            .map(|s| s.text.clone())
            .unwrap_or_default()
    }

    /// Hands every new version of the set to `runtime`, and fetches again
    /// when its requests name an unknown key id.
    pub fn follow(self: &Arc<Self>, runtime: &Arc<Runtime>) {
        runtime.set_config("jwt-jwks", self.text());
        runtime.follow_key_set(self.clone());
        if let Ok(mut followers) = self.followers.lock() {
            followers.push(Arc::downgrade(runtime));
        }
    }

    /// Fetches again every [`REFRESH_EVERY`], until the feed is dropped.
    pub fn refresh_periodically(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let feed = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(REFRESH_EVERY);
            every.tick().await;
            loop {
                every.tick().await;
                let Some(feed) = feed.upgrade() else { return };
                feed.refresh().await;
            }
        })
    }

    /// Before a request: if its Bearer token names a key id the set lacks,
    /// fetch the set again (at most every [`MIN_REFRESH_GAP`]), so a
    /// rotation at the provider is picked up by its first new token.
    pub async fn refresh_for(&self, headers: &HeaderMap) {
        let Some(kid) = token_kid(headers) else {
            return;
        };
        let due = match self.state.lock() {
            Ok(mut s) => {
                let due = !s.kids.contains(&kid)
                    && s.asked.is_none_or(|at| at.elapsed() >= MIN_REFRESH_GAP);
                if due {
                    s.asked = Some(Instant::now());
                }
                due
            }
            Err(_) => false,
        };
        if due {
            self.refresh().await;
        }
    }

    /// Fetches the set; a new valid version goes to every follower, and a
    /// failed or invalid fetch keeps the current one.
    async fn refresh(&self) {
        let _one = self.fetching.lock().await;
        let fetched = self.source.fetch().await.and_then(|text| {
            let kids = key_ids(&text)?;
            Ok((text, kids))
        });
        let (text, kids) = match fetched {
            Ok(new) => new,
            Err(e) => {
                tracing::warn!(source = %self.source, "keeping the current JWK Set: {e:#}");
                return;
            }
        };
        let changed = match self.state.lock() {
            Ok(mut s) => {
                let changed = s.text != text;
                s.kids = kids;
                s.text = text.clone();
                changed
            }
            Err(_) => false,
        };
        if changed {
            tracing::info!(source = %self.source, "the JWK Set changed");
            let followers: Vec<Arc<Runtime>> = self
                .followers
                .lock()
                .map(|f| f.iter().filter_map(Weak::upgrade).collect())
                .unwrap_or_default();
            for runtime in followers {
                runtime.set_config("jwt-jwks", text.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A password in the URL would be printed in the banner, the logs and
    /// errors: refused, and not repeated in the refusal.
    #[test]
    fn a_key_set_url_with_credentials_is_refused_without_echoing_them() {
        for value in [
            "https://user:s3cret@idp.example/jwks.json",
            "http://s3cret@127.0.0.1:9/.well-known/jwks.json",
            "https://user:s3cret@idp.example",
        ] {
            let Err(e) = Source::parse(value) else {
                panic!("{value} was accepted");
            };
            let message = format!("{e:#}");
            assert!(message.contains("credentials"), "{message}");
            assert!(!message.contains("s3cret"), "{message}");
        }
        // An @ after the host (in the path or query) is no credential.
        assert!(Source::parse("https://idp.example/keys/@team/jwks.json").is_ok());
        assert!(Source::parse("https://idp.example/jwks?owner=a@b").is_ok());
    }

    #[test]
    fn key_ids_come_from_a_jwk_set_only() {
        assert_eq!(
            key_ids(r#"{"keys": [{"kid": "a"}, {"kty": "RSA"}, {"kid": "b"}]}"#).unwrap(),
            ["a", "b"]
        );
        for bad in [
            "",
            "[]",
            "{}",
            r#"{"keys": []}"#,
            r#"{"keys": {}}"#,
            "<html>",
        ] {
            assert!(key_ids(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_kid_of_a_bearer_token() {
        let header = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert(AUTHORIZATION, value.parse().unwrap());
            h
        };
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let token = format!("{}.e30.sig", b64(r#"{"alg":"RS256","kid":"k1"}"#));
        assert_eq!(
            token_kid(&header(&format!("Bearer {token}"))).as_deref(),
            Some("k1")
        );
        assert_eq!(
            token_kid(&header(&format!("bearer  {token}"))).as_deref(),
            Some("k1")
        );
        let no_kid = format!("{}.e30.sig", b64(r#"{"alg":"HS256"}"#));
        assert_eq!(token_kid(&header(&format!("Bearer {no_kid}"))), None);
        assert_eq!(token_kid(&header("Basic abc")), None);
        assert_eq!(token_kid(&header("Bearer !!!")), None);
        assert_eq!(token_kid(&HeaderMap::new()), None);
    }
}
