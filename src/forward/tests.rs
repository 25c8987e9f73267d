use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::ip::embedded_ipv4;
use super::*;

/// A policy and the surroundings it is checked in.
struct Case {
    policy: ForwardPolicy,
    own: Vec<Cidr>,
    resolved: HashMap<String, Vec<IpAddr>>,
}

fn policy(allow: &[&str], deny: &[&str]) -> Case {
    Case {
        policy: ForwardPolicy {
            allow: allow.iter().map(|e| Entry::parse(e).unwrap()).collect(),
            deny: deny.iter().map(|e| Entry::parse(e).unwrap()).collect(),
            connect_ports: vec![443],
            admin: Some("127.0.0.1:9464".parse().unwrap()),
            services: Vec::new(),
        },
        own: Vec::new(),
        resolved: HashMap::new(),
    }
}

impl Case {
    fn own(mut self, nets: &[&str]) -> Self {
        self.own = nets.iter().map(|n| Cidr::parse(n).unwrap()).collect();
        self
    }

    fn admin(mut self, addr: &str) -> Self {
        self.policy.admin = Some(addr.parse().unwrap());
        self
    }

    fn resolves(mut self, name: &str, addrs: &[&str]) -> Self {
        self.resolved.insert(
            name.to_owned(),
            addrs.iter().map(|a| a.parse().unwrap()).collect(),
        );
        self
    }

    fn service(mut self, what: &'static str, host: &str, port: u16) -> Self {
        self.policy.services.push(OwnService {
            what,
            host: Host::parse(host).unwrap(),
            port,
        });
        self
    }

    fn around(&self) -> Surroundings<'_> {
        Surroundings {
            own: &self.own,
            resolved: &self.resolved,
        }
    }

    fn target(&self, host: &str, port: u16) -> Result<(), Refusal> {
        self.policy
            .check_target(&Host::parse(host).unwrap(), port, &self.around())
    }

    /// `host` (a name) resolved to `addr`.
    fn address(&self, host: &str, addr: &str) -> Result<(), Refusal> {
        let addr = addr.parse().unwrap();
        self.policy
            .check_address(&Host::parse(host).unwrap(), addr, &self.around())
    }
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
    assert!(p.target("jenkins.corp.internal", 443).is_ok());
    assert!(p.target("JENKINS.corp.internal.", 80).is_ok());
    assert!(p.target("a.b.api.corp.internal", 443).is_ok());
    assert!(
        p.target("api.corp.internal", 443).is_err(),
        "glob needs a label"
    );
    assert!(p.target("evilapi.corp.internal", 443).is_err());
    assert!(p.target("git.corp.internal", 8443).is_ok());
    assert!(p.target("git.corp.internal", 443).is_err());
    assert!(matches!(
        p.target("secret.api.corp.internal", 443),
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
        "168.63.129.16",
        "192.0.0.192",
        "0.0.0.0",
        "224.0.0.1",
        "::1",
        "fe80::1",
        "fd00:ec2::254",
    ] {
        assert!(
            matches!(wide.target(ip, 80), Err(Refusal::Address(_))),
            "{ip} through 0.0.0.0/0"
        );
    }
    assert!(wide.target("10.1.2.3", 80).is_ok());
    let loopback = policy(&["127.0.0.1/32"], &[]);
    assert!(loopback.target("127.0.0.1", 8080).is_ok());
    // Loopback allowed, the agent's admin listener still not.
    assert!(loopback.target("127.0.0.1", 9464).is_err());
    // Octal loopback is loopback.
    assert!(matches!(
        wide.target("0177.0.0.1", 80),
        Err(Refusal::Address(_))
    ));
    // Azure's WireServer by its own /32: named.
    let azure = policy(&["168.63.129.16/32"], &[]);
    assert!(azure.target("168.63.129.16", 80).is_ok());
}

