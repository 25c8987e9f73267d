//! Forward mode's policy: which `scheme://host[:port]` targets the agent
//! may call for `/v1/forward/…`, and the SSRF guard applied to every
//! address it would connect to.
//!
//! - `allow` entries: exact hosts, host globs (`*.api.corp.internal`, one
//!   or more labels), IP addresses and CIDRs, each with an optional
//!   `:port`. A bare `*`, and a glob over a public suffix (`*.com`,
//!   `*.co.uk`, `*.github.io`: see `glob`), are refused at validation as
//!   too broad.
//! - `deny` entries (same forms) win over `allow`; an exact name in `deny`
//!   also denies every address it resolves to (re-resolved by
//!   [`Guard`]), so the IP literal or another name for it is refused too.
//! - A hostname allowed by name is still refused if it resolves to a
//!   *special* address (loopback, link-local including cloud metadata,
//!   other metadata addresses, unspecified, multicast) unless an `allow`
//!   CIDR lying wholly inside that special range names the address
//!   (`127.0.0.1/32` admits loopback; `0.0.0.0/0` does not). A hostname
//!   allowed only through a CIDR must resolve into it.
//! - The agent's own host: its admin port on any of its addresses, always;
//!   its other interface addresses unless an `allow` entry names that exact
//!   address; its egress proxy and Vault unless an `allow` entry names
//!   that exact `host:port`.
//! - Every spelling of an address counts ([`ip`]): odd IPv4 literals
//!   (`2130706433`, `0177.0.0.1`, `0x7f.1`), IPv4-mapped and -compatible
//!   IPv6, NAT64, 6to4 and Teredo forms carrying an IPv4 address.
//!
//! The decisions here are pure: given the lists and the [`Surroundings`]
//! (own addresses, what watched names resolve to). [`Guard`] gathers those
//! and resolves targets.
//!
//! # Layout
//! - [`ip`]: address spellings and special ranges.
//! - `glob`: which domains a glob may cover (the public suffix list).
//! - `guard`: the agent's own addresses, watched names, DNS.

mod glob;
mod guard;
pub mod ip;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

pub use guard::{Guard, NAME_REFRESH, own_services};
pub use ip::literal_ip;

use crate::cidr::Cidr;
use ip::{canonical, is_local, parse_cidr, single, special_range, spellings};

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
        if let Some(net) = parse_cidr(text) {
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
            if suffix.is_empty() || suffix.contains('*') || !valid_hostname(suffix) {
                return Err(format!(
                    "{text:?}: a glob is `*.` and a domain (`*.corp.internal`)"
                ));
            }
            glob::narrow_enough(suffix).map_err(|m| format!("{text:?}: {m}"))?;
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

    /// Matches one spelling of an address by network.
    fn contains(&self, ip: IpAddr, port: u16) -> bool {
        self.port_ok(port) && matches!(&self.host, HostPattern::Net(net) if net.contains(ip))
    }

    /// Names exactly the address `ip` (one spelling): an address entry
    /// (`10.0.0.5`, `10.0.0.5/32`, `[fd00::5]:8080`), not a wider network.
    fn names_address(&self, ip: IpAddr, port: u16) -> bool {
        self.port_ok(port)
            && matches!(&self.host, HostPattern::Net(net) if net.within(&single(canonical(ip))))
    }

    /// Names exactly `host:port`, port included (`vault.corp.internal:8200`).
    fn names_host_port(&self, host: &Host, port: u16) -> bool {
        self.port == Some(port)
            && match (&self.host, host) {
                (HostPattern::Exact(h), Host::Name(n)) => h == n,
                (HostPattern::Net(net), Host::Ip(ip)) => net.within(&single(*ip)),
                _ => false,
            }
    }

    /// The exact hostname of this entry, if it is one (what a deny name
    /// resolves to is denied too).
    pub fn exact_name(&self) -> Option<&str> {
        match &self.host {
            HostPattern::Exact(name) => Some(name),
            _ => None,
        }
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

/// A service the agent itself talks to (its egress proxy, its Vault):
/// forward mode never reaches it unless an `allow` entry names its exact
/// `host:port` — a caller must not use the agent's own credentials'
/// path, nor its proxy to the outside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnService {
    /// What it is, for the log: `egress proxy`, `vault`.
    pub what: &'static str,
    /// Its host as configured.
    pub host: Host,
    /// Its port.
    pub port: u16,
}

/// The `[forward]` lists, and what the agent itself listens on or uses.
#[derive(Debug, Clone, Default)]
pub struct ForwardPolicy {
    /// Targets admitted.
    pub allow: Vec<Entry>,
    /// Targets refused even if admitted.
    pub deny: Vec<Entry>,
    /// Ports CONNECT tunnels may reach.
    pub connect_ports: Vec<u16>,
    /// The agent's own admin listener: its port is never a target on any
    /// of the host's addresses.
    pub admin: Option<SocketAddr>,
    /// The agent's egress proxy and Vault ([`own_services`]).
    pub services: Vec<OwnService>,
}

/// What the checks need to know beyond the lists, gathered by [`Guard`].
#[derive(Debug, Clone, Copy)]
pub struct Surroundings<'a> {
    /// Networks of the agent's own host: every interface address, and the
    /// whole prefix of a loopback interface's (the kernel answers for all
    /// of it).
    pub own: &'a [Cidr],
    /// What the watched names (exact `deny` names, own services given by
    /// name) resolved to last.
    pub resolved: &'a HashMap<String, Vec<IpAddr>>,
}

