//! Where a check may connect: "no reaching inside by default".
//!
//! Unless [`NetworkPolicy::allow_internal`] is set, a check refuses loopback, unspecified,
//! link-local (cloud metadata at 169.254.169.254 included), multicast and broadcast
//! addresses, and the cluster's own ranges in [`NetworkPolicy::blocked`]; an IPv4-mapped
//! IPv6 address is judged as the IPv4 address it carries.
//!
//! Names are resolved by [`PolicyResolver`], which checks every address and hands the
//! HTTP client only those same checked addresses, so a second DNS answer (rebinding) never
//! reaches the socket. An IP literal in a URL never reaches a resolver, so the engine checks
//! it with [`refusal`] before it sends.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use thiserror::Error;

/// Where checks may connect.
#[derive(Clone, Debug, Default)]
pub struct NetworkPolicy {
    /// Allow loopback, link-local and the `blocked` ranges (local mode and tests).
    pub allow_internal: bool,
    /// The cluster's service and pod CIDRs, refused unless `allow_internal`.
    pub blocked: Vec<IpNet>,
    /// Like curl's `--resolve`: these names resolve to these addresses, before DNS. Keys are
    /// lower-case names without a trailing dot.
    pub resolve: HashMap<String, Vec<IpAddr>>,
}

/// Why an address may not be reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressClass {
    Loopback,
    Unspecified,
    LinkLocal,
    Multicast,
    Broadcast,
    Metadata,
    Blocked,
}

impl AddressClass {
    pub fn as_str(self) -> &'static str {
        match self {
            AddressClass::Loopback => "a loopback address",
            AddressClass::Unspecified => "an unspecified address",
            AddressClass::LinkLocal => "a link-local address (cloud metadata lives there)",
            AddressClass::Multicast => "a multicast address",
            AddressClass::Broadcast => "the broadcast address",
            AddressClass::Metadata => "a cloud metadata address",
            AddressClass::Blocked => "in a blocked cluster range",
        }
    }
}

/// Why `ip` may not be reached under `policy`, or `None` if it may.
pub fn refusal(policy: &NetworkPolicy, ip: IpAddr) -> Option<AddressClass> {
    if policy.allow_internal {
        return None;
    }
    let canonical = canonical(ip);
    if let Some(class) = internal_class(canonical) {
        return Some(class);
    }
    let blocked = policy
        .blocked
        .iter()
        .any(|net| net.contains(&ip) || net.contains(&canonical));
    blocked.then_some(AddressClass::Blocked)
}

/// An IPv6 address that carries an IPv4 one as the IPv4 address it reaches: IPv4-mapped
/// (`::ffff:a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`) and 6to4 (`2002:AABB:CCDD::`).
fn canonical(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else {
        return ip;
    };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return IpAddr::V4(v4);
    }
    let s = v6.segments();
    let embedded = |high: u16, low: u16| {
        IpAddr::V4(Ipv4Addr::new(
            (high >> 8) as u8,
            high as u8,
            (low >> 8) as u8,
            low as u8,
        ))
    };
    match s {
        [0x64, 0xff9b, 0, 0, 0, 0, high, low] => embedded(high, low),
        [0x2002, high, low, ..] => embedded(high, low),
        _ => ip,
    }
}

/// Cloud metadata services outside the link-local range: AWS over IPv6, Alibaba, Oracle.
const METADATA: [IpAddr; 3] = [
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
    IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)),
    IpAddr::V4(Ipv4Addr::new(192, 0, 0, 192)),
];

fn internal_class(ip: IpAddr) -> Option<AddressClass> {
    if METADATA.contains(&ip) {
        return Some(AddressClass::Metadata);
    }
    match ip {
        IpAddr::V4(v4) => v4_class(v4),
        IpAddr::V6(v6) => v6_class(v6),
    }
}

fn v4_class(ip: Ipv4Addr) -> Option<AddressClass> {
    let [first, ..] = ip.octets();
    if ip.is_loopback() {
        Some(AddressClass::Loopback)
    } else if first == 0 {
        // 0.0.0.0/8 is "this network"; Linux connects 0.0.0.0 to the local host.
        Some(AddressClass::Unspecified)
    } else if ip.is_link_local() {
        Some(AddressClass::LinkLocal)
    } else if ip.is_broadcast() {
        Some(AddressClass::Broadcast)
    } else if ip.is_multicast() {
        Some(AddressClass::Multicast)
    } else {
        None
    }
}

fn v6_class(ip: Ipv6Addr) -> Option<AddressClass> {
    if ip.is_loopback() {
        Some(AddressClass::Loopback)
    } else if ip.is_unspecified() {
        Some(AddressClass::Unspecified)
    } else if ip.is_unicast_link_local() {
        Some(AddressClass::LinkLocal)
    } else if ip.is_multicast() {
        Some(AddressClass::Multicast)
    } else {
        None
    }
}

/// A name that resolved to an address the policy refuses. The engine finds it in the HTTP
/// client's error chain and reports `AddressNotAllowed`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{host} resolves to {address}, which is {}: checks may not reach it", class.as_str())]
pub struct AddressRefused {
    pub host: String,
    pub address: IpAddr,
    pub class: AddressClass,
}

/// A name that resolved to nothing.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{host} resolves to no address")]
pub struct NoAddress {
    pub host: String,
}

/// Resolves names for the HTTP client under a [`NetworkPolicy`]: `resolve` overrides
/// first, then the system resolver; if any address is refused, the name is refused.
#[derive(Clone, Debug)]
pub struct PolicyResolver {
    policy: Arc<NetworkPolicy>,
}

