//! Which URL a check talks to, and whether an item may go there.
//!
//! One parser decides: the `url` crate (WHATWG), whose parsed `Url` is both what
//! `allowedHosts` is checked against and what the HTTP client connects to. Hosts are
//! compared as names (lower case, IDNA/punycode, one trailing dot stripped), never as the
//! addresses they resolve to.

use thiserror::Error;
use url::{Host, Url};

/// Why a URL is not one a check may request.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UrlRefusal {
    #[error("is not a valid URL: {0}")]
    Parse(url::ParseError),
    #[error("has scheme {0:?}: only http and https are supported")]
    Scheme(String),
    #[error("names no host")]
    NoHost,
    #[error(
        "carries a user name or password before its host (userinfo); its host is {host}, and credentials belong in auth"
    )]
    Userinfo { host: String },
}

/// Parses and normalizes `text` as a check URL: http or https, a host, no userinfo, one
/// trailing dot of the host stripped, no fragment.
pub fn parse_url(text: &str) -> Result<Url, UrlRefusal> {
    let url = Url::parse(text).map_err(UrlRefusal::Parse)?;
    normalize(url)
}

/// Resolves a redirect `Location` against the current URL, with the same rules.
pub fn join_url(base: &Url, location: &str) -> Result<Url, UrlRefusal> {
    let url = base.join(location).map_err(UrlRefusal::Parse)?;
    normalize(url)
}

fn normalize(mut url: Url) -> Result<Url, UrlRefusal> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(UrlRefusal::Scheme(truncate(url.scheme())));
    }
    let host = url.host_str().ok_or(UrlRefusal::NoHost)?.to_owned();
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlRefusal::Userinfo { host });
    }
    if let Some(Host::Domain(domain)) = url.host()
        && let Some(stripped) = domain.strip_suffix('.')
    {
        if stripped.is_empty() {
            return Err(UrlRefusal::NoHost);
        }
        let stripped = stripped.to_owned();
        url.set_host(Some(&stripped)).map_err(UrlRefusal::Parse)?;
    }
    url.set_fragment(None);
    Ok(url)
}

/// The URL's host as compared and shown: a lower-case ASCII name, an IPv4 address, or an
/// IPv6 address in brackets.
pub fn host_name(url: &Url) -> String {
    url.host_str().unwrap_or_default().to_owned()
}

/// `scheme://host:port/path`, the default port written out and without query or fragment:
/// what the audit trail records of a hop.
pub fn origin_and_path(url: &Url) -> String {
    format!(
        "{}://{}:{}{}",
        url.scheme(),
        host_name(url),
        url.port_or_known_default().unwrap_or_default(),
        url.path()
    )
}

/// Whether `allowed_hosts` (exact names, or `*.example.com` for any subdomain at any depth,
/// not the apex) lets an item go to `url`'s host. Wildcards match names only, never an IP
/// address.
pub fn host_allowed(allowed_hosts: &[String], url: &Url) -> bool {
    let Some(host) = url.host() else {
        return false;
    };
    allowed_hosts
        .iter()
        .any(|pattern| pattern_matches(pattern, &host))
}

