//! The header names the gateway reads, sets and owns, as data, and the rules
//! for which client headers may reach the upstream.

use std::borrow::Cow;

/// The header that carries a raw key.
pub const API_KEY_HEADER: &str = "x-sigma-apikey";

/// Identity headers we set for the upstream; never trusted from clients.
pub const IDENTITY_HEADERS: [&str; 4] = [
    "x-sigma-tenant",
    "x-sigma-key-id",
    "x-sigma-permission",
    "x-sigma-subject",
];

/// Where the request came from, as we set it for the upstream.
pub const FORWARDED_FOR: &str = "x-forwarded-for";
/// The scheme the client used.
pub const FORWARDED_PROTO: &str = "x-forwarded-proto";
/// The `Host` the client asked for.
pub const FORWARDED_HOST: &str = "x-forwarded-host";

/// Hop-by-hop headers (RFC 9110 7.6.1 plus common legacy ones) and `host`,
/// which a proxy must not pass on.
pub const HOP_BY_HOP: [&str; 11] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
    "host",
];

/// Client headers the gateway owns, by exact (lower-case) name: upstreams
/// believe them about the client, the route or the method, so only the
/// gateway may set them.
pub const OWNED_NAMES: [&str; 7] = [
    "forwarded",
    "x-real-ip",
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Client headers the gateway owns, by (lower-case) prefix.
pub const OWNED_PREFIXES: [&str; 2] = ["x-sigma-", "x-forwarded-"];

/// A header as the domain reads it: its name and raw value, borrowed from
/// wherever the request's head is kept.
pub type HeaderRef<'a> = (&'a str, &'a [u8]);

/// `headers` borrowed as the domain reads them.
pub fn borrowed(headers: &[(String, Vec<u8>)]) -> Vec<HeaderRef<'_>> {
    headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_slice()))
        .collect()
}

/// Strings back to back in one buffer, and where each ends: the WIT
/// `packed` record, so two lists cross the component boundary instead of
/// one per string. An end past `u32::MAX` (never, under the memory limit)
/// is written as `u32::MAX`, which every reader refuses.
pub fn pack<'a>(parts: impl Iterator<Item = &'a [u8]> + Clone) -> (Vec<u8>, Vec<u32>) {
    let mut bytes = Vec::with_capacity(parts.clone().map(<[u8]>::len).sum());
    let mut ends = Vec::with_capacity(parts.clone().count());
    for part in parts {
        bytes.extend_from_slice(part);
        ends.push(u32::try_from(bytes.len()).unwrap_or(u32::MAX));
    }
    (bytes, ends)
}

/// Headers packed as name, value, name, value, ... (see [`pack`]), built
/// one at a time: the plan's added headers, written once in the form the
/// WIT `packed` record crosses in. Only [`PackedHeaders::push`] writes it,
/// so its ends are in order, paired, within the bytes and its names UTF-8.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PackedHeaders {
    bytes: Vec<u8>,
    ends: Vec<u32>,
}

impl PackedHeaders {
    /// `headers` packed, allocated once: its iterator is walked to size the
    /// buffers, then again to fill them.
    pub fn of<'a>(headers: impl Iterator<Item = HeaderRef<'a>> + Clone) -> PackedHeaders {
        let size = headers.clone().map(|(n, v)| n.len() + v.len()).sum();
        let mut packed = PackedHeaders {
            bytes: Vec::with_capacity(size),
            ends: Vec::with_capacity(2 * headers.clone().count()),
        };
        for (name, value) in headers {
            packed.push(name, value);
        }
        packed
    }

    /// Appends a header. An end past `u32::MAX` (never in wasm32, where
    /// memory itself ends there) is written as `u32::MAX`, which readers
    /// across the boundary refuse.
    pub fn push(&mut self, name: &str, value: &[u8]) {
        for part in [name.as_bytes(), value] {
            self.bytes.extend_from_slice(part);
            self.ends
                .push(u32::try_from(self.bytes.len()).unwrap_or(u32::MAX));
        }
    }

    /// The headers, in order.
    pub fn iter(&self) -> impl Iterator<Item = HeaderRef<'_>> {
        let mut start = 0;
        let mut parts = self.ends.iter().map(move |&end| {
            let end = usize::try_from(end).unwrap_or(usize::MAX);
            let part = self.bytes.get(start..end).unwrap_or_default();
            start = end;
            part
        });
        std::iter::from_fn(move || {
            let name = std::str::from_utf8(parts.next()?).unwrap_or_default();
            Some((name, parts.next()?))
        })
    }

    /// The bytes and ends, as the WIT `packed` record carries them.
    pub fn into_parts(self) -> (Vec<u8>, Vec<u32>) {
        (self.bytes, self.ends)
    }
}