#[test]
fn a_name_resolving_to_a_forbidden_address_is_refused() {
    let p = policy(&["*.corp.internal", "10.20.0.0/16"], &["10.20.9.0/24"]);
    let host = "jenkins.corp.internal";
    assert!(p.target(host, 443).is_ok());
    // DNS rebinding to metadata or loopback: refused at connect time.
    assert!(p.address(host, "169.254.169.254:443").is_err());
    assert!(p.address(host, "127.0.0.1:443").is_err());
    assert!(p.address(host, "[64:ff9b::a9fe:a9fe]:443").is_err());
    assert!(p.address(host, "10.1.1.1:443").is_ok());
    // Admitted only through the CIDR: must resolve into it.
    let other = "ci.example.org";
    assert!(p.target(other, 443).is_ok());
    assert!(p.address(other, "10.20.1.1:443").is_ok());
    assert!(p.address(other, "10.30.1.1:443").is_err());
    assert!(p.address(other, "10.20.9.9:443").is_err(), "deny net");
}

#[test]
fn every_form_carrying_an_ipv4_address_decodes_to_it() {
    let v4 = |s: &str| s.parse::<Ipv4Addr>().unwrap();
    let v6 = |s: &str| s.parse::<Ipv6Addr>().unwrap();
    let meta = v4("169.254.169.254");
    for form in [
        "::a9fe:a9fe",                          // IPv4-compatible
        "64:ff9b::a9fe:a9fe",                   // NAT64, well-known prefix
        "64:ff9b:1::a9fe:a9fe",                 // NAT64 local use, /96 layout
        "64:ff9b:1:ab:cd:ef:a9fe:a9fe",         // the same, site bits set
        "64:ff9b:1:a9fe:a9:fe00::",             // NAT64 local use, /48 layout
        "64:ff9b:1:a9:fe:a9fe::",               // /56 layout
        "64:ff9b:1:0:a9:fea9:fe00:0",           // /64 layout
        "2002:a9fe:a9fe::1",                    // 6to4
        "2001:0:4136:e378:8000:63bf:5601:5601", // Teredo, client inverted
    ] {
        assert!(embedded_ipv4(v6(form)).contains(&meta), "{form}");
    }
    // Not forms that carry one.
    for plain in ["::", "::1", "2001:db8::1", "fd00::1", "64:ff9c::a9fe:a9fe"] {
        assert!(embedded_ipv4(v6(plain)).is_empty(), "{plain}");
    }
    // Bits 64–71 set: no RFC 6052 layout applies.
    assert!(embedded_ipv4(v6("64:ff9b:1:0:100::a9fe:a9fe")).is_empty());
    // A /96-layout address is not also read in a shorter layout.
    assert_eq!(embedded_ipv4(v6("64:ff9b:1::a00:1")), vec![v4("10.0.0.1")]);
}

#[test]
fn special_addresses_are_refused_in_every_spelling() {
    let wide = policy(&["0.0.0.0/0", "::/0"], &[]);
    for ip in [
        "::a9fe:a9fe",
        "::7f00:1",
        "64:ff9b::a9fe:a9fe",
        "64:ff9b::7f00:1",
        "64:ff9b::a83f:8110",
        "64:ff9b::c000:c0",
        "64:ff9b:1::a9fe:a9fe",
        "64:ff9b:1:a9fe:a9:fe00::",
        "2002:a9fe:a9fe::1",
        "2002:7f00:1::",
        "2001:0:4136:e378:8000:63bf:5601:5601",
        "::ffff:a9fe:a9fe",
    ] {
        assert!(
            matches!(wide.target(ip, 80), Err(Refusal::Address(_))),
            "{ip} through 0.0.0.0/0, ::/0"
        );
        assert!(
            wide.address("jenkins.corp.internal", &format!("[{ip}]:80"))
                .is_err(),
            "{ip} as a resolved address"
        );
    }
    // Ordinary addresses in the same forms pass.
    assert!(wide.target("64:ff9b::a00:1", 80).is_ok());
    assert!(wide.target("2002:a00:1::1", 80).is_ok());
    assert!(wide.target("2001:db8::1", 80).is_ok());
    // The "allow CIDR inside the special range" rule holds for every
    // spelling too.
    let meta = policy(&["169.254.169.254/32"], &[]);
    assert!(meta.target("169.254.169.254", 80).is_ok());
    assert!(meta.target("64:ff9b::a9fe:a9fe", 80).is_ok());
    assert!(meta.target("::ffff:169.254.169.254", 80).is_ok());
    assert!(meta.target("64:ff9b::a9fe:a9ff", 80).is_err());
}

