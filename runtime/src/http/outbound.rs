//! `WasmAllowOutbound`: which outgoing requests a component may make.
//! Nothing is allowed unless a pattern of its section allows it; a pattern
//! names a scheme, a host and a port (Spin's `allowed_outbound_hosts` is the
//! model), never a path: the server decides where a guest may connect, not
//! what it asks there.
//!
//! ```text
//! https://api.example.com        that host, port 443
//! http://127.0.0.1:8080          that address and port
//! https://*.example.com          every subdomain of example.com (not itself)
//! *://example.com:*              both schemes, every port
//! https://*                      every host, port 443
//! ```

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// One `WasmAllowOutbound` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    /// `None`: either scheme.
    scheme: Option<Scheme>,
    host: Host,
    port: Port,
}

/// The schemes an outgoing request may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `http`, port 80 by default.
    Http,
    /// `https`, port 443 by default.
    Https,
}

impl Scheme {
    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    /// Every host.
    Any,
    /// This name or address, lower-case, IPv6 without brackets.
    Is(String),
    /// Names ending with this (`.example.com`), the domain itself excluded.
    Under(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Port {
    /// The scheme's own port.
    Default,
    Any,
    Is(u16),
}

/// Where an outgoing request goes, as checked and as connected to: the
/// same host and port for both, so that what was allowed is what is
/// reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Its scheme.
    pub scheme: Scheme,
    /// Its host, lower-case, without a trailing dot, IPv6 without brackets.
    pub host: String,
    /// Its port, the scheme's when the request names none.
    pub port: u16,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host.contains(':') {
            true => write!(f, "{}://[{}]:{}", self.scheme.name(), self.host, self.port),
            false => write!(f, "{}://{}:{}", self.scheme.name(), self.host, self.port),
        }
    }
}

impl Target {
    /// The target of a request for `uri`, or why it has none.
    pub fn of(uri: &http::Uri) -> Result<Target, &'static str> {
        let scheme = match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("http") => Scheme::Http,
            Some(s) if s.eq_ignore_ascii_case("https") => Scheme::Https,
            Some(_) => return Err("its scheme is neither http nor https"),
            None => return Err("it has no scheme"),
        };
        let authority = uri.authority().ok_or("it has no host")?.as_str();
        // A user part would reach the upstream in its Host header, naming
        // another host than the one checked.
        if authority.contains('@') {
            return Err("it names a user");
        }
        let host = uri.host().ok_or("it has no host")?;
        let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) => v6
                .parse::<Ipv6Addr>()
                .map_err(|_| "its host is not an IPv6 address in []")?
                .to_string(),
            None => normal_host(host),
        };
        if host.is_empty() {
            return Err("it has no host");
        }
        // The http crate reads a port it cannot parse as none at all.
        let port = match split_port(authority) {
            Ok((_, None)) => scheme.default_port(),
            Ok((_, Some(p))) => match p.parse::<u16>() {
                Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err("its port is not a number from 1 to 65535"),
            },
            Err(why) => return Err(why),
        };
        Ok(Target { scheme, port, host })
    }

    /// The `Host` header of a request to this target: its host and, when
    /// it is not the scheme's, its port.
    pub fn host_header(&self) -> String {
        let host = match self.host.contains(':') {
            true => format!("[{}]", self.host),
            false => self.host.clone(),
        };
        match self.port == self.scheme.default_port() {
            true => host,
            false => format!("{host}:{}", self.port),
        }
    }
}

