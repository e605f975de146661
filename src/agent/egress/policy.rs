//! Which destinations a session's browser may reach: a pure decision over
//! an address, so every rule is tested without a socket.
//!
//! In order, the first that matches decides:
//! 1. a port of the node's own services — the agent's listener, every
//!    DevTools port of its range, the egress proxy itself — is refused on
//!    every address (the proxy cannot cheaply know all of the node's
//!    addresses, and a remote service on one of these ports is rare);
//! 2. a range the fleet blocks (`spec.agent.egress.blocked`) is refused;
//! 3. a range the fleet allows (`spec.agent.egress.allowed`) is let through;
//! 4. the ranges refused by default are refused: link-local (169.254.0.0/16,
//!    with the instance metadata service and the ECS/EKS credential
//!    endpoints, and fe80::/10), the metadata service's IPv6 address range
//!    fd00:ec2::/64, loopback and the unspecified addresses;
//! 5. everything else is let through.
//!
//! An IPv4 address written as IPv6 (`::ffff:169.254.169.254`) is judged as
//! the IPv4 address it is.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

/// Ranges refused unless the fleet allows them, with why.
const DEFAULT_DENIED: &[(&str, &str)] = &[
    (
        "169.254.0.0/16",
        "link-local (instance metadata and credentials)",
    ),
    ("fe80::/10", "link-local"),
    ("fd00:ec2::/64", "instance metadata (IPv6)"),
    ("127.0.0.0/8", "loopback (the node's own services)"),
    ("::1/128", "loopback (the node's own services)"),
    ("0.0.0.0/8", "unspecified (reaches the node itself)"),
    ("::/128", "unspecified (reaches the node itself)"),
];

/// The ranges refused by default that an OS rule refuses a browser program
/// too: the ones no session ever needs. Loopback is not among them, since
/// the egress proxy lives there.
const OS_RULE_DEFAULTS: &[&str] = &["169.254.0.0/16", "fe80::/10", "fd00:ec2::/64"];

/// The ranges an OS firewall rule refuses the browser programs
/// (`operator::bootstrap`): the link-local and metadata ranges, except one
/// an allowed range overlaps, and the fleet's blocked ranges. The egress
/// proxy enforces the rest; the rule is the floor that holds even for a
/// socket Chromium's network stack did not open.
pub fn os_rule_ranges(blocked: &[IpNet], allowed: &[IpNet]) -> Vec<IpNet> {
    let overlaps = |a: &IpNet, b: &IpNet| a.contains(&b.network()) || b.contains(&a.network());
    let mut ranges: Vec<IpNet> = OS_RULE_DEFAULTS
        .iter()
        .map(|net| net.parse().expect("OS_RULE_DEFAULTS holds valid ranges"))
        .filter(|default: &IpNet| !allowed.iter().any(|a| overlaps(a, default)))
        .collect();
    for net in blocked {
        if !ranges.contains(net) {
            ranges.push(*net);
        }
    }
    ranges
}

/// Why a destination was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denial {
    /// One of the node's own service ports.
    NodeService(u16),
    /// A range the fleet blocks.
    Blocked(IpNet),
    /// A range refused by default.
    Default(IpNet, &'static str),
}

impl Denial {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Denial::NodeService(_) => "nodeService",
            Denial::Blocked(_) => "blocked",
            Denial::Default(..) => "defaultDenied",
        }
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denial::NodeService(port) => write!(f, "port {port} is one of the node's own services"),
            Denial::Blocked(net) => {
                write!(f, "{net} is blocked by the fleet (agent.egress.blocked)")
            }
            Denial::Default(net, why) => write!(
                f,
                "{net} is refused by default: {why}; a fleet may allow it in agent.egress.allowed"
            ),
        }
    }
}

/// A CIDR the fleet wrote that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a CIDR range such as 10.0.0.0/8 or fd00::/8")]
pub struct BadRange {
    /// What was written.
    pub text: String,
}

/// Parses CIDR ranges; a bare address is a range of one.
pub fn parse_ranges(texts: &[String]) -> Result<Vec<IpNet>, BadRange> {
    texts
        .iter()
        .map(|text| {
            let trimmed = text.trim();
            trimmed
                .parse::<IpNet>()
                .or_else(|_| trimmed.parse::<IpAddr>().map(IpNet::from))
                .map(|net| net.trunc())
                .map_err(|_| BadRange { text: text.clone() })
        })
        .collect()
}

/// The egress rules of one agent.
#[derive(Clone, Debug)]
pub struct EgressPolicy {
    blocked: Vec<IpNet>,
    allowed: Vec<IpNet>,
    default_denied: Vec<(IpNet, &'static str)>,
    /// Ports of the node's own services.
    own_ports: Vec<std::ops::RangeInclusive<u16>>,
}

impl EgressPolicy {
    /// The rules for the fleet's ranges and the node's own ports.
    pub fn new(
        blocked: Vec<IpNet>,
        allowed: Vec<IpNet>,
        own_ports: Vec<std::ops::RangeInclusive<u16>>,
    ) -> Self {
        let default_denied = DEFAULT_DENIED
            .iter()
            .map(|(net, why)| {
                (
                    net.parse().expect("DEFAULT_DENIED holds valid ranges"),
                    *why,
                )
            })
            .collect();
        EgressPolicy {
            blocked,
            allowed,
            default_denied,
            own_ports,
        }
    }

