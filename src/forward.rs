//! Forward mode's policy: which `scheme://host[:port]` targets the agent
//! may call for `/v1/forward/…`, and the SSRF guard applied to every
//! address it would connect to.
//!
//! - `allow` entries: exact hosts, host globs (`*.api.corp.internal`, one
//!   or more labels), IP addresses and CIDRs, each with an optional
//!   `:port`. A bare `*` is refused at validation as too broad.
//! - `deny` entries (same forms) win over `allow`.
//! - A hostname allowed by name is still refused if it resolves to a
//!   *special* address (loopback, link-local including cloud metadata,
//!   other metadata addresses, unspecified, multicast) or to the agent's
//!   own admin listener — unless an `allow` CIDR lying wholly inside that
//!   special range names the address (`127.0.0.1/32` admits loopback;
//!   `0.0.0.0/0` does not). A hostname allowed only through a CIDR must
//!   resolve into it.
//! - IP literals in odd forms (`2130706433`, `0177.0.0.1`, `0x7f.1`,
//!   IPv4-mapped IPv6) are normalised before any matching.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::egress::Cidr;

/// One `allow` or `deny` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    host: HostPattern,
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    /// A hostname, lower case, no trailing dot.
    Exact(String),
    /// `*.suffix`: any name ending in `.suffix` (one or more labels).
    Glob(String),
    /// An IP network (a single address is a /32 or /128).
    Net(Cidr),
}

impl Entry {
    /// Parses one list entry.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text == "*" || text == "*:*" || text.starts_with("*:") {
            return Err(format!(
                "{text:?} admits every host: list the hosts, domains (*.corp.internal) or networks"
            ));
        }
        if let Some(net) = Cidr::parse(text) {
            return Ok(Self {
                host: HostPattern::Net(net),
                port: None,
            });
        }
        let (host, port) = split_host_port(text)?;
        if host.is_empty() {
            return Err(format!("{text:?}: no host"));
        }
        let pattern = if let Some(ip) = literal_ip(&host) {
            HostPattern::Net(single(ip))
        } else if let Some(suffix) = host.strip_prefix("*.") {
            if suffix.is_empty() || suffix.contains('*') || !suffix.contains('.') {
                return Err(format!(
                    "{text:?}: a glob needs a domain of at least two labels after `*.`"
                ));
            }
            HostPattern::Glob(suffix.to_owned())
        } else if host.contains('*') {
            return Err(format!(
                "{text:?}: `*` only as the whole first label (`*.corp.internal`)"
            ));
        } else if valid_hostname(&host) {
            HostPattern::Exact(host)
        } else {
            return Err(format!("{text:?}: not a hostname, IP address or CIDR"));
        };
        Ok(Self {
            host: pattern,
            port,
        })
    }

    fn port_ok(&self, port: u16) -> bool {
        self.port.is_none_or(|p| p == port)
    }

    /// Matches a hostname (never an IP literal) by name.
    fn names(&self, host: &str, port: u16) -> bool {
        self.port_ok(port)
            && match &self.host {
                HostPattern::Exact(h) => h == host,
                HostPattern::Glob(suffix) => host
                    .strip_suffix(suffix.as_str())
                    .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
                HostPattern::Net(_) => false,
            }
    }

    /// Matches an address by network.
    fn contains(&self, ip: IpAddr, port: u16) -> bool {
        self.port_ok(port) && matches!(&self.host, HostPattern::Net(net) if net.contains(ip))
    }
}

/// A target host as the caller wrote it, normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A hostname: lower case, trailing dot removed.
    Name(String),
    /// An IP literal, in canonical form (IPv4-mapped IPv6 as IPv4).
    Ip(IpAddr),
}

impl Host {
    /// Parses the host part of a target (brackets allowed around IPv6).
    pub fn parse(text: &str) -> Result<Self, String> {
        let lower = text.trim_end_matches('.').to_ascii_lowercase();
        if let Some(ip) = literal_ip(&lower) {
            return Ok(Self::Ip(ip));
        }
        if valid_hostname(&lower) {
            Ok(Self::Name(lower))
        } else {
            Err(format!("{text:?} is not a hostname or IP address"))
        }
    }