/// Headers packed as name, value, name, value, ... (see [`pack`]); `None`
/// if an end goes backwards or past the bytes, a name has no value, or a
/// name is not UTF-8.
pub fn unpack_headers<'a>(bytes: &'a [u8], ends: &[u32]) -> Option<Vec<HeaderRef<'a>>> {
    if !ends.len().is_multiple_of(2) {
        return None;
    }
    let mut start = 0;
    let mut parts = ends.iter().map(|&end| {
        let end = usize::try_from(end).ok()?;
        let part = bytes.get(start..end)?;
        start = end;
        Some(part)
    });
    let mut headers = Vec::with_capacity(ends.len() / 2);
    while let (Some(name), Some(value)) = (parts.next(), parts.next()) {
        headers.push((std::str::from_utf8(name?).ok()?, value?));
    }
    Some(headers)
}

/// Whether a client header (lower-case name) is never forwarded because the
/// gateway owns its meaning. Names with `_` are owned too: CGI, WSGI and
/// PHP-FPM upstreams read `X_Sigma_Tenant` as `X-Sigma-Tenant`.
pub fn is_owned(name: &str) -> bool {
    name.contains('_')
        || OWNED_NAMES.contains(&name)
        || OWNED_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// The lower-case names, each once, of the headers in `headers` that a
/// proxy must not pass on: hop-by-hop headers, those the `Connection` header
/// names, and those `drop` refuses (it sees lower-case names). Since every
/// rule is about the name alone, removing every header of these names,
/// whatever its case, leaves exactly the headers to pass on.
pub fn not_forwarded(headers: &[HeaderRef<'_>], drop: impl Fn(&str) -> bool) -> Vec<String> {
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
    let mut names: Vec<String> = Vec::new();
    for (name, _) in headers {
        let name: Cow<'_, str> = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(name.to_ascii_lowercase())
        } else {
            Cow::Borrowed(*name)
        };
        let refused = HOP_BY_HOP.contains(&name.as_ref())
            || nominated.iter().any(|n| *n == name)
            || drop(&name);
        if refused && !names.iter().any(|n| *n == name) {
            names.push(name.into_owned());
        }
    }
    names
}

/// The headers of `headers` that are not among `names` (lower-case), with
/// lower-case names: what is left after removing every header of each name.
pub fn without(headers: &[HeaderRef<'_>], names: &[String]) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .filter(|(n, _)| !names.iter().any(|r| r.eq_ignore_ascii_case(n)))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.to_vec()))
        .collect()
}

/// Drops hop-by-hop headers, including any the `Connection` header names.
/// Names come back lower-case.
pub fn end_to_end_headers(headers: &[HeaderRef<'_>]) -> Vec<(String, Vec<u8>)> {
    without(headers, &not_forwarded(headers, |_| false))
}

/// A `Host` value we are willing to repeat as `X-Forwarded-Host`: a host
/// name or IP literal with an optional port, nothing an upstream could
/// mistake for a path or a list.
pub fn is_plain_authority(value: &[u8]) -> bool {
    (1..=255).contains(&value.len())
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_owns_identity_forwarding_override_and_underscore_names() {
        for name in [
            "x-sigma-tenant",
            "x-sigma-anything",
            "x_sigma_tenant",
            "x-sigma_tenant",
            "forwarded",
            "x-forwarded-for",
            "x-forwarded-prefix",
            "x-real-ip",
            "x-original-url",
            "x-rewrite-url",
            "x-http-method-override",
            "x-http-method",
            "x-method-override",
            "_",
        ] {
            assert!(is_owned(name), "{name}");
        }
        for name in ["accept", "content-type", "x-request-id", "authorization"] {
            assert!(!is_owned(name), "{name}");
        }
        for identity in
            IDENTITY_HEADERS
                .iter()
                .chain(&[FORWARDED_FOR, FORWARDED_PROTO, FORWARDED_HOST])
        {
            assert!(is_owned(identity), "{identity}");
        }
    }

    fn list<'a>(pairs: &[(&'a str, &'a str)]) -> Vec<HeaderRef<'a>> {
        pairs.iter().map(|(n, v)| (*n, v.as_bytes())).collect()
    }

    fn owned(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn names_not_forwarded_come_once_lower_case_whatever_the_case_sent() {
        let headers = list(&[
            ("Connection", "X-Hop, keep-alive"),
            ("connection", "x-OTHER"),
            ("X-Hop", "1"),
            ("x-hop", "2"),
            ("X-Other", "3"),
            ("X-Sigma-Tenant", "globex"),
            ("x-sigma-tenant", "initech"),
            ("Host", "a.example"),
            ("Accept", "*/*"),
            ("accept", "text/plain"),
        ]);
        let names = not_forwarded(&headers, is_owned);
        assert_eq!(
            names,
            ["connection", "x-hop", "x-other", "x-sigma-tenant", "host"]
        );
        assert_eq!(
            without(&headers, &names),
            owned(&[("accept", "*/*"), ("accept", "text/plain")])
        );
        // Removal is by name, whatever the case on either side.
        assert_eq!(
            without(&headers, &["ACCEPT".to_owned()]).len(),
            headers.len() - 2
        );
    }

    #[test]
    fn packed_headers_unpack_to_the_same_headers() {
        let headers = list(&[("host", "a.example"), ("x-empty", ""), ("accept", "*/*")]);
        let (bytes, ends) = pack(headers.iter().flat_map(|(n, v)| [n.as_bytes(), *v]));
        assert_eq!(ends, [4, 13, 20, 20, 26, 29]);
        assert_eq!(unpack_headers(&bytes, &ends), Some(headers));
        assert_eq!(unpack_headers(&[], &[]), Some(vec![]));
    }

    #[test]
    fn headers_packed_one_at_a_time_read_back_in_order() {
        let headers = list(&[("host", "a.example"), ("x-empty", ""), ("accept", "*/*")]);
        let packed = PackedHeaders::of(headers.iter().copied());
        assert_eq!(packed.iter().collect::<Vec<_>>(), headers);
        let mut pushed = PackedHeaders::default();
        for (name, value) in &headers {
            pushed.push(name, value);
        }
        assert_eq!(pushed, packed);
        let (bytes, ends) = packed.into_parts();
        assert_eq!(ends, [4, 13, 20, 20, 26, 29]);
        assert_eq!(unpack_headers(&bytes, &ends), Some(headers));
        assert_eq!(PackedHeaders::default().iter().count(), 0);
    }

    #[test]
    fn malformed_packed_headers_are_refused() {
        let bytes = b"hostaaccept*/*";
        assert!(unpack_headers(bytes, &[4, 5, 11, 14]).is_some());
        // A name without its value, an end past the bytes, an end going
        // backwards, an end past u32::MAX written as u32::MAX, a name that
        // is not UTF-8.
        for ends in [
            &[4, 5, 11][..],
            &[4, 5, 11, 15],
            &[4, 5, 3, 14],
            &[4, u32::MAX],
        ] {
            assert_eq!(unpack_headers(bytes, ends), None, "{ends:?}");
        }
        assert_eq!(unpack_headers(b"\xffv", &[1, 2]), None);
    }

    #[test]
    fn plain_authorities() {
        for ok in ["pim.example", "127.0.0.1:8080", "[::1]:80", "a-b.c"] {
            assert!(is_plain_authority(ok.as_bytes()), "{ok}");
        }
        for bad in ["", "a b", "a,b", "a/b", "a@b", "a\tb", "\u{e9}"] {
            assert!(!is_plain_authority(bad.as_bytes()), "{bad}");
        }
    }
}