fn normal_host(host: &str) -> String {
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

impl Pattern {
    /// Parses one pattern, or says what is wrong with it.
    pub fn parse(text: &str) -> Result<Pattern, String> {
        let bad = |why: &str| {
            Err(format!(
                "'{text}' is not a scheme://host[:port] pattern: {why}"
            ))
        };
        let Some((scheme, rest)) = text.split_once("://") else {
            return bad("it has no scheme:// (http://, https:// or *://)");
        };
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => Some(Scheme::Http),
            "https" => Some(Scheme::Https),
            "*" => None,
            _ => return bad("the scheme is not http, https or *"),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#']) {
            return bad("it names a path (a pattern allows a host and port, whatever the path)");
        }
        if rest.contains('@') {
            return bad("it names a user");
        }
        let (host, port) = match split_port(rest) {
            Ok(hp) => hp,
            Err(why) => return bad(why),
        };
        let port = match port {
            None => Port::Default,
            Some("*") => Port::Any,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 && !p.starts_with('+') => Port::Is(n),
                _ => return bad("the port is not a number from 1 to 65535 or *"),
            },
        };
        let host = match parse_host(host) {
            Ok(h) => h,
            Err(why) => return bad(why),
        };
        Ok(Pattern { scheme, host, port })
    }

    /// Whether this pattern allows a request to `t`.
    pub fn allows(&self, t: &Target) -> bool {
        let scheme = self.scheme.is_none_or(|s| s == t.scheme);
        let port = match self.port {
            Port::Default => t.port == t.scheme.default_port(),
            Port::Any => true,
            Port::Is(p) => t.port == p,
        };
        let host = match &self.host {
            Host::Any => true,
            Host::Is(h) => *h == t.host,
            Host::Under(suffix) => t.host.len() > suffix.len() && t.host.ends_with(suffix.as_str()),
        };
        scheme && port && host
    }
}

/// `host[:port]` or `[v6][:port]`, split.
fn split_port(rest: &str) -> Result<(&str, Option<&str>), &'static str> {
    if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or("an IPv6 address lacks its ]")?;
        return match after {
            "" => Ok((host, None)),
            p => match p.strip_prefix(':') {
                Some(port) => Ok((host, Some(port))),
                None => Err("something follows the IPv6 address's ]"),
            },
        };
    }
    Ok(match rest.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (rest, None),
    })
}

fn parse_host(host: &str) -> Result<Host, &'static str> {
    if host == "*" {
        return Ok(Host::Any);
    }
    if let Ok(v6) = host.parse::<Ipv6Addr>() {
        return Ok(Host::Is(v6.to_string()));
    }
    if host.contains(':') {
        return Err("the host is neither a name nor an address (an IPv6 address goes in [])");
    }
    let (wild, name) = match host.strip_prefix("*.") {
        Some(name) => (true, name),
        None => (false, host),
    };
    let name = normal_host(name);
    if name.contains('*') {
        return Err("a * may only stand for the whole host or, as *., its subdomains");
    }
    let dns = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if name.is_empty() || !name.split('.').all(dns) {
        return Err("the host is not a DNS name or an IP address");
    }
    // A dotted quad must be a real address, not a name that looks like one:
    // the resolver reads `127.1` and `0x7f.1` as 127.0.0.1.
    let number = |l: &str| match l.strip_prefix("0x") {
        Some(hex) => hex.bytes().all(|b| b.is_ascii_hexdigit()),
        None => l.bytes().all(|b| b.is_ascii_digit()),
    };
    let numeric = name.split('.').all(number);
    if numeric && (wild || name.parse::<Ipv4Addr>().is_err()) {
        return Err("the host is not a DNS name or an IP address");
    }
    Ok(match wild {
        true => Host::Under(format!(".{name}")),
        false => Host::Is(name),
    })
}

