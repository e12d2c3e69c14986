//! Properties of the route table and of `decide`, over generated requests:
//! whatever the path, headers or framing, a forwarded request names upstream
//! exactly the resource its permission was checked for, carries none of the
//! headers the gateway owns, and `decide` (head only) agrees with `handle`
//! (the `wasi:http` handler's decision).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;
use sigma_keys_guest::domain::api::{
    self, BodyError, BodySource, Caller, Decision, Outcome, RequestHead, Settings,
};
use sigma_keys_guest::domain::headers::{
    self, FORWARDED_FOR, FORWARDED_HOST, FORWARDED_PROTO, IDENTITY_HEADERS,
};
use sigma_keys_guest::domain::keys;
use sigma_keys_guest::domain::memory::MemoryStore;
use sigma_keys_guest::domain::permission::Permission;
use sigma_keys_guest::domain::routes::{self, COLLECTIONS, METHODS};
use sigma_keys_guest::domain::upstream::Upstream;

struct Body(Vec<u8>);

impl BodySource for Body {
    fn read_limited(&mut self, limit: usize) -> Result<Vec<u8>, BodyError> {
        if self.0.len() > limit {
            Err(BodyError::TooLarge)
        } else {
            Ok(std::mem::take(&mut self.0))
        }
    }
}

/// Segments that are, or look like, what attackers send.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(
            COLLECTIONS
                .iter()
                .map(|(c, _)| c.to_string())
                .collect::<Vec<_>>()
        ),
        "[a-zA-Z0-9._~-]{1,12}",
        prop::sample::select(
            [
                ".",
                "..",
                "..;",
                "%2e%2e",
                "%2E%2e;x=1",
                ";jsessionid=1",
                "%00",
                "%2f",
                "%252e",
                "%c0%ae",
                "\u{ff0e}\u{ff0e}",
                "a\\b",
                "a:b",
                "",
                "r1;",
                "api-keys",
                "verify",
                "deactivate",
                "%3F",
                "%23",
                "a?b",
                "a#b",
                " ",
                "\u{e9}",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
        ),
        any::<String>(),
    ]
}

fn collection() -> impl Strategy<Value = String> {
    prop::sample::select(
        COLLECTIONS
            .iter()
            .map(|(c, _)| c.to_string())
            .collect::<Vec<_>>(),
    )
}

fn tail() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "",
        "",
        "/",
        "?x=1",
        "?_method=DELETE",
        "?a=%2e%2e;b",
        "?%5Fmethod=x",
    ])
}

/// Mostly resource paths (collection, id, collection, ...), some with one
/// segment swapped for a tricky one; the rest anything at all.
fn path() -> impl Strategy<Value = String> {
    let resource = (
        prop::collection::vec((collection(), "[a-zA-Z0-9._~-]{1,12}"), 1..4),
        any::<bool>(),
        prop::option::of((any::<prop::sample::Index>(), segment())),
        tail(),
    )
        .prop_map(|(pairs, end_on_id, swap, tail)| {
            let mut segments: Vec<String> = pairs.into_iter().flat_map(|(c, id)| [c, id]).collect();
            if !end_on_id {
                segments.pop();
            }
            if let Some((at, tricky)) = swap {
                let i = at.index(segments.len());
                segments[i] = tricky;
            }
            format!("/api/v1/{}{tail}", segments.join("/"))
        });
    let anything = (
        prop::sample::select(vec![
            "/api/v1/",
            "/api/v1",
            "/api/v2/",
            "/",
            "/api/v1//",
            "//api/v1/",
        ]),
        prop::collection::vec(segment(), 0..6),
        tail(),
    )
        .prop_map(|(base, segments, tail)| format!("{base}{}{tail}", segments.join("/")));
    prop_oneof![3 => resource, 1 => anything]
}

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(
            METHODS
                .iter()
                .map(|(m, _)| m.to_string())
                .collect::<Vec<_>>()
        ),
        prop::sample::select(vec![
            "OPTIONS".to_string(),
            "TRACE".into(),
            "get".into(),
            "CONNECT".into()
        ]),
    ]
}

