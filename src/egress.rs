//! How the agent reaches the relay through an HTTP CONNECT proxy: from
//! `[relay] proxy`, else the standard environment (`HTTPS_PROXY` for
//! `wss://`, `HTTP_PROXY` for `ws://`, then `ALL_PROXY`; lower-case names
//! too) unless `NO_PROXY` names the relay host.

use std::net::IpAddr;
use std::path::PathBuf;

use base64::Engine;
use http::Uri;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::cidr::Cidr;
use crate::env::Env;
use crate::secret::SecretString;

/// The proxy the relay is reached through.
#[derive(Debug, Clone)]
pub struct Proxy {
    /// Proxy host (no brackets around IPv6).
    pub host: String,
    /// Proxy port.
    pub port: u16,
    /// Basic credentials.
    pub auth: Option<ProxyAuth>,
}

/// Basic credentials for the proxy.
#[derive(Debug, Clone)]
pub enum ProxyAuth {
    /// From the proxy URL of the environment (`http://user:pass@host`).
    Inline {
        /// User name.
        username: String,
        /// Password.
        password: SecretString,
    },
    /// `proxy_username` with the password in `proxy_password_file`, read
    /// at every connect.
    File {
        /// User name.
        username: String,
        /// File holding the password (whitespace trimmed).
        password_file: PathBuf,
    },
}

impl std::fmt::Display for Proxy {
    /// `host:port`, never the credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Parses a proxy URL: `http://[user:password@]host[:port]` (port 80 if
/// absent; the scheme may be omitted).
pub fn parse_proxy_url(text: &str) -> Result<Proxy, String> {
    let text = text.trim();
    let with_scheme = if text.contains("://") {
        text.to_owned()
    } else {
        format!("http://{text}")
    };
    let uri: Uri = with_scheme.parse().map_err(|e| format!("{e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err("only http:// proxies (CONNECT) are supported".into());
    }
    let authority = uri.authority().ok_or("has no host")?.as_str();
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let hostport: http::uri::Authority = hostport.parse().map_err(|e| format!("{e}"))?;
    let host = hostport
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    if host.is_empty() {
        return Err("has no host".into());
    }
    let auth = userinfo.map(|u| {
        let (user, pass) = u.split_once(':').unwrap_or((u, ""));
        ProxyAuth::Inline {
            username: percent_decode(user),
            password: percent_decode(pass).into(),
        }
    });
    Ok(Proxy {
        host,
        port: hostport.port_u16().unwrap_or(80),
        auth,
    })
}

/// The proxy from the environment for a relay at `host` with `scheme`,
/// unless `NO_PROXY` exempts the host. Errors name the variable.
pub fn proxy_from_env(env: &impl Env, scheme: &str, host: &str) -> Result<Option<Proxy>, String> {
    let var = |name: &'static str| {
        env.var(name)
            .or_else(|| env.var(&name.to_ascii_lowercase()))
            .filter(|v| !v.trim().is_empty())
            .map(|v| (name, v))
    };
    let first = if scheme == "wss" {
        var("HTTPS_PROXY")
    } else {
        var("HTTP_PROXY")
    };
    let Some((name, value)) = first.or_else(|| var("ALL_PROXY")) else {
        return Ok(None);
    };
    if let Some((_, no_proxy)) = var("NO_PROXY")
        && no_proxy_matches(&no_proxy, host)
    {
        return Ok(None);
    }
    parse_proxy_url(&value)
        .map(Some)
        .map_err(|e| format!("{name}: {e}"))
}

/// Whether a `NO_PROXY` list names `host`: `*`, the host itself, a domain
/// suffix (`.corp.internal` or `corp.internal` both match
/// `relay.corp.internal`), an IP address or a CIDR containing the host's
/// address. Entries may carry a `:port`, which is ignored.
pub fn no_proxy_matches(list: &str, host: &str) -> bool {
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let host_ip: Option<IpAddr> = host.parse().ok();
    list.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .any(|entry| {
            if entry == "*" {
                return true;
            }
            if let Some(cidr) = Cidr::parse(entry) {
                return host_ip.is_some_and(|ip| cidr.contains(ip));
            }
            let entry = strip_port(entry).to_ascii_lowercase();
            if let Ok(ip) = entry.parse::<IpAddr>() {
                return host_ip == Some(ip);
            }
            let domain = entry.trim_start_matches("*.").trim_start_matches('.');
            host == domain || host.ends_with(&format!(".{domain}"))
        })
}

/// Decodes `%XX` escapes (userinfo in proxy URLs); invalid escapes stay.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn strip_port(entry: &str) -> &str {
    let entry = entry.trim_start_matches('[');
    if let Some((host, _)) = entry.split_once(']') {
        return host;
    }
    match entry.rsplit_once(':') {
        // One colon: host:port. More: a bare IPv6 address.
        Some((host, port)) if !host.contains(':') && port.parse::<u16>().is_ok() => host,
        _ => entry,
    }
}

