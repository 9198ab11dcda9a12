//! Whose word about the client's address is believed: `trusted_proxies`.
//!
//! Only when the TCP peer is a trusted proxy are `Forwarded` (RFC 7239) and
//! `X-Forwarded-For` read, and then from the right: each hop a trusted proxy added is
//! skipped, and the first untrusted one is the client. Anything to its left was written by
//! the client itself and could say anything. From any other peer the headers are ignored,
//! so a client cannot pick the address that throttling, the audit log and access logs see.
//!
//! CIDRs are parsed here over `std::net` (a few lines; no crate needed).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An address block: `10.0.0.0/8`, `2001:db8::/32`, or a bare address (a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

/// A CIDR that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not an address block (e.g. 10.0.0.0/8, 2001:db8::/32, 127.0.0.1)")]
pub struct BadCidr(String);

impl FromStr for Cidr {
    type Err = BadCidr;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadCidr(s.chars().take(60).collect());
        let t = s.trim();
        let (addr, prefix) = match t.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (t, None),
        };
        let net: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?
            }
            Some(_) => return Err(bad()),
        };
        Ok(Self {
            net: mask(net, prefix),
            prefix,
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

impl Cidr {
    /// Whether `ip` is inside the block (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.net, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                mask(ip, self.prefix) == self.net
            }
            _ => false,
        }
    }
}

/// `ip` with every bit past `prefix` cleared.
fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(bits & m))
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(bits & m))
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is; anything else unchanged.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The block a client is counted in: its IPv4 address, or its IPv6 /64 (one subscriber
/// usually holds a whole /64, so a /128 per bucket would let one client be 2^64 clients).
pub fn source_block(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        v4 @ IpAddr::V4(_) => v4,
        v6 => mask(v6, 64),
    }
}

/// Parse a list of CIDRs (the `trusted_proxies` setting).
///
/// # Errors
/// The first entry that does not parse.
pub fn parse_list<S: AsRef<str>>(items: &[S]) -> Result<Vec<Cidr>, BadCidr> {
    items.iter().map(|s| s.as_ref().parse()).collect()
}

/// One hop of `X-Forwarded-For` (`1.2.3.4`, `2001:db8::1`, `[2001:db8::1]:443`,
/// `1.2.3.4:80`) or of a `Forwarded` `for=` value (quoted, bracketed IPv6, optional port).
/// `None` for `unknown`, obfuscated identifiers and garbage.
fn parse_hop(v: &str) -> Option<IpAddr> {
    let v = v.trim().trim_matches('"').trim();
    if let Ok(ip) = v.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = v.strip_prefix('[') {
        let (addr, _) = rest.split_once(']')?;
        return addr.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    let (addr, port) = v.rsplit_once(':')?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    addr.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

/// The `for=` hops of `Forwarded` header values, left to right (`None` for a hop that
/// names no address).
fn forwarded_hops<'a>(values: impl Iterator<Item = &'a str>) -> Vec<Option<IpAddr>> {
    let mut hops = Vec::new();
    for value in values {
        for element in value.split(',') {
            let hop = element.split(';').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                k.trim().eq_ignore_ascii_case("for").then_some(v)
            });
            hops.push(hop.and_then(parse_hop));
        }
    }
    hops
}

/// Longest list of hops read (a longer header is cut from the left, the client's side).
const MAX_HOPS: usize = 64;