impl Surroundings<'_> {
    fn is_own(&self, ip: IpAddr) -> bool {
        self.own.iter().any(|net| net.contains(ip))
    }

    /// Whether `name` resolved to an address sharing a spelling with
    /// `views` (the spellings of one address).
    fn resolves_to(&self, name: &str, views: &[IpAddr]) -> bool {
        self.resolved.get(name).is_some_and(|addrs| {
            addrs
                .iter()
                .any(|a| spellings(*a).iter().any(|s| views.contains(s)))
        })
    }
}

/// Why a target was refused. The detail is for the agent's log and never
/// reaches the caller ([`Refusal::CALLER_DETAIL`]): it can name internal
/// addresses and DNS answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not on the allow list, or on the deny list.
    #[error("{0}")]
    Policy(String),
    /// It resolves to, or is, an address the guard never connects to.
    #[error("{0}")]
    Address(String),
    /// The name does not resolve.
    #[error("{0}")]
    Unresolved(String),
}

impl Refusal {
    /// The one detail every refused target gets: "not allowed", "resolves
    /// outside the allowed networks" and "does not resolve" must look the
    /// same, or a caller could map internal DNS through the agent.
    pub const CALLER_DETAIL: &'static str = "forward: target not allowed";

    /// Logs the real reason, at info with the request id: the caller saw
    /// only [`Refusal::CALLER_DETAIL`] and the audit line says `denied`.
    pub fn log(&self, request_id: &str, target: &str) {
        tracing::info!(%request_id, %target, reason = %self, "forward target refused");
    }
}

impl ForwardPolicy {
    /// Whether forward mode is on (an allow list exists).
    pub fn enabled(&self) -> bool {
        !self.allow.is_empty()
    }

    /// The decision that needs no DNS for the target: is `host:port`
    /// admitted by the lists? For a hostname admitted only through a CIDR,
    /// the resolved addresses decide ([`ForwardPolicy::check_address`]);
    /// an IP literal is checked whole here.
    pub fn check_target(
        &self,
        host: &Host,
        port: u16,
        around: &Surroundings<'_>,
    ) -> Result<(), Refusal> {
        let name = match host {
            Host::Ip(ip) => return self.check_address(host, SocketAddr::new(*ip, port), around),
            Host::Name(name) => name,
        };
        if self.deny.iter().any(|e| e.names(name, port)) {
            return Err(Refusal::Policy(format!(
                "{} is on the deny list",
                host.authority(port)
            )));
        }
        let allowed = self.allow.iter().any(|e| e.names(name, port))
            || self
                .allow
                .iter()
                .any(|e| matches!(e.host, HostPattern::Net(_)));
        if !allowed {
            return Err(Refusal::Policy(format!(
                "{} is not on the allow list",
                host.authority(port)
            )));
        }
        if let Some(service) = self
            .services
            .iter()
            .find(|s| s.host == *host && s.port == port && !self.opens(s))
        {
            return Err(Refusal::Address(format!(
                "{} is the agent's own {}",
                host.authority(port),
                service.what
            )));
        }
        Ok(())
    }