impl PolicyResolver {
    pub fn new(policy: Arc<NetworkPolicy>) -> Self {
        PolicyResolver { policy }
    }

    /// The checked addresses of `name`, port 0 (the client puts the URL's port in).
    pub async fn lookup(&self, name: &str) -> Result<Vec<SocketAddr>, ResolveError> {
        let host = normalize_name(name);
        // Asked as a fully qualified name: the pod's search list (ndots 5) must not turn
        // `shop.example.com` into `shop.example.com.<namespace>.svc.cluster.local` first.
        let fqdn = if host.parse::<IpAddr>().is_ok() {
            host.clone()
        } else {
            format!("{host}.")
        };
        let addresses: Vec<IpAddr> = match self.policy.resolve.get(&host) {
            Some(fixed) => fixed.clone(),
            None => tokio::net::lookup_host((fqdn.as_str(), 0))
                .await
                .map_err(|source| ResolveError::Lookup {
                    host: host.clone(),
                    source,
                })?
                .map(|addr| addr.ip())
                .collect(),
        };
        if addresses.is_empty() {
            return Err(ResolveError::NoAddress(NoAddress { host }));
        }
        // One bad address refuses the name: a rebinding answer mixes good and bad ones.
        for &address in &addresses {
            if let Some(class) = refusal(&self.policy, address) {
                return Err(ResolveError::Refused(AddressRefused {
                    host,
                    address,
                    class,
                }));
            }
        }
        Ok(addresses
            .into_iter()
            .map(|ip| SocketAddr::new(ip, 0))
            .collect())
    }
}

/// Why a name did not resolve to a usable address.
#[derive(Debug, Error)]
pub enum ResolveError {
    #[error(transparent)]
    Refused(AddressRefused),
    #[error(transparent)]
    NoAddress(NoAddress),
    #[error("cannot resolve {host}: {source}")]
    Lookup {
        host: String,
        #[source]
        source: std::io::Error,
    },
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let resolver = self.clone();
        Box::pin(async move {
            let addrs = resolver.lookup(name.as_str()).await?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

fn normalize_name(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    lower.strip_suffix('.').map(str::to_owned).unwrap_or(lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed() -> NetworkPolicy {
        NetworkPolicy {
            allow_internal: false,
            blocked: vec![
                "10.96.0.0/12".parse().unwrap(),
                "fd00:10::/64".parse().unwrap(),
            ],
            resolve: HashMap::new(),
        }
    }

    #[test]
    fn inside_addresses_are_refused_by_default() {
        let policy = closed();
        let cases = [
            ("127.0.0.1", AddressClass::Loopback),
            ("127.8.9.10", AddressClass::Loopback),
            ("::1", AddressClass::Loopback),
            ("::ffff:127.0.0.1", AddressClass::Loopback),
            ("0.0.0.0", AddressClass::Unspecified),
            ("0.1.2.3", AddressClass::Unspecified),
            ("::", AddressClass::Unspecified),
            ("169.254.169.254", AddressClass::LinkLocal),
            ("::ffff:169.254.169.254", AddressClass::LinkLocal),
            ("fe80::1", AddressClass::LinkLocal),
            ("224.0.0.1", AddressClass::Multicast),
            ("ff02::1", AddressClass::Multicast),
            ("255.255.255.255", AddressClass::Broadcast),
            ("10.96.0.1", AddressClass::Blocked),
            ("::ffff:10.96.0.1", AddressClass::Blocked),
            ("fd00:10::5", AddressClass::Blocked),
            ("64:ff9b::7f00:1", AddressClass::Loopback),
            ("64:ff9b::a9fe:a9fe", AddressClass::LinkLocal),
            ("2002:a9fe:a9fe::1", AddressClass::LinkLocal),
            ("fd00:ec2::254", AddressClass::Metadata),
            ("100.100.100.200", AddressClass::Metadata),
            ("192.0.0.192", AddressClass::Metadata),
        ];
        for (ip, class) in cases {
            assert_eq!(refusal(&policy, ip.parse().unwrap()), Some(class), "{ip}");
        }
    }

    #[test]
    fn outside_addresses_pass() {
        let policy = closed();
        for ip in [
            "93.184.215.14",
            "10.95.255.255",
            "2606:4700::1",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(refusal(&policy, ip.parse().unwrap()), None, "{ip}");
        }
    }

    #[test]
    fn allow_internal_lifts_every_refusal() {
        let policy = NetworkPolicy {
            allow_internal: true,
            ..closed()
        };
        for ip in ["127.0.0.1", "169.254.169.254", "10.96.0.1", "::1"] {
            assert_eq!(refusal(&policy, ip.parse().unwrap()), None, "{ip}");
        }
    }

    #[tokio::test]
    async fn overrides_resolve_before_dns_and_are_checked_too() {
        let mut policy = closed();
        policy
            .resolve
            .insert("shop.test".into(), vec!["93.184.215.14".parse().unwrap()]);
        policy.resolve.insert(
            "rebind.test".into(),
            vec![
                "93.184.215.14".parse().unwrap(),
                "127.0.0.1".parse().unwrap(),
            ],
        );
        let resolver = PolicyResolver::new(Arc::new(policy));
        let addrs = resolver.lookup("SHOP.test.").await.unwrap();
        assert_eq!(
            addrs,
            vec!["93.184.215.14:0".parse::<SocketAddr>().unwrap()]
        );
        match resolver.lookup("rebind.test").await {
            Err(ResolveError::Refused(refused)) => {
                assert_eq!(refused.host, "rebind.test");
                assert_eq!(refused.class, AddressClass::Loopback);
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}