#[test]
fn deny_and_allow_networks_match_every_spelling() {
    let p = policy(&["0.0.0.0/0", "::/0"], &["10.30.0.0/16"]);
    for ip in [
        "10.30.0.9",
        "::ffff:10.30.0.9",
        "::a1e:9",
        "64:ff9b::a1e:9",
        "64:ff9b:1::a1e:9",
        "2002:a1e:9::1",
    ] {
        assert!(
            matches!(p.target(ip, 80), Err(Refusal::Policy(m)) if m.contains("deny")),
            "{ip}"
        );
    }
    // A deny written as IPv4-mapped IPv6 is the IPv4 network.
    let mapped = policy(&["0.0.0.0/0"], &["::ffff:10.30.0.0/112"]);
    assert!(mapped.target("10.30.0.9", 80).is_err());
    assert!(mapped.target("10.31.0.9", 80).is_ok());
    // Allow: the NAT64 spelling of an allowed address is allowed, of
    // another one not.
    let narrow = policy(&["10.20.0.0/16"], &[]);
    assert!(narrow.target("64:ff9b::a14:1", 80).is_ok());
    assert!(narrow.target("64:ff9b::a15:1", 80).is_err());
    assert!(
        narrow
            .address("ci.example.org", "[64:ff9b::a15:1]:80")
            .is_err()
    );
    // 6to4, Teredo and IPv4-compatible addresses are IPv6 destinations of
    // their own: an IPv4 allow never admits them (2^96 addresses behind
    // 2002:a14::/32 are not 10.20.0.0/16).
    for ip in [
        "2002:a14:1::5",
        "2002:a14:1:dead:beef::1",
        "2001:0:1234:5678::f5eb:fffe",
        "::a14:1",
    ] {
        assert!(narrow.target(ip, 80).is_err(), "{ip}");
    }
    // Named by an IPv6 allow entry, they are allowed.
    let six = policy(&["2002:a14:1::/48"], &[]);
    assert!(six.target("2002:a14:1::5", 80).is_ok());
}

#[test]
fn the_agents_own_host_needs_its_exact_address_and_never_the_admin_port() {
    let own = ["10.200.0.1/32", "127.0.0.0/8", "fd00:1::5/128"];
    let p = policy(&["10.0.0.0/8", "fd00::/8", "*.corp.internal"], &[])
        .own(&own)
        .admin("0.0.0.0:9464");
    for target in ["10.200.0.1", "64:ff9b::ac8:1", "fd00:1::5"] {
        assert!(
            matches!(p.target(target, 8080), Err(Refusal::Address(m)) if m.contains("own host")),
            "{target}"
        );
        assert!(p.target(target, 9464).is_err(), "{target} admin");
    }
    assert!(
        p.address("me.corp.internal", "10.200.0.1:8080").is_err(),
        "a name resolving to the host"
    );
    assert!(p.target("10.200.0.2", 8080).is_ok(), "a neighbour");
    assert!(
        p.target("10.200.0.2", 9464).is_ok(),
        "a sibling's admin port"
    );

    // Named exactly: reachable, except the admin port.
    let exact = policy(&["10.0.0.0/8", "10.200.0.1", "*.corp.internal"], &[])
        .own(&own)
        .admin("0.0.0.0:9464");
    assert!(exact.target("10.200.0.1", 8080).is_ok());
    assert!(exact.address("me.corp.internal", "10.200.0.1:8080").is_ok());
    assert!(exact.target("10.200.0.1", 9464).is_err());
    assert!(exact.target("64:ff9b::ac8:1", 9464).is_err());
    let port_only = policy(&["10.200.0.1:8080"], &[]).own(&own);
    assert!(port_only.target("10.200.0.1", 8080).is_ok());
    assert!(port_only.target("10.200.0.1", 8081).is_err());

    // The admin port on loopback or 0.0.0.0 when the admin listener is
    // bound to one address: still the agent's own.
    let bound = policy(&["127.0.0.0/8", "0.0.0.0/32"], &[])
        .own(&own)
        .admin("10.200.0.1:9464");
    assert!(bound.target("127.0.0.1", 9464).is_err());
    assert!(bound.target("0.0.0.0", 9464).is_err());
    assert!(bound.target("127.0.0.1", 8080).is_ok());
}