    /// As it goes in a URL authority.
    pub fn authority(&self, port: u16) -> String {
        match self {
            Self::Name(n) => format!("{n}:{port}"),
            Self::Ip(IpAddr::V4(v4)) => format!("{v4}:{port}"),
            Self::Ip(IpAddr::V6(v6)) => format!("[{v6}]:{port}"),
        }
    }
}

/// The `[forward]` lists.
#[derive(Debug, Clone, Default)]
pub struct ForwardPolicy {
    /// Targets admitted.
    pub allow: Vec<Entry>,
    /// Targets refused even if admitted.
    pub deny: Vec<Entry>,
    /// Ports CONNECT tunnels may reach.
    pub connect_ports: Vec<u16>,
    /// The agent's own admin listener: never a target.
    pub admin: Option<SocketAddr>,
}

/// Why a target was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not on the allow list, or on the deny list.
    #[error("{0}")]
    Policy(String),
    /// It resolves to, or is, an address the guard never connects to.
    #[error("{0}")]
    Address(String),
}

impl ForwardPolicy {
    /// Whether forward mode is on (an allow list exists).
    pub fn enabled(&self) -> bool {
        !self.allow.is_empty()
    }

    /// The decision that needs no DNS: is `host:port` admitted by the
    /// lists? For a hostname admitted only through a CIDR, the resolved
    /// addresses decide ([`ForwardPolicy::check_address`]).
    pub fn check_target(&self, host: &Host, port: u16) -> Result<(), Refusal> {
        let (denied, allowed) = match host {
            Host::Name(name) => (
                self.deny.iter().any(|e| e.names(name, port)),
                self.allow.iter().any(|e| e.names(name, port))
                    || self
                        .allow
                        .iter()
                        .any(|e| matches!(e.host, HostPattern::Net(_))),
            ),
            Host::Ip(ip) => (
                self.deny.iter().any(|e| e.contains(*ip, port)),
                self.allow.iter().any(|e| e.contains(*ip, port)),
            ),
        };
        if denied {
            return Err(Refusal::Policy(format!(
                "{} is on the deny list",
                host.authority(port)
            )));
        }
        if !allowed {
            return Err(Refusal::Policy(format!(
                "{} is not on the allow list",
                host.authority(port)
            )));
        }
        if let Host::Ip(ip) = host {
            self.check_address(host, SocketAddr::new(*ip, port))?;
        }
        Ok(())
    }

    /// The guard, for one address `host` resolved to (or is): refused if
    /// denied by network, if `host` is a name admitted only through CIDRs
    /// and the address is outside them, if it is the agent's admin
    /// listener, or if it is special and no allow CIDR wholly inside its
    /// special range names it.
    pub fn check_address(&self, host: &Host, addr: SocketAddr) -> Result<(), Refusal> {
        let ip = canonical(addr.ip());
        let port = addr.port();
        if self.deny.iter().any(|e| e.contains(ip, port)) {
            return Err(Refusal::Address(format!("{ip} is on the deny list")));
        }
        if let Host::Name(name) = host
            && !self.allow.iter().any(|e| e.names(name, port))
            && !self.allow.iter().any(|e| e.contains(ip, port))
        {
            return Err(Refusal::Address(format!(
                "{name} resolves to {ip}, outside the allowed networks"
            )));
        }
        if self
            .admin
            .is_some_and(|a| canonical(a.ip()) == ip && a.port() == port)
            || self
                .admin
                .is_some_and(|a| a.ip().is_unspecified() && a.port() == port && is_local(ip))
        {
            return Err(Refusal::Address(format!(
                "{ip}:{port} is the agent's own admin listener"
            )));
        }
        if let Some(range) = special_range(ip) {
            let named = self.allow.iter().any(|e| match &e.host {
                HostPattern::Net(net) => e.port_ok(port) && net.contains(ip) && net.within(&range),
                _ => false,
            });
            if !named {
                return Err(Refusal::Address(format!(
                    "{ip} is a loopback, link-local, metadata, unspecified or multicast address; \
                     allow it only by a CIDR inside that range"
                )));
            }
        }
        Ok(())
    }
}

/// Loopback or the unspecified address: what a `0.0.0.0` listener answers on
/// locally (the admin listener bound to every interface).
fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || ip.is_unspecified()
}

/// IPv4-mapped IPv6 addresses as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn single(ip: IpAddr) -> Cidr {
    let prefix = if ip.is_ipv4() { 32 } else { 128 };
    Cidr::parse(&format!("{ip}/{prefix}")).expect("an address is a network")
}