    /// The guard, for one address `host` resolved to (or is). Refused if
    /// any spelling of it is denied (by network, or as an address a deny
    /// name resolves to); if it is not admitted (an IP literal or a name
    /// admitted only through CIDRs, outside them); if it is the admin port
    /// on the agent's host, the agent's egress proxy or Vault, another
    /// address of the agent's host, or special — each unless the `allow`
    /// entry that rule asks for names it.
    pub fn check_address(
        &self,
        host: &Host,
        addr: SocketAddr,
        around: &Surroundings<'_>,
    ) -> Result<(), Refusal> {
        let ip = canonical(addr.ip());
        let port = addr.port();
        let views = spellings(ip);
        if self
            .deny
            .iter()
            .any(|e| views.iter().any(|v| e.contains(*v, port)))
        {
            return Err(Refusal::Policy(format!("{ip} is on the deny list")));
        }
        if let Some(name) = self
            .deny
            .iter()
            .filter(|e| e.port_ok(port))
            .filter_map(Entry::exact_name)
            .find(|name| around.resolves_to(name, &views))
        {
            return Err(Refusal::Policy(format!(
                "{ip} is an address of {name}, on the deny list"
            )));
        }
        let by_name = matches!(host, Host::Name(n) if self.allow.iter().any(|e| e.names(n, port)));
        if !by_name && !self.allowed_address(ip, port) {
            return Err(match host {
                Host::Name(name) => Refusal::Address(format!(
                    "{name} resolves to {ip}, outside the allowed networks"
                )),
                Host::Ip(_) => {
                    Refusal::Policy(format!("{} is not on the allow list", host.authority(port)))
                }
            });
        }
        self.check_own(ip, port, &views, around)?;
        for view in &views {
            if let Some(range) = special_range(*view) {
                let named = self.allow.iter().any(|e| match &e.host {
                    HostPattern::Net(net) => {
                        e.port_ok(port) && net.contains(*view) && net.within(&range)
                    }
                    _ => false,
                });
                if !named {
                    return Err(Refusal::Address(format!(
                        "{ip} is a loopback, link-local, metadata, unspecified or multicast \
                         address; allow it only by a CIDR inside that range"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Admitted by network: the address as written lies in an `allow`
    /// network, or it is a NAT64 address and every IPv4 host it may
    /// translate to does (`64:ff9b::10.0.0.1` under `10.0.0.0/8`). A 6to4,
    /// Teredo or IPv4-compatible address is an IPv6 destination of its
    /// own: an IPv4 allow entry never admits it (`2002:a00:1::5` is not
    /// 10.0.0.1).
    fn allowed_address(&self, ip: IpAddr, port: u16) -> bool {
        let ip = canonical(ip);
        let admitted = |v: IpAddr| self.allow.iter().any(|e| e.contains(v, port));
        if admitted(ip) {
            return true;
        }
        let translated = match ip {
            IpAddr::V6(v6) => ip::nat64_ipv4(v6),
            IpAddr::V4(_) => Vec::new(),
        };
        !translated.is_empty() && translated.into_iter().all(|v4| admitted(IpAddr::V4(v4)))
    }

    /// The agent's own host: its admin port on any of its addresses
    /// (loopback and unspecified included), its egress proxy and Vault, and
    /// its other interface addresses. Loopback and unspecified addresses
    /// are left to the special-range rule: an `allow` CIDR inside the
    /// loopback range can only mean this host, so it already says so.
    fn check_own(
        &self,
        ip: IpAddr,
        port: u16,
        views: &[IpAddr],
        around: &Surroundings<'_>,
    ) -> Result<(), Refusal> {
        if let Some(admin) = self.admin
            && admin.port() == port
            && views
                .iter()
                .any(|v| is_local(*v) || around.is_own(*v) || *v == canonical(admin.ip()))
        {
            return Err(Refusal::Address(format!(
                "{ip}:{port} is the agent's own admin listener"
            )));
        }
        for service in &self.services {
            let is_service = match &service.host {
                Host::Ip(addr) => spellings(*addr).iter().any(|s| views.contains(s)),
                Host::Name(name) => around.resolves_to(name, views),
            };
            if is_service
                && service.port == port
                && !self.opens(service)
                && !self.allow.iter().any(|e| {
                    e.port == Some(port) && views.iter().any(|v| e.names_address(*v, port))
                })
            {
                return Err(Refusal::Address(format!(
                    "{ip}:{port} is the agent's own {}",
                    service.what
                )));
            }
        }
        if let Some(own) = views.iter().find(|v| !is_local(**v) && around.is_own(**v))
            && !self.allow.iter().any(|e| e.names_address(*own, port))
        {
            return Err(Refusal::Address(format!(
                "{ip} is an address of the agent's own host; allow it only by that exact address"
            )));
        }
        Ok(())
    }

    /// Whether an `allow` entry names `service`'s exact `host:port`.
    fn opens(&self, service: &OwnService) -> bool {
        self.allow
            .iter()
            .any(|e| e.names_host_port(&service.host, service.port))
    }

    /// Names whose addresses the checks need ([`Surroundings::resolved`]):
    /// exact `deny` names and own services given by name.
    pub fn watched_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .deny
            .iter()
            .filter_map(Entry::exact_name)
            .map(str::to_owned)
            .chain(self.services.iter().filter_map(|s| match &s.host {
                Host::Name(n) => Some(n.clone()),
                Host::Ip(_) => None,
            }))
            .collect();
        names.sort();
        names.dedup();
        names
    }
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