fn pattern_matches(pattern: &str, host: &Host<&str>) -> bool {
    let pattern = pattern.trim();
    let pattern = pattern.strip_suffix('.').unwrap_or(pattern);
    if let Some(suffix) = pattern.strip_prefix("*.") {
        let (Ok(Host::Domain(suffix)), Host::Domain(name)) = (Host::parse(suffix), host) else {
            return false;
        };
        return name
            .strip_suffix(suffix.as_str())
            .is_some_and(|label| label.len() > 1 && label.ends_with('.'));
    }
    match (Host::parse(pattern), host) {
        (Ok(Host::Domain(p)), Host::Domain(name)) => p == *name,
        (Ok(Host::Ipv4(p)), Host::Ipv4(ip)) => p == *ip,
        (Ok(Host::Ipv6(p)), Host::Ipv6(ip)) => p == *ip,
        _ => false,
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(text: &str) -> String {
        host_name(&parse_url(text).unwrap_or_else(|e| panic!("{text}: {e}")))
    }

    #[test]
    fn hosts_are_normalized_the_way_the_client_connects() {
        let cases = [
            ("https://Shop.Example.COM/", "shop.example.com"),
            ("https://shop.example.com./x", "shop.example.com"),
            ("https://shop%2eexample.com/", "shop.example.com"),
            ("https://shop%2Eexample.com/", "shop.example.com"),
            ("https://shop。example.com/", "shop.example.com"),
            ("https://shop．example.com/", "shop.example.com"),
            ("https://bücher.example/", "xn--bcher-kva.example"),
            ("https://0x7f.1/", "127.0.0.1"),
            ("https://[::ffff:127.0.0.1]/", "[::ffff:7f00:1]"),
            ("https://evil.example\\@shop.example.com/", "evil.example"),
            ("https://evil.example\\.shop.example.com/", "evil.example"),
        ];
        for (url, want) in cases {
            assert_eq!(host(url), want, "{url}");
        }
    }

    #[test]
    fn userinfo_is_refused_and_the_refusal_names_the_real_host() {
        for url in [
            "https://shop.example.com@evil.example/",
            "https://user:pw@evil.example/",
            "https://:pw@evil.example/",
            "https://shop.example.com%40@evil.example/",
        ] {
            assert_eq!(
                parse_url(url),
                Err(UrlRefusal::Userinfo {
                    host: "evil.example".into()
                }),
                "{url}"
            );
        }
    }

    #[test]
    fn only_http_and_https_with_a_host() {
        assert!(matches!(
            parse_url("ftp://x.test/"),
            Err(UrlRefusal::Scheme(_))
        ));
        assert!(matches!(
            parse_url("file:///etc/passwd"),
            Err(UrlRefusal::Scheme(_))
        ));
        assert!(matches!(parse_url("not a url"), Err(UrlRefusal::Parse(_))));
        assert!(parse_url("https://./").is_err());
        let base = parse_url("https://shop.test/a/b").unwrap();
        assert!(matches!(
            join_url(&base, "javascript:alert(1)"),
            Err(UrlRefusal::Scheme(_))
        ));
    }

    #[test]
    fn locations_resolve_against_the_current_url() {
        let base = parse_url("https://shop.test:8443/a/b?q=1").unwrap();
        let cases = [
            ("/c", "https://shop.test:8443/c"),
            ("c", "https://shop.test:8443/a/c"),
            ("//evil.test/x", "https://evil.test/x"),
            ("http://shop.test/", "http://shop.test/"),
            ("\\\\evil.test\\x", "https://evil.test/x"),
            ("https://evil.test./#frag", "https://evil.test/"),
        ];
        for (location, want) in cases {
            assert_eq!(
                join_url(&base, location).unwrap().as_str(),
                want,
                "{location}"
            );
        }
    }

    #[test]
    fn the_audit_form_has_the_default_port_and_no_query() {
        let url = parse_url("https://shop.test/p?token=x#f").unwrap();
        assert_eq!(origin_and_path(&url), "https://shop.test:443/p");
        let url = parse_url("http://shop.test:8080/").unwrap();
        assert_eq!(origin_and_path(&url), "http://shop.test:8080/");
    }

    #[test]
    fn allowed_hosts_match_exact_names_and_subdomain_wildcards() {
        let allowed = vec![
            "shop.example.com".to_owned(),
            "*.api.example.com".to_owned(),
        ];
        let ok = |u: &str| host_allowed(&allowed, &parse_url(u).unwrap());
        assert!(ok("https://shop.example.com/"));
        assert!(ok("https://SHOP.example.com./"));
        assert!(ok("https://shop%2eexample.com/"));
        assert!(ok("https://shop。example.com/"));
        assert!(ok("https://v1.api.example.com/"));
        assert!(ok("https://a.b.api.example.com/"));
        assert!(
            !ok("https://api.example.com/"),
            "a wildcard is not the apex"
        );
        assert!(!ok("https://xapi.example.com/"));
        assert!(!ok("https://shop.example.com.evil.test/"));
        assert!(!ok("https://evil.test/shop.example.com"));
        assert!(!ok("https://evil.example\\@shop.example.com/"));
        assert!(!ok("https://example.com/"));
    }

    #[test]
    fn ip_hosts_match_only_exactly() {
        let allowed = vec!["127.0.0.1".to_owned(), "*.0.0.1".to_owned()];
        assert!(host_allowed(
            &allowed,
            &parse_url("https://127.0.0.1/").unwrap()
        ));
        assert!(host_allowed(
            &allowed,
            &parse_url("https://0x7f000001/").unwrap()
        ));
        assert!(!host_allowed(
            &allowed,
            &parse_url("https://10.0.0.1/").unwrap()
        ));
        assert!(!host_allowed(
            &[],
            &parse_url("https://shop.test/").unwrap()
        ));
    }
}