fn header() -> impl Strategy<Value = (String, Vec<u8>)> {
    (
        prop_oneof![
            prop::sample::select(
                [
                    "x-sigma-tenant",
                    "x_sigma_tenant",
                    "x-sigma-key-id",
                    "x-sigma-permission",
                    "x-sigma-subject",
                    "forwarded",
                    "x-forwarded-for",
                    "x-forwarded-host",
                    "x-real-ip",
                    "x-original-url",
                    "x-rewrite-url",
                    "x-http-method-override",
                    "x-method-override",
                    "content-length",
                    "transfer-encoding",
                    "connection",
                    "host",
                    "accept",
                    "x-request-id",
                    "te",
                    "upgrade",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
            ),
            "[a-z_-]{1,16}",
        ],
        prop_oneof![
            prop::sample::select(vec![
                b"0".to_vec(),
                b"5".to_vec(),
                b"chunked".to_vec(),
                b"globex".to_vec(),
                b"close, x-request-id".to_vec(),
                b"pim.example".to_vec(),
            ]),
            prop::collection::vec(any::<u8>(), 0..8),
        ],
    )
}

/// A store with one key of acme's, and the header that carries it.
fn store_with_key(permissions: &[Permission]) -> (MemoryStore, Vec<(String, Vec<u8>)>) {
    let store = MemoryStore::default();
    let new = keys::NewKey {
        name: "prop",
        permissions,
        expires_at: None,
    };
    let actor = sigma_keys_guest::domain::events::Actor::cli();
    let (_, raw) = keys::create(&store, "acme", &new, &actor, 10).unwrap();
    let header = (
        "x-sigma-apikey".to_string(),
        raw.expose().as_bytes().to_vec(),
    );
    (store, vec![header])
}

fn settings() -> Settings {
    Settings {
        jwt_secret: Some(b"0123456789abcdef0123456789abcdef".to_vec()),
        upstream: Some(Upstream::parse("http://127.0.0.1:9/base").unwrap()),
        ..Settings::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// A path the route table accepts is made only of allowlisted segments,
    /// and its permission is the one of its last collection.
    #[test]
    fn an_accepted_path_is_plain_and_its_last_collection_decides(m in method(), p in path()) {
        if let Ok(permission) = routes::required_permission(&m, &p) {
            let path = p.split_once('?').map_or(p.as_str(), |(p, _)| p);
            let rest = path.strip_prefix("/api/v1/").unwrap();
            let rest = rest.strip_suffix('/').unwrap_or(rest);
            let segments: Vec<&str> = rest.split('/').collect();
            for s in &segments {
                prop_assert!(!s.is_empty() && *s != "." && *s != "..", "{p}");
                prop_assert!(s.bytes().all(routes::is_unreserved), "{p}");
            }
            let last = segments.iter().step_by(2).next_back().unwrap();
            let class = COLLECTIONS.iter().find(|(c, _)| c == last).unwrap().1;
            let action = METHODS.iter().find(|(name, _)| *name == m).unwrap().1;
            prop_assert_eq!(permission, routes::permission_for(action, class));
        }
    }

    /// Whatever the request, `decide` agrees with `handle`, and a forward
    /// goes to the same path (under the prefix), with the checked permission
    /// and none of the headers the gateway owns but its own.
    #[test]
    fn decide_agrees_with_handle_and_forwards_only_what_it_checked(
        m in method(),
        p in path(),
        extra in prop::collection::vec((header(), any::<bool>()), 0..4),
        framing in prop::option::of(prop::sample::select(vec![
            ("content-length", "0"),
            ("content-length", "5"),
            ("content-length", "12"),
            ("transfer-encoding", "chunked"),
        ])),
        key_permissions in prop::sample::subsequence(Permission::ALL.to_vec(), 1..=5),
    ) {
        let (store, mut headers) = store_with_key(&key_permissions);
        // Some hosts pass names as the client spelled them.
        headers.extend(extra.into_iter().map(|((name, value), upper)| {
            (if upper { name.to_ascii_uppercase() } else { name }, value)
        }));
        if let Some((name, value)) = framing {
            headers.push((name.to_string(), value.as_bytes().to_vec()));
        }
        let borrowed = headers::borrowed(&headers);
        let head = RequestHead {
            method: &m,
            path_with_query: &p,
            headers: &borrowed,
            peer: Some("198.51.100.1"),
            tls: false,
        };
        let s = settings();
        let mut decided_caller = Caller::default();
        let decision = api::decide(&store, &s, &head, &mut decided_caller);
        let mut caller = Caller::default();
        let outcome = api::handle(&store, &s, &head, &mut Body(Vec::new()), &mut caller);
        match (&decision, &outcome) {
            (Decision::Handle, _) => prop_assert!(p.starts_with("/api/v1/api-keys"), "{m} {p}"),
            (Decision::Reply(d), Outcome::Reply(h)) => {
                prop_assert_eq!(format!("{d:?}"), format!("{h:?}"));
                prop_assert_eq!(&decided_caller, &caller);
            }
            (Decision::Forward(d), Outcome::Forward(h)) => {
                prop_assert_eq!(format!("{d:?}"), format!("{h:?}"));
                prop_assert_eq!(&decided_caller, &caller);
            }
            _ => prop_assert!(false, "{m} {p}: decide {decision:?}, handle {outcome:?}"),
        }
        if let Decision::Forward(plan) = decision {
            prop_assert_eq!(plan.path_with_query.clone(), format!("/base{p}"));
            let permission = routes::required_permission(&m, &p).unwrap();
            prop_assert!(key_permissions.contains(&permission));
            let forwarded = plan.headers(&borrowed);
            let sent = |name: &str| -> Vec<Vec<u8>> {
                forwarded.iter().filter(|(n, _)| n == name).map(|(_, v)| v.clone()).collect()
            };
            prop_assert_eq!(sent("x-sigma-permission"), vec![permission.name().as_bytes().to_vec()]);
            prop_assert_eq!(sent("x-sigma-tenant"), vec![b"acme".to_vec()]);
            prop_assert_eq!(sent("x-forwarded-for"), vec![b"198.51.100.1".to_vec()]);
            // The documented rules, spelled out here apart from the code.
            let owned = |name: &str| {
                name.contains('_')
                    || name.starts_with("x-sigma-")
                    || name.starts_with("x-forwarded-")
                    || [
                        "forwarded", "x-real-ip", "x-original-url", "x-rewrite-url",
                        "x-http-method-override", "x-http-method", "x-method-override",
                    ]
                    .contains(&name)
            };
            let hop_by_hop = [
                "connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
                "http2-settings", "host",
            ];
            let nominated: Vec<String> = headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
                .flat_map(|(_, v)| {
                    String::from_utf8_lossy(v)
                        .split(',')
                        .map(|t| t.trim().to_ascii_lowercase())
                        .collect::<Vec<_>>()
                })
                .collect();
            for (name, value) in &forwarded {
                let ours = IDENTITY_HEADERS.contains(&name.as_str())
                    || [FORWARDED_FOR, FORWARDED_PROTO, FORWARDED_HOST].contains(&name.as_str());
                if !ours {
                    prop_assert!(!owned(name), "{name} was forwarded");
                    prop_assert!(
                        headers.iter().any(|(n, v)| n.eq_ignore_ascii_case(name) && v == value),
                        "{name} was made up"
                    );
                }
                prop_assert!(!hop_by_hop.contains(&name.as_str()), "{name}");
                prop_assert!(!nominated.contains(name), "{name}");
            }
            // Nothing else is dropped: every other client header reaches the
            // upstream, as often as it was sent.
            for (name, value) in &headers {
                let name = name.to_ascii_lowercase();
                let dropped = owned(&name)
                    || hop_by_hop.contains(&name.as_str())
                    || nominated.contains(&name)
                    || name == "authorization";
                if !dropped {
                    let count = |hs: &[(String, Vec<u8>)]| {
                        hs.iter().filter(|(n, v)| n.eq_ignore_ascii_case(&name) && v == value).count()
                    };
                    prop_assert_eq!(count(&forwarded), count(&headers), "{} was dropped", name);
                }
            }
            // A bodyless method never forwards a body's framing.
            if ["GET", "HEAD", "DELETE", "OPTIONS"].contains(&m.as_str()) {
                prop_assert!(sent("content-length").iter().all(|v| v == b"0"));
            }
        }
    }

    /// Whatever the request, a proxy asking `/_sigma/auth/forward` or
    /// `/_sigma/auth/envoy/...` about it is allowed exactly when the gateway
    /// would forward it, with the same identity, and refused with the same
    /// status and code otherwise.
    #[test]
    fn the_authorization_endpoints_agree_with_the_gateway(
        m in method(),
        p in path(),
        extra in prop::collection::vec(header(), 0..4),
        key_permissions in prop::sample::subsequence(Permission::ALL.to_vec(), 1..=5),
    ) {
        let (store, mut headers) = store_with_key(&key_permissions);
        // The original's framing is the proxy's to check: it never reaches us.
        headers.extend(extra.into_iter().filter(|(n, _)| {
            !n.starts_with("x-forwarded-") && n != "content-length" && n != "transfer-encoding"
        }));
        let s = settings();
        let head = |method: &'static str, path: &str, headers: &[(String, Vec<u8>)]| {
            let (method, path) = (method.to_owned(), path.to_owned());
            let headers = headers::borrowed(headers);
            let mut caller = Caller::default();
            let head = RequestHead {
                method: &method,
                path_with_query: &path,
                headers: &headers,
                peer: Some("198.51.100.1"),
                tls: false,
            };
            api::decide(&store, &s, &head, &mut caller)
        };
        let leaked: &'static str = Box::leak(m.clone().into_boxed_str());
        let gateway = head(leaked, &p, &headers);
        let mut asking = headers.clone();
        asking.push(("x-forwarded-method".into(), m.as_bytes().to_vec()));
        asking.push(("x-forwarded-uri".into(), p.as_bytes().to_vec()));
        let forward = head("GET", "/_sigma/auth/forward", &asking);
        let envoy = head(leaked, &format!("/_sigma/auth/envoy{p}"), &headers);
        let identity = |hs: &[(String, Vec<u8>)]| -> Vec<(String, Vec<u8>)> {
            hs.iter()
                .filter(|(n, v)| IDENTITY_HEADERS.contains(&n.as_str()) && !v.is_empty())
                .cloned()
                .collect()
        };
        // Header values are ASCII: a proxy percent-encodes what is not.
        let readable = p.is_ascii() && m.is_ascii();
        for (name, answer) in [("forward", forward), ("envoy", envoy)] {
            let Decision::Reply(answer) = answer else {
                prop_assert!(false, "an authorization endpoint did not reply");
                unreachable!();
            };
            let (status, answer_headers, body) = answer.to_http();
            if name == "forward" && !readable {
                prop_assert_eq!(status, 400, "{} {}", m, p);
                continue;
            }
            match &gateway {
                Decision::Forward(plan) => {
                    prop_assert_eq!(status, 200, "{} {}", m, p);
                    prop_assert!(body.is_empty());
                    prop_assert_eq!(identity(&answer_headers), identity(&plan.headers(&headers::borrowed(&headers))));
                }
                Decision::Reply(refused) => {
                    let (gateway_status, _, gateway_body) = refused.to_http();
                    let code = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b)
                        .ok()
                        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned));
                    if gateway_status < 400 {
                        continue;
                    }
                    prop_assert_eq!(status, gateway_status, "{} {}", m, p);
                    prop_assert_eq!(code(&body), code(&gateway_body), "{} {}", m, p);
                    prop_assert!(identity(&answer_headers).is_empty());
                }
                // A management endpoint is no resource behind a proxy.
                Decision::Handle => prop_assert!(status >= 400, "{} {}", m, p),
            }
        }
    }
}