/// The first pattern of `patterns` that allows `t`; patterns that do not
/// parse allow nothing (the server checks them at configuration time).
pub fn allowed<'p>(patterns: &'p [String], t: &Target) -> Option<&'p str> {
    patterns
        .iter()
        .find(|p| Pattern::parse(p).is_ok_and(|p| p.allows(t)))
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(uri: &str) -> Target {
        Target::of(&uri.parse::<http::Uri>().unwrap()).unwrap()
    }

    fn allows(pattern: &str, uri: &str) -> bool {
        Pattern::parse(pattern).unwrap().allows(&target(uri))
    }

    #[test]
    fn a_host_pattern_allows_that_host_on_its_scheme_s_port_only() {
        assert!(allows(
            "https://api.example.com",
            "https://api.example.com/v1?x=1"
        ));
        assert!(allows(
            "https://api.example.com",
            "https://API.Example.COM.:443/"
        ));
        assert!(!allows(
            "https://api.example.com",
            "http://api.example.com/"
        ));
        assert!(!allows(
            "https://api.example.com",
            "https://api.example.com:8443/"
        ));
        assert!(!allows("https://api.example.com", "https://example.com/"));
        assert!(!allows(
            "https://api.example.com",
            "https://api.example.com.evil.test/"
        ));
        assert!(!allows(
            "https://api.example.com",
            "https://xapi.example.com/"
        ));
    }

    #[test]
    fn ports_and_schemes_can_be_named_or_left_open() {
        assert!(allows("http://127.0.0.1:8080", "http://127.0.0.1:8080/x"));
        assert!(!allows("http://127.0.0.1:8080", "http://127.0.0.1:8081/x"));
        assert!(!allows("http://127.0.0.1:8080", "http://127.0.0.2:8080/x"));
        assert!(allows("*://example.com:*", "http://example.com:1/"));
        assert!(allows("*://example.com:*", "https://example.com/"));
        assert!(allows("*://example.com", "http://example.com/"));
        assert!(allows("*://example.com", "https://example.com/"));
        assert!(!allows("*://example.com", "https://example.com:80/"));
        assert!(allows("http://[::1]:9000", "http://[::1]:9000/"));
        assert!(allows("http://[0:0::1]:9000", "http://[::0:1]:9000/"));
        assert!(!allows("http://[::1]:9000", "http://127.0.0.1:9000/"));
    }

    #[test]
    fn a_wildcard_allows_subdomains_but_not_the_domain_itself() {
        assert!(allows("https://*.example.com", "https://a.example.com/"));
        assert!(allows("https://*.example.com", "https://a.b.example.com/"));
        assert!(!allows("https://*.example.com", "https://example.com/"));
        assert!(!allows("https://*.example.com", "https://badexample.com/"));
        assert!(!allows(
            "https://*.example.com",
            "https://a.example.com.evil.test/"
        ));
        assert!(allows("https://*", "https://anything.test/"));
        assert!(!allows("https://*", "http://anything.test/"));
    }

    #[test]
    fn bad_patterns_say_what_is_wrong() {
        for (p, why) in [
            ("example.com", "no scheme"),
            ("ftp://example.com", "not http, https"),
            ("https://example.com/api", "path"),
            ("https://example.com?x", "path"),
            ("https://user@example.com", "user"),
            ("https://example.com:0", "port"),
            ("https://example.com:65536", "port"),
            ("https://example.com:http", "port"),
            ("https://a.*.example.com", "a * may only"),
            ("https://*example.com", "a * may only"),
            ("https://", "not a DNS name"),
            ("https://exa mple.com", "not a DNS name"),
            ("https://-a.com", "not a DNS name"),
            ("https://999.1.1.1", "not a DNS name"),
            ("https://*.10.0.0.1", "not a DNS name"),
            ("https://[::1", "lacks its ]"),
            ("https://::1", "in []"),
            ("https://0x7f000001", "not a DNS name"),
            ("https://0x7f.1", "not a DNS name"),
            ("https://*.0x1", "not a DNS name"),
            ("https://127.1", "not a DNS name"),
        ] {
            let e = Pattern::parse(p).unwrap_err();
            assert!(e.contains(why), "{p}: {e}");
            assert!(e.contains(p), "{p}: {e}");
        }
    }

    #[test]
    fn the_first_pattern_that_allows_a_target_is_named() {
        let list = [
            "bad pattern".to_string(),
            "http://a.test".into(),
            "http://*.test".into(),
        ];
        assert_eq!(
            allowed(&list, &target("http://b.test/")),
            Some("http://*.test")
        );
        assert_eq!(
            allowed(&list, &target("http://a.test/")),
            Some("http://a.test")
        );
        assert_eq!(allowed(&list, &target("https://a.test/")), None);
        assert_eq!(allowed(&[], &target("https://a.test/")), None);
    }

    #[test]
    fn a_target_is_shown_without_path_or_query() {
        assert_eq!(
            target("https://A.test/secret?token=1").to_string(),
            "https://a.test:443"
        );
        assert_eq!(target("http://[::1]:9/x").to_string(), "http://[::1]:9");
        let bad = |u: &str| Target::of(&u.parse::<http::Uri>().unwrap()).unwrap_err();
        assert_eq!(bad("/relative"), "it has no scheme");
        assert_eq!(bad("http://admin.test@127.0.0.1:9/"), "it names a user");
        assert_eq!(
            bad("http://a.test:99999/"),
            "its port is not a number from 1 to 65535"
        );
        assert_eq!(
            bad("http://[fe80::1%25eth0]/"),
            "its host is not an IPv6 address in []"
        );
        assert_eq!(target("https://A.test:443/").host_header(), "a.test");
        assert_eq!(target("http://[::1]:9/").host_header(), "[::1]:9");
        assert_eq!(bad("ftp://x.test/"), "its scheme is neither http nor https");
    }
}
