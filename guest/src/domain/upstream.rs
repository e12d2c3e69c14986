//! The upstream that authorized requests are forwarded to.

/// `http` or `https`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// A parsed `--upstream` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    pub scheme: Scheme,
    /// `host[:port]`.
    pub authority: String,
    /// A path prefix kept in front of every forwarded path, without a trailing slash.
    pub prefix: String,
}

impl Upstream {
    /// Parses `http(s)://host[:port][/prefix]`; no query, fragment or user info.
    pub fn parse(url: &str) -> Result<Upstream, String> {
        let (scheme, rest) = if let Some(r) = url.strip_prefix("http://") {
            (Scheme::Http, r)
        } else if let Some(r) = url.strip_prefix("https://") {
            (Scheme::Https, r)
        } else {
            return Err("the upstream URL must start with http:// or https://".into());
        };
        if rest.contains(['?', '#', '@', ' ']) {
            return Err(
                "the upstream URL must not have a query, fragment, user info or spaces".into(),
            );
        }
        let (authority, prefix) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        if authority.is_empty() {
            return Err("the upstream URL has no host".into());
        }
        let prefix = prefix.trim_end_matches('/');
        Ok(Upstream {
            scheme,
            authority: authority.to_owned(),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("/{prefix}")
            },
        })
    }

    /// The path and query to request upstream for a client's path and query.
    pub fn path_for(&self, path_with_query: &str) -> String {
        // One allocation of the exact size (`format!` would grow its buffer
        // piece by piece); this runs for every forwarded request.
        let mut path = String::with_capacity(self.prefix.len() + path_with_query.len());
        path.push_str(&self.prefix);
        path.push_str(path_with_query);
        path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_scheme_authority_and_prefix() {
        let u = Upstream::parse("http://127.0.0.1:9000").unwrap();
        assert_eq!(
            (u.scheme, u.authority.as_str(), u.prefix.as_str()),
            (Scheme::Http, "127.0.0.1:9000", "")
        );
        assert_eq!(u.path_for("/api/v1/records?x=1"), "/api/v1/records?x=1");
        let u = Upstream::parse("https://pim.example/base/v/").unwrap();
        assert_eq!((u.scheme, u.prefix.as_str()), (Scheme::Https, "/base/v"));
        assert_eq!(u.path_for("/api/v1/records"), "/base/v/api/v1/records");
    }

    #[test]
    fn refuses_what_it_cannot_forward_to() {
        for bad in [
            "",
            "ftp://x",
            "127.0.0.1:9000",
            "http://",
            "http:///x",
            "http://a?b",
            "http://u@h",
            "http://h#f",
        ] {
            assert!(Upstream::parse(bad).is_err(), "{bad}");
        }
    }
}
