//! The SSRF guard's driver: gathers what the pure checks of
//! [`ForwardPolicy`] need — the agent's own interface addresses and what
//! the watched names resolve to — and resolves each target.
//!
//! - Own addresses are re-read on demand when the copy is older than
//!   [`OWN_ADDRESSES_MAX_AGE`], so a new pod IP is covered within that.
//!   If they cannot be read at all, every target is refused.
//! - Watched names (exact `deny` names, the egress proxy and Vault given
//!   by name) are resolved before the first check and then every
//!   [`NAME_REFRESH`] by the agent's task ([`Guard::refresh_names`]). A
//!   failed lookup keeps the previous answer: a DNS hiccup does not lift
//!   a deny.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::{ForwardPolicy, Host, OwnService, Refusal, Surroundings};
use crate::cidr::Cidr;

/// How often watched names are resolved again (the issue asks for at
/// most 30 s).
pub const NAME_REFRESH: Duration = Duration::from_secs(20);

/// The oldest copy of the host's addresses a check uses. Reading them is a
/// netlink dump (tens of microseconds); a forward request already pays a
/// DNS lookup and a connect.
const OWN_ADDRESSES_MAX_AGE: Duration = Duration::from_secs(1);

/// Longest wait for one watched name.
const NAME_TIMEOUT: Duration = Duration::from_secs(5);

/// Forward mode's guard: the policy plus what it needs to know about the
/// agent's surroundings. One per dispatcher (a reload builds a new one).
pub struct Guard {
    policy: ForwardPolicy,
    /// [`ForwardPolicy::watched_names`], computed once.
    watched: Vec<String>,
    /// The last read of the host's addresses, and when.
    own: Mutex<Option<(Instant, Arc<Vec<Cidr>>)>>,
    /// What each watched name resolved to last.
    resolved: RwLock<Arc<HashMap<String, Vec<IpAddr>>>>,
    /// Set once the watched names were resolved a first time: a check
    /// before that waits for it, so there is no window at startup.
    first_resolution: tokio::sync::OnceCell<()>,
}

impl Guard {
    /// A guard for `policy`; nothing is read or resolved yet.
    pub fn new(policy: ForwardPolicy) -> Self {
        Self {
            watched: policy.watched_names(),
            policy,
            own: Mutex::new(None),
            resolved: RwLock::default(),
            first_resolution: tokio::sync::OnceCell::new(),
        }
    }

    /// The lists.
    pub fn policy(&self) -> &ForwardPolicy {
        &self.policy
    }