/// The special range `ip` lies in, if any.
fn special_range(ip: IpAddr) -> Option<Cidr> {
    const RANGES: &[&str] = &[
        "127.0.0.0/8",
        "0.0.0.0/8",
        "169.254.0.0/16",
        "100.100.100.200/32",
        "224.0.0.0/4",
        "255.255.255.255/32",
        "::1/128",
        "::/128",
        "fe80::/10",
        "fd00:ec2::254/128",
        "ff00::/8",
    ];
    RANGES
        .iter()
        .filter_map(|r| Cidr::parse(r))
        .find(|r| r.contains(ip))
}

/// `host[:port]` or `[v6][:port]`, host lower-cased.
fn split_host_port(text: &str) -> Result<(String, Option<u16>), String> {
    let bad_port = |p: &str| format!("{text:?}: bad port {p:?}");
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{text:?}: missing ]"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().map_err(|_| bad_port(p))?),
            None if after.is_empty() => None,
            None => return Err(format!("{text:?}: unexpected text after ]")),
        };
        return Ok((host.to_ascii_lowercase(), port));
    }
    match text.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => Ok((
            host.to_ascii_lowercase().trim_end_matches('.').to_owned(),
            Some(port.parse().map_err(|_| bad_port(port))?),
        )),
        _ => Ok((
            text.to_ascii_lowercase().trim_end_matches('.').to_owned(),
            None,
        )),
    }
}

/// An IP literal in any form a resolver would accept: dotted decimal,
/// octal (`0177.0.0.1`), hex (`0x7f.0.0.1`), fewer parts (`127.1`,
/// `2130706433`), IPv6 (bracketed or not, IPv4-mapped as IPv4).
pub fn literal_ip(text: &str) -> Option<IpAddr> {
    let text = text.trim_start_matches('[').trim_end_matches(']');
    if let Ok(v6) = text.parse::<Ipv6Addr>() {
        return Some(canonical(IpAddr::V6(v6)));
    }
    loose_ipv4(text).map(IpAddr::V4)
}

/// inet_aton's forms: 1 to 4 parts, each decimal, octal (leading 0) or hex
/// (leading 0x); the last part fills the remaining bytes.
fn loose_ipv4(text: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = text.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut values = Vec::with_capacity(4);
    for part in &parts {
        let (digits, radix) =
            if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
                (hex, 16)
            } else if part.len() > 1 && part.starts_with('0') {
                (&part[1..], 8)
            } else {
                (*part, 10)
            };
        if digits.is_empty() && radix != 8 {
            return None;
        }
        let value = if digits.is_empty() {
            0
        } else {
            u64::from_str_radix(digits, radix).ok()?
        };
        values.push(value);
    }
    let (last, head) = values.split_last()?;
    if head.iter().any(|v| *v > 255) {
        return None;
    }
    let last_bits = 8 * (4 - head.len() as u32);
    if last_bits < 64 && *last >= (1u64 << last_bits) {
        return None;
    }
    let mut n: u64 = 0;
    for (i, v) in head.iter().enumerate() {
        n |= v << (24 - 8 * i as u32);
    }
    n |= last;
    u32::try_from(n).ok().map(Ipv4Addr::from)
}