/// The client's address: `peer` unless it is a trusted proxy; then the right-most hop of
/// `Forwarded` (if sent, else `X-Forwarded-For`) that is not itself a trusted proxy. A hop
/// that names no address stops the walk at the proxy that wrote it.
pub fn client_address<'a>(
    peer: IpAddr,
    trusted: &[Cidr],
    forwarded: impl Iterator<Item = &'a str>,
    x_forwarded_for: impl Iterator<Item = &'a str>,
) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if trusted.is_empty() || !is_trusted(peer) {
        return peer;
    }
    let mut hops = forwarded_hops(forwarded);
    if hops.is_empty() {
        hops = x_forwarded_for
            .flat_map(|v| v.split(','))
            .map(parse_hop)
            .collect();
    }
    let mut client = peer;
    for hop in hops.into_iter().rev().take(MAX_HOPS) {
        let Some(ip) = hop else { break };
        client = ip;
        if !is_trusted(ip) {
            break;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cidrs(v: &[&str]) -> Vec<Cidr> {
        parse_list(v).unwrap()
    }

    #[test]
    fn cidrs_parse_and_match() {
        let c: Cidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert!(c.contains(ip("10.255.0.1")));
        assert!(
            c.contains(ip("::ffff:10.0.0.1")),
            "mapped IPv4 counts as IPv4"
        );
        assert!(!c.contains(ip("11.0.0.1")));
        let c: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(c.contains(ip("2001:db8:ffff::1")));
        assert!(!c.contains(ip("2001:db9::1")));
        assert!(!c.contains(ip("10.0.0.1")));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert_eq!(one.to_string(), "127.0.0.1/32");
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains(ip("8.8.8.8")));
        assert!("::/0".parse::<Cidr>().unwrap().contains(ip("2001::1")));
        for bad in [
            "",
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0.0/x",
            "::/129",
            "host/8",
            "1.2.3.4/+8",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn ipv6_clients_are_grouped_by_64() {
        assert_eq!(
            source_block(ip("2001:db8:1:2:aaaa::1")),
            source_block(ip("2001:db8:1:2:bbbb::2"))
        );
        assert_ne!(
            source_block(ip("2001:db8:1:2::1")),
            source_block(ip("2001:db8:1:3::1"))
        );
        assert_eq!(source_block(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(source_block(ip("192.0.2.1")), ip("192.0.2.1"));
    }

    #[test]
    fn headers_are_ignored_from_an_untrusted_peer() {
        let peer = ip("203.0.113.9");
        let none: Vec<Cidr> = Vec::new();
        let xff = ["198.51.100.1"];
        assert_eq!(
            client_address(peer, &none, std::iter::empty(), xff.into_iter()),
            peer
        );
        let other = cidrs(&["10.0.0.0/8"]);
        assert_eq!(
            client_address(peer, &other, std::iter::empty(), xff.into_iter()),
            peer
        );
    }

    #[test]
    fn the_right_most_untrusted_hop_is_the_client() {
        let t = cidrs(&["10.0.0.0/8", "127.0.0.1/32"]);
        let peer = ip("127.0.0.1");
        // The client forged the left-most entry; the proxy chain appended the real one.
        let xff = ["6.6.6.6, 198.51.100.7", "10.0.0.2"];
        assert_eq!(
            client_address(peer, &t, std::iter::empty(), xff.into_iter()),
            ip("198.51.100.7")
        );
        // Only trusted hops: the left-most of them.
        let xff = ["10.0.0.3, 10.0.0.2"];
        assert_eq!(
            client_address(peer, &t, std::iter::empty(), xff.into_iter()),
            ip("10.0.0.3")
        );
        // No header at all: the proxy itself.
        assert_eq!(
            client_address(peer, &t, std::iter::empty(), std::iter::empty()),
            peer
        );
        // Garbage stops the walk at the proxy that wrote it.
        let xff = ["198.51.100.7, nonsense"];
        assert_eq!(
            client_address(peer, &t, std::iter::empty(), xff.into_iter()),
            peer
        );
    }

    #[test]
    fn forwarded_wins_over_x_forwarded_for_and_parses_rfc7239() {
        let t = cidrs(&["127.0.0.1"]);
        let peer = ip("127.0.0.1");
        let fwd = [r#"for=192.0.2.43, for="[2001:db8:cafe::17]:4711";proto=https"#];
        let xff = ["198.51.100.1"];
        assert_eq!(
            client_address(peer, &t, fwd.into_iter(), xff.into_iter()),
            ip("2001:db8:cafe::17")
        );
        let fwd = ["for=unknown"];
        assert_eq!(
            client_address(peer, &t, fwd.into_iter(), std::iter::empty()),
            peer
        );
        let fwd = ["proto=http;For=198.51.100.9:8080"];
        assert_eq!(
            client_address(peer, &t, fwd.into_iter(), std::iter::empty()),
            ip("198.51.100.9")
        );
    }
}