    /// Checks `host:port` and, for a name, every address it resolves to
    /// (one refused answer among allowed ones is how DNS rebinding is
    /// usually tried); the checked addresses, the only ones to connect to.
    pub async fn check(&self, host: &Host, port: u16) -> Result<Vec<SocketAddr>, Refusal> {
        self.first_resolution
            .get_or_init(|| self.resolve_watched())
            .await;
        let own = self.own_addresses()?;
        let resolved = self
            .resolved
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let around = Surroundings {
            own: &own,
            resolved: &resolved,
        };
        self.policy.check_target(host, port, &around)?;
        let name = match host {
            Host::Ip(ip) => return Ok(vec![SocketAddr::new(*ip, port)]),
            Host::Name(name) => name,
        };
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), port))
            .await
            .map_err(|e| Refusal::Unresolved(format!("cannot resolve {name}: {e}")))?
            .collect();
        if addrs.is_empty() {
            return Err(Refusal::Unresolved(format!("{name} has no address")));
        }
        for addr in &addrs {
            self.policy.check_address(host, *addr, &around)?;
        }
        Ok(addrs)
    }

    /// Resolves the watched names again (the agent's task calls this every
    /// [`NAME_REFRESH`]); the first call also opens the checks.
    pub async fn refresh_names(&self) {
        if self.first_resolution.initialized() {
            self.resolve_watched().await;
        } else {
            self.first_resolution
                .get_or_init(|| self.resolve_watched())
                .await;
        }
    }

    async fn resolve_watched(&self) {
        if self.watched.is_empty() {
            return;
        }
        let lookups = self.watched.iter().map(|name| async move {
            let answer =
                tokio::time::timeout(NAME_TIMEOUT, tokio::net::lookup_host((name.as_str(), 0)))
                    .await;
            match answer {
                Ok(Ok(addrs)) => Some((name.clone(), addrs.map(|a| a.ip()).collect::<Vec<_>>())),
                Ok(Err(e)) => {
                    tracing::debug!(%name, error = %e, "forward: watched name does not resolve");
                    None
                }
                Err(_) => {
                    tracing::debug!(%name, "forward: watched name: no answer in time");
                    None
                }
            }
        });
        let answers = futures_util::future::join_all(lookups).await;
        let mut resolved = self
            .resolved
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .clone();
        for (name, addrs) in answers.into_iter().flatten() {
            resolved.insert(name, addrs);
        }
        *self.resolved.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(resolved);
    }

    /// The host's addresses, re-read when the copy is older than
    /// [`OWN_ADDRESSES_MAX_AGE`]; the last good copy if a re-read fails;
    /// a refusal if there never was one.
    fn own_addresses(&self) -> Result<Arc<Vec<Cidr>>, Refusal> {
        let mut own = self.own.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((read_at, nets)) = own.as_ref()
            && read_at.elapsed() < OWN_ADDRESSES_MAX_AGE
        {
            return Ok(nets.clone());
        }
        match read_own_addresses() {
            Ok(nets) => {
                let nets = Arc::new(nets);
                *own = Some((Instant::now(), nets.clone()));
                Ok(nets)
            }
            Err(e) => {
                tracing::warn!(error = %e, "forward: cannot read the host's own addresses");
                own.as_ref().map(|(_, nets)| nets.clone()).ok_or_else(|| {
                    Refusal::Address(format!("the host's own addresses cannot be read: {e}"))
                })
            }
        }
    }
}

/// Every interface address of this host (network namespace): the address
/// itself, or for a loopback interface its whole prefix (Linux answers
/// locally for all of `127.0.0.0/8`, or any prefix put on `lo`).
pub(super) fn read_own_addresses() -> std::io::Result<Vec<Cidr>> {
    use nix::net::if_::InterfaceFlags;
    let mut nets = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs()? {
        let Some(ip) = ifa.address.as_ref().and_then(socket_ip) else {
            continue;
        };
        let prefix = match ifa.netmask.as_ref().and_then(socket_ip) {
            Some(mask) if ifa.flags.contains(InterfaceFlags::IFF_LOOPBACK) => match mask {
                IpAddr::V4(m) => u32::from(m).leading_ones(),
                IpAddr::V6(m) => u128::from(m).leading_ones(),
            },
            _ if ip.is_ipv4() => 32,
            _ => 128,
        };
        if let Some(net) = Cidr::parse(&format!("{ip}/{prefix}")) {
            nets.push(net);
        }
    }
    Ok(nets)
}

fn socket_ip(addr: &nix::sys::socket::SockaddrStorage) -> Option<IpAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(IpAddr::V4(v4.ip()));
    }
    addr.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
}

/// The services the agent itself uses, as forward mode must not reach
/// them: its egress proxy (`[relay] proxy` or the environment's), its
/// `[vault] address` and its `[aws] endpoint` (a secret store's path is
/// the agent's credentials').
pub fn own_services(
    proxy: Option<&crate::egress::Proxy>,
    vault_address: Option<&str>,
    aws_endpoint: Option<&str>,
) -> Vec<OwnService> {
    let mut out = Vec::new();
    if let Some(proxy) = proxy
        && let Ok(host) = Host::parse(&proxy.host)
    {
        out.push(OwnService {
            what: "egress proxy",
            host,
            port: proxy.port,
        });
    }
    out.extend(vault_address.and_then(|url| service_at("vault", url)));
    out.extend(aws_endpoint.and_then(|url| service_at("AWS endpoint", url)));
    out
}

/// The service at `url` (`https://host[:port]`).
fn service_at(what: &'static str, url: &str) -> Option<OwnService> {
    let uri = url.parse::<http::Uri>().ok()?;
    let host = Host::parse(uri.host()?).ok()?;
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("http") {
            80
        } else {
            443
        });
    Some(OwnService { what, host, port })
}
