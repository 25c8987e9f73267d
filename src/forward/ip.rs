//! Address spellings: every form of an IP literal a resolver accepts, the
//! IPv4 addresses an IPv6 address stands for, and the special ranges the
//! guard never connects to without an explicit `allow`.
//!
//! One address has many spellings. `169.254.169.254` is also
//! `2852039166`, `0251.0376.0251.0376`, `::ffff:169.254.169.254`,
//! `::a9fe:a9fe`, `64:ff9b::a9fe:a9fe`, `2002:a9fe:a9fe::` and a Teredo
//! address; every check runs on all of them (`spellings`) so one cannot
//! slip past another.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::cidr::Cidr;

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`) as IPv4: on a dual-stack host it
/// is the same socket address.
pub(super) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The address in canonical form, then every IPv4 address it carries
/// ([`embedded_ipv4`]).
pub(super) fn spellings(ip: IpAddr) -> Vec<IpAddr> {
    let ip = canonical(ip);
    let mut out = vec![ip];
    if let IpAddr::V6(v6) = ip {
        out.extend(embedded_ipv4(v6).into_iter().map(IpAddr::V4));
    }
    out
}

/// NAT64's well-known prefix (RFC 6052): `64:ff9b::/96`.
const NAT64: u128 = 0x0064_ff9b_u128 << 96;
/// NAT64's local-use prefix (RFC 8215): `64:ff9b:1::/48`.
const NAT64_LOCAL: u128 = 0x0064_ff9b_0001_u128 << 80;
/// 6to4 (RFC 3056): `2002::/16`, the IPv4 address in bits 16–47.
const SIX_TO_FOUR: u128 = 0x2002_u128 << 112;
/// Teredo (RFC 4380): `2001::/32`, the client's IPv4 address in the last
/// 32 bits, inverted.
const TEREDO: u128 = 0x2001_0000_u128 << 96;

/// The IPv4 addresses packets to `v6` end up at, in the forms that carry
/// one:
///
/// - IPv4-compatible `::a.b.c.d` (RFC 4291 §2.5.5.1; not `::` or `::1`);
/// - NAT64 `64:ff9b::a.b.c.d`;
/// - NAT64 local use `64:ff9b:1::/48`: the site picks the layout (RFC 6052
///   §2.2: the IPv4 address after a /48, /56, /64 or /96 prefix, bits
///   64–71 zero, the suffix zero), so every layout the address is
///   well-formed for counts;
/// - 6to4 `2002:AABB:CCDD::/48`;
/// - Teredo `2001:0:…`, the client address (last 32 bits XOR `0xffffffff`).
pub(super) fn embedded_ipv4(v6: Ipv6Addr) -> Vec<Ipv4Addr> {
    let bits = u128::from(v6);
    let low32 = bits as u32;
    if bits >> 32 == 0 && bits > 1 {
        return vec![Ipv4Addr::from(low32)];
    }
    if bits >> 32 == NAT64 >> 32 {
        return vec![Ipv4Addr::from(low32)];
    }
    if bits >> 80 == NAT64_LOCAL >> 80 {
        return nat64_local_layouts(bits);
    }
    if bits >> 112 == SIX_TO_FOUR >> 112 {
        return vec![Ipv4Addr::from((bits >> 80) as u32)];
    }
    if bits >> 96 == TEREDO >> 96 {
        return vec![Ipv4Addr::from(low32 ^ u32::MAX)];
    }
    Vec::new()
}

/// The IPv4 hosts a NAT64 address is translated to: the only forms whose
/// packets really end at the embedded IPv4 address. 6to4, Teredo and
/// IPv4-compatible addresses are IPv6 destinations of their own: their
/// embedded address may make them special or denied, never allowed.
pub(super) fn nat64_ipv4(v6: Ipv6Addr) -> Vec<Ipv4Addr> {
    let bits = u128::from(v6);
    if bits >> 32 == NAT64 >> 32 {
        return vec![Ipv4Addr::from(bits as u32)];
    }
    if bits >> 80 == NAT64_LOCAL >> 80 {
        return nat64_local_layouts(bits);
    }
    Vec::new()
}

/// RFC 6052 §2.2 layouts inside `64:ff9b:1::/48`, as (prefix length);
/// the IPv4 address's 32 bits follow the prefix, skipping bits 64–71.
fn nat64_local_layouts(bits: u128) -> Vec<Ipv4Addr> {
    let bytes = bits.to_be_bytes();
    if bytes[8] != 0 {
        // Bits 64–71 "MUST be set to zero": no layout fits.
        return Vec::new();
    }
    let mut out = Vec::new();
    for prefix_bytes in [6usize, 7, 8, 12] {
        // The 4 address bytes after the prefix, byte 8 skipped.
        let positions: Vec<usize> = (prefix_bytes..16).filter(|i| *i != 8).take(4).collect();
        let last = positions[3];
        if bytes[last + 1..].iter().any(|b| *b != 0) {
            continue;
        }
        let v4 = [
            bytes[positions[0]],
            bytes[positions[1]],
            bytes[positions[2]],
            bytes[positions[3]],
        ];
        let v4 = Ipv4Addr::from(v4);
        if !out.contains(&v4) {
            out.push(v4);
        }
    }
    out
}

/// A network of exactly `ip`.
pub(super) fn single(ip: IpAddr) -> Cidr {
    let prefix = if ip.is_ipv4() { 32 } else { 128 };
    Cidr::parse(&format!("{ip}/{prefix}")).expect("an address is a network")
}

/// Ranges the guard never connects to unless an `allow` CIDR lying wholly
/// inside the range names the address.
const SPECIAL: &[&str] = &[
    // Loopback, "this network" (0.0.0.0 reaches the host itself).
    "127.0.0.0/8",
    "0.0.0.0/8",
    // Link-local, including 169.254.169.254 (AWS, GCP, OpenStack, …).
    "169.254.0.0/16",
    // Other clouds' metadata services: Alibaba, Azure (WireServer),
    // Oracle Cloud.
    "100.100.100.200/32",
    "168.63.129.16/32",
    "192.0.0.192/32",
    // Multicast, broadcast.
    "224.0.0.0/4",
    "255.255.255.255/32",
    // IPv6 loopback, unspecified, link-local, AWS's metadata, multicast.
    "::1/128",
    "::/128",
    "fe80::/10",
    "fd00:ec2::254/128",
    "ff00::/8",
];

/// The special range one spelling of an address lies in, if any.
pub(super) fn special_range(ip: IpAddr) -> Option<Cidr> {
    SPECIAL
        .iter()
        .filter_map(|r| Cidr::parse(r))
        .find(|r| r.contains(ip))
}

/// Whether `ip` (one spelling) is loopback or unspecified: the host
/// itself, whatever its interfaces.
pub(super) fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || ip.is_unspecified() || matches!(ip, IpAddr::V4(v4) if v4.octets()[0] == 0)
}

/// A CIDR as written in a list, IPv4-mapped IPv6 networks
/// (`::ffff:10.0.0.0/104`) as the IPv4 network they are.
pub(super) fn parse_cidr(text: &str) -> Option<Cidr> {
    let (addr, prefix) = text.split_once('/')?;
    if let (Ok(v6), Ok(prefix)) = (addr.parse::<Ipv6Addr>(), prefix.parse::<u8>())
        && let Some(v4) = v6.to_ipv4_mapped()
        && (96..=128).contains(&prefix)
    {
        return Cidr::parse(&format!("{v4}/{}", prefix - 96));
    }
    Cidr::parse(text)
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