    /// Whether a browser may connect to `destination`.
    pub fn judge(&self, destination: SocketAddr) -> Result<(), Denial> {
        let port = destination.port();
        if self.own_ports.iter().any(|range| range.contains(&port)) {
            return Err(Denial::NodeService(port));
        }
        let ip = destination.ip().to_canonical();
        if let Some(net) = self.blocked.iter().find(|net| net.contains(&ip)) {
            return Err(Denial::Blocked(*net));
        }
        if self.allowed.iter().any(|net| net.contains(&ip)) {
            return Ok(());
        }
        match self
            .default_denied
            .iter()
            .find(|(net, _)| net.contains(&ip))
        {
            Some((net, why)) => Err(Denial::Default(*net, why)),
            None => Ok(()),
        }
    }

    /// Judges every address a name resolved to: one refused address refuses
    /// the name (a name that resolves to a public and a metadata address is
    /// an attempt, not an accident).
    pub fn judge_all(&self, destinations: &[SocketAddr]) -> Result<(), Denial> {
        destinations.iter().try_for_each(|d| self.judge(*d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(blocked: &[&str], allowed: &[&str]) -> EgressPolicy {
        let owned = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        EgressPolicy::new(
            parse_ranges(&owned(blocked)).unwrap(),
            parse_ranges(&owned(allowed)).unwrap(),
            vec![9222..=9222, 9300..=9309],
        )
    }

    fn at(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn the_metadata_service_is_refused_by_default_on_both_families() {
        let p = policy(&[], &[]);
        assert!(matches!(
            p.judge(at("169.254.169.254:80")),
            Err(Denial::Default(..))
        ));
        assert!(matches!(
            p.judge(at("[fd00:ec2::254]:80")),
            Err(Denial::Default(..))
        ));
        assert!(matches!(
            p.judge(at("169.254.170.2:80")),
            Err(Denial::Default(..))
        ));
    }

    #[test]
    fn an_ipv4_address_written_as_ipv6_is_judged_as_ipv4() {
        let p = policy(&[], &[]);
        assert!(p.judge(at("[::ffff:169.254.169.254]:80")).is_err());
        assert!(p.judge(at("[::ffff:127.0.0.1]:8080")).is_err());
        assert!(p.judge(at("[::ffff:93.184.216.34]:443")).is_ok());
    }

    #[test]
    fn loopback_and_unspecified_are_refused_unless_allowed() {
        let p = policy(&[], &[]);
        assert!(p.judge(at("127.0.0.1:8080")).is_err());
        assert!(p.judge(at("[::1]:8080")).is_err());
        assert!(p.judge(at("0.0.0.0:8080")).is_err());
        let allowing = policy(&[], &["127.0.0.0/8"]);
        assert!(allowing.judge(at("127.0.0.1:8080")).is_ok());
    }

    #[test]
    fn the_nodes_own_ports_are_refused_even_in_an_allowed_range() {
        let p = policy(&[], &["0.0.0.0/0", "::/0"]);
        assert_eq!(
            p.judge(at("127.0.0.1:9222")),
            Err(Denial::NodeService(9222))
        );
        assert_eq!(p.judge(at("10.0.0.5:9305")), Err(Denial::NodeService(9305)));
        assert!(p.judge(at("127.0.0.1:9310")).is_ok());
    }

    #[test]
    fn a_blocked_range_beats_an_allowed_one() {
        let p = policy(&["127.0.0.2/32"], &["127.0.0.0/8"]);
        assert!(matches!(
            p.judge(at("127.0.0.2:80")),
            Err(Denial::Blocked(_))
        ));
        assert!(p.judge(at("127.0.0.3:80")).is_ok());
    }

    #[test]
    fn public_addresses_pass_and_a_blocked_private_range_does_not() {
        let p = policy(&["10.0.0.0/8"], &[]);
        assert!(p.judge(at("93.184.216.34:443")).is_ok());
        assert!(matches!(
            p.judge(at("10.1.2.3:443")),
            Err(Denial::Blocked(_))
        ));
    }

    #[test]
    fn one_refused_address_refuses_a_name() {
        let p = policy(&[], &[]);
        let both = [at("93.184.216.34:80"), at("169.254.169.254:80")];
        assert!(p.judge_all(&both).is_err());
        assert!(p.judge_all(&both[..1]).is_ok());
    }

    #[test]
    fn the_os_rule_refuses_metadata_and_blocked_ranges_but_never_loopback() {
        let blocked = parse_ranges(&["10.0.0.0/8".into()]).unwrap();
        let ranges: Vec<String> = os_rule_ranges(&blocked, &[])
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            ranges,
            ["169.254.0.0/16", "fe80::/10", "fd00:ec2::/64", "10.0.0.0/8"]
        );
        // A fleet that allows a part of link-local gets no OS rule on it.
        let allowed = parse_ranges(&["169.254.170.2".into(), "127.0.0.0/8".into()]).unwrap();
        let ranges: Vec<String> = os_rule_ranges(&[], &allowed)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(ranges, ["fe80::/10", "fd00:ec2::/64"]);
    }

    #[test]
    fn ranges_parse_with_bare_addresses_and_refuse_garbage() {
        let parsed = parse_ranges(&["10.0.0.0/8".into(), " 192.0.2.7 ".into(), "fd00::/8".into()]);
        assert_eq!(parsed.unwrap().len(), 3);
        assert!(parse_ranges(&["10.0.0.0/33".into()]).is_err());
        assert!(parse_ranges(&["example.com".into()]).is_err());
        // Host bits are dropped: 10.1.2.3/8 is 10.0.0.0/8.
        assert_eq!(
            parse_ranges(&["10.1.2.3/8".into()]).unwrap()[0].to_string(),
            "10.0.0.0/8"
        );
    }
}