#[test]
fn the_agents_proxy_and_vault_need_their_exact_host_and_port() {
    let case = |allow: &[&str]| {
        policy(allow, &[])
            .service("vault", "vault.corp.internal", 8200)
            .service("egress proxy", "10.2.2.2", 3128)
            .resolves("vault.corp.internal", &["10.1.1.1"])
    };
    let p = case(&["10.0.0.0/8", "*.corp.internal"]);
    assert!(p.target("vault.corp.internal", 8200).is_err());
    assert!(p.target("vault.corp.internal", 443).is_ok());
    assert!(p.target("10.1.1.1", 8200).is_err());
    assert!(p.target("64:ff9b::a01:101", 8200).is_err());
    assert!(p.address("alias.corp.internal", "10.1.1.1:8200").is_err());
    assert!(p.target("10.2.2.2", 3128).is_err());
    assert!(p.target("10.2.2.2", 80).is_ok());

    let opened = case(&[
        "10.0.0.0/8",
        "*.corp.internal",
        "vault.corp.internal:8200",
        "10.2.2.2:3128",
    ]);
    assert!(opened.target("vault.corp.internal", 8200).is_ok());
    assert!(opened.target("10.1.1.1", 8200).is_ok());
    assert!(opened.target("10.2.2.2", 3128).is_ok());
    // Without the port, the entry does not name host:port.
    let no_port = case(&["10.0.0.0/8", "vault.corp.internal", "10.2.2.2"]);
    assert!(no_port.target("vault.corp.internal", 8200).is_err());
    assert!(no_port.target("10.2.2.2", 3128).is_err());
}

#[test]
fn a_deny_name_denies_what_it_resolves_to() {
    let p = policy(&["10.0.0.0/8", "*.corp.internal"], &["vault.corp.internal"])
        .resolves("vault.corp.internal", &["10.1.1.1", "fd00::9"]);
    assert!(p.target("vault.corp.internal", 443).is_err());
    for ip in ["10.1.1.1", "::ffff:10.1.1.1", "64:ff9b::a01:101"] {
        assert!(
            matches!(p.target(ip, 8200), Err(Refusal::Policy(m)) if m.contains("vault.corp.internal")),
            "{ip}"
        );
    }
    assert!(p.address("alias.corp.internal", "10.1.1.1:443").is_err());
    assert!(p.address("alias.corp.internal", "[fd00::9]:443").is_err());
    assert!(p.address("alias.corp.internal", "10.1.1.2:443").is_ok());
    // With a port: that port only.
    let port = policy(&["10.0.0.0/8"], &["vault.corp.internal:8200"])
        .resolves("vault.corp.internal", &["10.1.1.1"]);
    assert!(port.target("10.1.1.1", 8200).is_err());
    assert!(port.target("10.1.1.1", 443).is_ok());
    // Watched: exact deny names and services by name; globs cannot be.
    let watched = policy(
        &["10.0.0.0/8"],
        &["vault.corp.internal", "*.db.corp.internal"],
    )
    .service("egress proxy", "proxy.corp.internal", 3128)
    .service("vault", "10.1.1.1", 8200);
    assert_eq!(
        watched.policy.watched_names(),
        ["proxy.corp.internal", "vault.corp.internal"]
    );
}

#[test]
fn own_services_come_from_the_proxy_and_vault_address() {
    let proxy = crate::egress::parse_proxy_url("http://10.2.2.2:3128").unwrap();
    let services = own_services(Some(&proxy), Some("https://Vault.corp.internal"), None);
    assert_eq!(
        services,
        [
            OwnService {
                what: "egress proxy",
                host: Host::Ip("10.2.2.2".parse().unwrap()),
                port: 3128
            },
            OwnService {
                what: "vault",
                host: Host::Name("vault.corp.internal".into()),
                port: 443
            },
        ]
    );
    let services = own_services(
        None,
        Some("https://[fd00::7]:8200"),
        Some("http://sm.corp.internal"),
    );
    assert_eq!(services[0].host, Host::Ip("fd00::7".parse().unwrap()));
    assert_eq!(services[0].port, 8200);
    assert_eq!(services[1].host, Host::Name("sm.corp.internal".into()));
    assert_eq!(services[1].port, 80);
}

#[test]
fn the_hosts_own_addresses_include_the_loopback_prefix() {
    let own = guard::read_own_addresses().unwrap();
    assert!(
        own.iter().any(|n| n.contains("127.0.0.1".parse().unwrap())
            && n.contains("127.1.2.3".parse().unwrap())),
        "{own:?}"
    );
}