/// Largest proxy response head read.
const MAX_HEAD: usize = 8 * 1024;

/// Opens a TCP connection to `proxy` and asks it (CONNECT) for a tunnel to
/// `host:port`; the stream is the tunnel once this returns.
pub async fn connect(proxy: &Proxy, host: &str, port: u16) -> std::io::Result<TcpStream> {
    let mut tcp = TcpStream::connect((proxy.host.as_str(), proxy.port)).await?;
    let _ = tcp.set_nodelay(true);
    let target = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(auth) = &proxy.auth {
        let (username, password) = match auth {
            ProxyAuth::Inline { username, password } => (username.clone(), password.clone()),
            ProxyAuth::File {
                username,
                password_file,
            } => {
                let password = tokio::fs::read_to_string(password_file)
                    .await
                    .map_err(|e| {
                        std::io::Error::new(
                            e.kind(),
                            format!("proxy password file {}: {e}", password_file.display()),
                        )
                    })?;
                (username.clone(), password.trim().to_owned().into())
            }
        };
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("{username}:{}", password.expose()));
        request.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
    }
    request.push_str("\r\n");
    tcp.write_all(request.as_bytes()).await?;

    // Read the response head byte by byte: nothing of the tunnel may be
    // consumed past its blank line.
    let mut head = Vec::with_capacity(256);
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_HEAD {
            return Err(std::io::Error::other("proxy response head too large"));
        }
        let byte = tcp.read_u8().await?;
        head.push(byte);
    }
    let status_line = String::from_utf8_lossy(&head);
    let status_line = status_line.lines().next().unwrap_or_default();
    let code = status_line.split_whitespace().nth(1).unwrap_or_default();
    if code != "200" {
        let hint = if code == "407" {
            " (proxy authentication required or refused)"
        } else {
            ""
        };
        return Err(std::io::Error::other(format!(
            "proxy {proxy} refused CONNECT {target}: {status_line}{hint}"
        )));
    }
    Ok(tcp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn no_proxy_matches_suffixes_ips_cidrs_and_star() {
        let list = ".corp.internal, example.com, 10.0.0.0/8, 192.0.2.7, [::1]:443";
        assert!(no_proxy_matches(list, "relay.corp.internal"));
        assert!(no_proxy_matches(list, "example.com"));
        assert!(no_proxy_matches(list, "a.example.com"));
        assert!(!no_proxy_matches(list, "badexample.com"));
        assert!(no_proxy_matches(list, "10.20.30.40"));
        assert!(!no_proxy_matches(list, "11.0.0.1"));
        assert!(no_proxy_matches(list, "192.0.2.7"));
        assert!(no_proxy_matches(list, "[::1]"));
        assert!(!no_proxy_matches(list, "relay.example.org"));
        assert!(no_proxy_matches("*", "anything"));
        assert!(no_proxy_matches("relay:8443", "relay"));
    }

    #[test]
    fn env_proxy_by_scheme_with_credentials_and_no_proxy() {
        let env: BTreeMap<String, String> = [
            ("https_proxy", "http://u:p%40ss@proxy.corp:3128"),
            ("HTTP_PROXY", "proxy.plain:8080"),
            ("NO_PROXY", ".internal"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let p = proxy_from_env(&env, "wss", "relay.example.com")
            .unwrap()
            .unwrap();
        assert_eq!(p.to_string(), "proxy.corp:3128");
        match &p.auth {
            Some(ProxyAuth::Inline { username, password }) => {
                assert_eq!(username, "u");
                assert_eq!(password.expose(), "p@ss");
            }
            other => panic!("{other:?}"),
        }
        let p = proxy_from_env(&env, "ws", "relay.example.com")
            .unwrap()
            .unwrap();
        assert_eq!(p.to_string(), "proxy.plain:8080");
        assert!(
            proxy_from_env(&env, "wss", "relay.internal")
                .unwrap()
                .is_none()
        );
        let bad: BTreeMap<String, String> =
            [("HTTPS_PROXY".to_string(), "socks5://x:1".to_string())].into();
        let err = proxy_from_env(&bad, "wss", "r").unwrap_err();
        assert!(err.starts_with("HTTPS_PROXY:"), "{err}");
    }
}
