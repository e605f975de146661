//! A session proxy's bypass list, which the chained listener honours: hosts
//! that match go straight to their destination (under the egress policy),
//! the rest through the session's proxy.
//!
//! The part of Chromium's `--proxy-bypass-list` syntax a session may use:
//! entries separated by `;` or `,`; `host` (that host only), `*.example.com`
//! or `.example.com` (its subdomains), `*example.com` (any host ending so),
//! `<local>` (names without a dot), an IP address or a CIDR range. A
//! `scheme://` before an entry and a `:port` after it are ignored: the entry
//! matches the host on every port. Entries of other shapes match nothing.

use std::net::IpAddr;

use ipnet::IpNet;

/// One entry of a bypass list.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Rule {
    /// Exactly this host (lower case).
    Host(String),
    /// Any host ending with this (lower case), e.g. `.example.com`.
    Suffix(String),
    /// Names without a dot.
    Local,
    /// An address range.
    Range(IpNet),
}

/// A parsed bypass list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BypassList(Vec<Rule>);

impl BypassList {
    /// Parses a list as Chromium writes it.
    pub fn parse(text: &str) -> BypassList {
        BypassList(text.split([';', ',']).filter_map(rule).collect())
    }

    /// Whether `host` (a name or an address, without brackets) is reached
    /// directly.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let ip = host.parse::<IpAddr>().ok().map(|ip| ip.to_canonical());
        self.0.iter().any(|rule| match rule {
            Rule::Host(name) => *name == host,
            Rule::Suffix(suffix) => host.ends_with(suffix.as_str()),
            Rule::Local => ip.is_none() && !host.contains('.'),
            Rule::Range(net) => ip.is_some_and(|ip| net.contains(&ip)),
        })
    }
}

fn rule(entry: &str) -> Option<Rule> {
    let entry = entry.trim();
    if entry.eq_ignore_ascii_case("<local>") {
        return Some(Rule::Local);
    }
    let entry = entry.split_once("://").map_or(entry, |(_, rest)| rest);
    if let Ok(net) = entry.parse::<IpNet>() {
        return Some(Rule::Range(net.trunc()));
    }
    let host = match entry.strip_prefix('[') {
        Some(v6) => v6.split_once(']')?.0,
        None => match entry.rsplit_once(':') {
            Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
            _ => entry,
        },
    };
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(Rule::Range(IpNet::from(ip.to_canonical())));
    }
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() {
        return None;
    }
    match host.strip_prefix('*') {
        Some(suffix) if !suffix.contains('*') && !suffix.is_empty() => {
            Some(Rule::Suffix(suffix.to_owned()))
        }
        Some(_) => None,
        None if host.starts_with('.') => Some(Rule::Suffix(host)),
        None if host.contains('*') => None,
        None => Some(Rule::Host(host)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_suffixes_and_local_names_match_as_chromium_writes_them() {
        let list = BypassList::parse("*.internal; example.com,.corp.test;<local>");
        assert!(list.matches("db.internal"));
        assert!(!BypassList::parse("*.internal").matches("internal"));
        assert!(list.matches("example.com"));
        assert!(list.matches("EXAMPLE.com."));
        assert!(!list.matches("www.example.com"));
        assert!(list.matches("a.corp.test"));
        assert!(list.matches("intranet"));
        assert!(!list.matches("other.org"));
    }

    #[test]
    fn addresses_and_ranges_match_with_or_without_scheme_and_port() {
        let list = BypassList::parse("10.0.0.0/8;http://192.0.2.7:8080;[fd00::1]:443");
        assert!(list.matches("10.1.2.3"));
        assert!(list.matches("192.0.2.7"));
        assert!(list.matches("fd00::1"));
        assert!(list.matches("::ffff:10.0.0.1"));
        assert!(!list.matches("192.0.2.8"));
        // A name is not resolved: it matches name rules only.
        assert!(!list.matches("ten.example"));
    }

    #[test]
    fn entries_of_other_shapes_match_nothing() {
        let list = BypassList::parse("*;a*b.com;;  ;*.");
        assert!(!list.matches("a.b.com"));
        assert!(!list.matches("anything"));
        assert_eq!(BypassList::parse(""), BypassList::default());
    }
}