/// Letters, digits, `-` and `.`, labels of 1–63, 253 in all; not all
/// digits and dots (that is an address, handled before).
fn valid_hostname(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str], deny: &[&str]) -> ForwardPolicy {
        ForwardPolicy {
            allow: allow.iter().map(|e| Entry::parse(e).unwrap()).collect(),
            deny: deny.iter().map(|e| Entry::parse(e).unwrap()).collect(),
            connect_ports: vec![443],
            admin: Some("127.0.0.1:9464".parse().unwrap()),
        }
    }

    fn name(h: &str) -> Host {
        Host::parse(h).unwrap()
    }

    #[test]
    fn entries_refuse_star_and_bad_globs() {
        for bad in ["*", "*:443", "*.com", "a*.corp.internal", "foo/bar", "*."] {
            assert!(Entry::parse(bad).is_err(), "{bad}");
        }
        for good in [
            "jenkins.corp.internal",
            "*.api.corp.internal",
            "10.0.0.0/8",
            "host:8443",
            "[::1]:443",
        ] {
            assert!(Entry::parse(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn names_globs_ports_and_deny_wins() {
        let p = policy(
            &[
                "jenkins.corp.internal",
                "*.api.corp.internal",
                "git.corp.internal:8443",
            ],
            &["secret.api.corp.internal"],
        );
        assert!(p.check_target(&name("jenkins.corp.internal"), 443).is_ok());
        assert!(p.check_target(&name("JENKINS.corp.internal."), 80).is_ok());
        assert!(p.check_target(&name("a.b.api.corp.internal"), 443).is_ok());
        assert!(
            p.check_target(&name("api.corp.internal"), 443).is_err(),
            "glob needs a label"
        );
        assert!(p.check_target(&name("evilapi.corp.internal"), 443).is_err());
        assert!(p.check_target(&name("git.corp.internal"), 8443).is_ok());
        assert!(p.check_target(&name("git.corp.internal"), 443).is_err());
        assert!(matches!(
            p.check_target(&name("secret.api.corp.internal"), 443),
            Err(Refusal::Policy(m)) if m.contains("deny")
        ));
    }

    #[test]
    fn odd_ip_literals_are_normalised() {
        for form in [
            "2130706433",
            "0177.0.0.1",
            "0x7f.0.0.1",
            "127.1",
            "0x7f000001",
            "[::ffff:127.0.0.1]",
        ] {
            assert_eq!(
                literal_ip(form),
                Some(IpAddr::from([127, 0, 0, 1])),
                "{form}"
            );
        }
        assert_eq!(literal_ip("256.0.0.1"), None);
        assert_eq!(literal_ip("jenkins"), None);
        assert_eq!(literal_ip("1.2.3.4.5"), None);
    }

    #[test]
    fn special_addresses_need_a_cidr_inside_their_range() {
        let wide = policy(&["0.0.0.0/0", "::/0"], &[]);
        for ip in [
            "127.0.0.1",
            "169.254.169.254",
            "100.100.100.200",
            "0.0.0.0",
            "224.0.0.1",
            "::1",
            "fe80::1",
            "fd00:ec2::254",
        ] {
            let host = Host::Ip(ip.parse().unwrap());
            assert!(
                matches!(wide.check_target(&host, 80), Err(Refusal::Address(_))),
                "{ip} through 0.0.0.0/0"
            );
        }
        assert!(
            wide.check_target(&Host::Ip("10.1.2.3".parse().unwrap()), 80)
                .is_ok()
        );
        let loopback = policy(&["127.0.0.1/32"], &[]);
        assert!(
            loopback
                .check_target(&Host::Ip("127.0.0.1".parse().unwrap()), 8080)
                .is_ok()
        );
        // Loopback allowed, the agent's admin listener still not.
        assert!(
            loopback
                .check_target(&Host::Ip("127.0.0.1".parse().unwrap()), 9464)
                .is_err()
        );
        // Octal loopback is loopback.
        let host = Host::parse("0177.0.0.1").unwrap();
        assert!(matches!(
            wide.check_target(&host, 80),
            Err(Refusal::Address(_))
        ));
    }

    #[test]
    fn a_name_resolving_to_a_forbidden_address_is_refused() {
        let p = policy(&["*.corp.internal", "10.20.0.0/16"], &["10.20.9.0/24"]);
        let host = name("jenkins.corp.internal");
        assert!(p.check_target(&host, 443).is_ok());
        // DNS rebinding to metadata or loopback: refused at connect time.
        assert!(
            p.check_address(&host, "169.254.169.254:443".parse().unwrap())
                .is_err()
        );
        assert!(
            p.check_address(&host, "127.0.0.1:443".parse().unwrap())
                .is_err()
        );
        assert!(
            p.check_address(&host, "10.1.1.1:443".parse().unwrap())
                .is_ok()
        );
        // Admitted only through the CIDR: must resolve into it.
        let other = name("ci.example.org");
        assert!(p.check_target(&other, 443).is_ok());
        assert!(
            p.check_address(&other, "10.20.1.1:443".parse().unwrap())
                .is_ok()
        );
        assert!(
            p.check_address(&other, "10.30.1.1:443".parse().unwrap())
                .is_err()
        );
        assert!(
            p.check_address(&other, "10.20.9.9:443".parse().unwrap())
                .is_err(),
            "deny net"
        );
    }
}
