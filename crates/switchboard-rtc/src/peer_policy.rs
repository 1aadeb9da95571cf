//! Which peers the embedded TURN server may relay to (spec §8).
//!
//! A TURN relay sends UDP from the server's own address to any address a client names. Left
//! open, it lets anyone with credentials reach what only the server can reach: its loopback
//! services, the private network it lives in, the cloud metadata service (169.254.169.254).
//! So every address that is not a public unicast address is refused, including the same
//! addresses written in IPv6 forms that embed an IPv4 address (IPv4-mapped `::ffff:a.b.c.d`,
//! IPv4-compatible `::a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`, 6to4 `2002:AABB:CCDD::`), unless the
//! operator lists the range in `[webrtc.turn] allowed_peer_ranges`.
//!
//! Pure logic, no sockets: [`PeerPolicy::allows`] is all the TURN server asks.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// IPv4 ranges that are not public unicast, with what they are (for logs and tests).
const REFUSED_V4: &[(Ipv4Net, &str)] = &[
    (v4(0, 0, 0, 0, 8), "this network (0.0.0.0/8, unspecified)"),
    (v4(10, 0, 0, 0, 8), "private (RFC 1918)"),
    (
        v4(100, 64, 0, 0, 10),
        "shared address space (100.64.0.0/10)",
    ),
    (v4(127, 0, 0, 0, 8), "loopback"),
    (v4(169, 254, 0, 0, 16), "link-local (cloud metadata)"),
    (v4(172, 16, 0, 0, 12), "private (RFC 1918)"),
    (v4(192, 0, 0, 0, 24), "IETF protocol assignments"),
    (v4(192, 0, 2, 0, 24), "documentation"),
    (v4(192, 168, 0, 0, 16), "private (RFC 1918)"),
    (v4(198, 18, 0, 0, 15), "benchmarking"),
    (v4(198, 51, 100, 0, 24), "documentation"),
    (v4(203, 0, 113, 0, 24), "documentation"),
    (v4(224, 0, 0, 0, 4), "multicast"),
    (
        v4(240, 0, 0, 0, 4),
        "reserved (incl. broadcast 255.255.255.255)",
    ),
];

/// IPv6 ranges that are not public unicast. The forms that embed an IPv4 address are not
/// here: they are judged by the address they embed (see [`embedded_v4`]).
const REFUSED_V6: &[(Ipv6Net, &str)] = &[
    (v6([0, 0, 0, 0, 0, 0, 0, 0], 128), "unspecified"),
    (v6([0, 0, 0, 0, 0, 0, 0, 1], 128), "loopback"),
    // Local-use NAT64 (RFC 8215): what it translates to is the site's own business.
    (v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48), "local-use NAT64"),
    (v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64), "discard-only"),
    (v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32), "documentation"),
    (v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7), "unique-local"),
    (v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10), "link-local"),
    (
        v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10),
        "site-local (deprecated)",
    ),
    (v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), "multicast"),
];

const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> Ipv4Net {
    Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), prefix)
}

const fn v6(s: [u16; 8], prefix: u8) -> Ipv6Net {
    Ipv6Net::new_assert(
        Ipv6Addr::new(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]),
        prefix,
    )
}

/// The IPv4 address an IPv6 address stands for, in the forms a relay would reach it by.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low32 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        // IPv4-mapped, ::ffff:a.b.c.d: the kernel sends it as IPv4.
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(low32),
        // IPv4-compatible (deprecated), ::a.b.c.d; `::` and `::1` are IPv6's own.
        [0, 0, 0, 0, 0, 0, _, _] if u32::from(low32) > 1 => Some(low32),
        // NAT64 well-known prefix (RFC 6052): a NAT64 gateway relays it to a.b.c.d.
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low32),
        // 6to4, 2002:AABB:CCDD::/48: a 6to4 relay sends it to AA.BB.CC.DD.
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new(
            (hi >> 8) as u8,
            hi as u8,
            (lo >> 8) as u8,
            lo as u8,
        )),
        _ => None,
    }
}

/// Why `ip` is not a public unicast address, or `None` when it is. IPv6 forms of an IPv4
/// address are judged by that IPv4 address.
pub fn special_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(ip) => REFUSED_V4
            .iter()
            .find(|(net, _)| net.contains(&ip))
            .map(|(_, what)| *what),
        IpAddr::V6(ip) => match embedded_v4(ip) {
            Some(v4) => special_range(IpAddr::V4(v4)),
            None => REFUSED_V6
                .iter()
                .find(|(net, _)| net.contains(&ip))
                .map(|(_, what)| *what),
        },
    }
}

/// The address itself and, for the IPv6 forms of an IPv4 address, that IPv4 address: an
/// operator who allows `10.0.0.0/8` allows `::ffff:10.1.2.3` too.
fn forms(ip: IpAddr) -> impl Iterator<Item = IpAddr> {
    let v4 = match ip {
        IpAddr::V6(v6) => embedded_v4(v6).map(IpAddr::V4),
        IpAddr::V4(_) => None,
    };
    std::iter::once(ip).chain(v4)
}

/// The peers a TURN relay may reach: public unicast addresses, plus what the operator allows.
#[derive(Debug, Clone, Default)]
pub struct PeerPolicy {
    allow_loopback: bool,
    allowed: Vec<IpNet>,
}

impl PeerPolicy {
    /// `allowed_ranges` are CIDR strings (`10.1.0.0/16`, `fd00::/8`) or single addresses;
    /// a bad one is an error naming it.
    pub fn new(allow_loopback: bool, allowed_ranges: &[String]) -> Result<Self, String> {
        let allowed = allowed_ranges
            .iter()
            .map(|range| parse_range(range))
            .collect::<Result<_, _>>()?;
        Ok(PeerPolicy {
            allow_loopback,
            allowed,
        })
    }

    /// Whether the relay may send to and receive from `ip`.
    pub fn allows(&self, ip: IpAddr) -> bool {
        if special_range(ip).is_none() {
            return true;
        }
        forms(ip).any(|ip| {
            (self.allow_loopback && ip.is_loopback())
                || self.allowed.iter().any(|net| net.contains(&ip))
        })
    }
}

fn parse_range(range: &str) -> Result<IpNet, String> {
    let range = range.trim();
    let net = match range.parse::<IpNet>() {
        Ok(net) => net,
        // A bare address is a range of one.
        Err(_) => match range.parse::<IpAddr>() {
            Ok(ip) => IpNet::from(ip),
            Err(_) => {
                return Err(format!(
                    "webrtc.turn.allowed_peer_ranges: `{range}` is not a CIDR range \
                     (like \"10.1.0.0/16\" or \"fd00::/8\")"
                ));
            }
        },
    };
    // `10.1.2.3/8` is most likely a typo; say what it would mean instead of guessing.
    if net.trunc() != net {
        return Err(format!(
            "webrtc.turn.allowed_peer_ranges: `{range}` has bits set past its prefix; \
             write `{}` if that range is meant",
            net.trunc()
        ));
    }
    Ok(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn strict() -> PeerPolicy {
        PeerPolicy::new(false, &[]).unwrap()
    }

    /// One address of every refused range, and the IPv4 ones in their IPv6 forms.
    const REFUSED: &[&str] = &[
        "0.0.0.0",
        "0.1.2.3",
        "10.0.0.1",
        "10.255.255.255",
        "100.64.0.1",
        "100.127.255.254",
        "127.0.0.1",
        "127.1.2.3",
        "169.254.169.254",
        "169.254.0.1",
        "172.16.0.1",
        "172.31.255.255",
        "192.0.0.8",
        "192.0.2.1",
        "192.168.1.1",
        "198.18.0.1",
        "198.51.100.7",
        "203.0.113.9",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        "::",
        "::1",
        "64:ff9b:1::a00:1",
        "100::1",
        "2001:db8::1",
        "fc00::1",
        "fd12:3456::1",
        "fe80::1",
        "febf::1",
        "fec0::1",
        "ff02::1",
        "ff0e::1",
    ];

    const PUBLIC: &[&str] = &[
        "1.1.1.1",
        "8.8.8.8",
        "100.63.255.255",
        "100.128.0.0",
        "172.15.255.255",
        "172.32.0.0",
        "169.253.255.255",
        "192.169.0.1",
        "223.255.255.255",
        "2606:4700::1111",
        "2a00:1450::1",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
        "2002:808:808::1",
    ];

    #[test]
    fn every_special_range_is_refused() {
        for addr in REFUSED {
            assert!(!strict().allows(ip(addr)), "{addr} allowed");
            assert!(special_range(ip(addr)).is_some(), "{addr} not named");
        }
    }

    #[test]
    fn ipv6_forms_of_refused_ipv4_addresses_are_refused() {
        for addr in REFUSED.iter().filter(|a| !a.contains(':')) {
            let v4: Ipv4Addr = addr.parse().unwrap();
            let [a, b, c, d] = v4.octets();
            let forms = [
                IpAddr::V6(v4.to_ipv6_mapped()),
                format!("64:ff9b::{a:x}{b:02x}:{c:x}{d:02x}")
                    .parse()
                    .unwrap(),
                format!("2002:{a:x}{b:02x}:{c:x}{d:02x}::1")
                    .parse()
                    .unwrap(),
            ];
            for form in forms {
                assert!(!strict().allows(form), "{form} ({addr}) allowed");
            }
            // IPv4-compatible, except 0.0.0.0 and 0.0.0.1, which are `::` and `::1`.
            if u32::from(v4) > 1 {
                let compatible = IpAddr::V6(v4.to_ipv6_compatible());
                assert!(!strict().allows(compatible), "{compatible} allowed");
            }
        }
        // The textual forms people write.
        for addr in [
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
        ] {
            assert!(!strict().allows(ip(addr)), "{addr} allowed");
        }
    }

    #[test]
    fn public_unicast_addresses_are_allowed() {
        for addr in PUBLIC {
            assert!(strict().allows(ip(addr)), "{addr} refused");
            assert_eq!(special_range(ip(addr)), None, "{addr}");
        }
    }

    #[test]
    fn allow_loopback_allows_loopback_alone() {
        let policy = PeerPolicy::new(true, &[]).unwrap();
        for addr in ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1"] {
            assert!(policy.allows(ip(addr)), "{addr} refused");
        }
        for addr in ["10.0.0.1", "169.254.169.254", "0.0.0.0", "::", "fe80::1"] {
            assert!(!policy.allows(ip(addr)), "{addr} allowed");
        }
    }

    #[test]
    fn listed_ranges_are_allowed_in_every_form() {
        let ranges = ["10.1.0.0/16".to_string(), "fd00:1::/32".into()];
        let policy = PeerPolicy::new(false, &ranges).unwrap();
        for addr in [
            "10.1.2.3",
            "::ffff:10.1.2.3",
            "64:ff9b::a01:203",
            "fd00:1::5",
        ] {
            assert!(policy.allows(ip(addr)), "{addr} refused");
        }
        for addr in ["10.2.0.1", "::ffff:10.2.0.1", "fd00:2::5", "127.0.0.1"] {
            assert!(!policy.allows(ip(addr)), "{addr} allowed");
        }
        let one = PeerPolicy::new(false, &["169.254.10.10".to_string()]).unwrap();
        assert!(one.allows(ip("169.254.10.10")));
        assert!(!one.allows(ip("169.254.169.254")));
    }

    #[test]
    fn bad_ranges_are_named_in_the_error() {
        for bad in ["10.0.0.0/33", "nope", "10.0.0/8", "fd00::/129", ""] {
            let err = PeerPolicy::new(false, &[bad.to_string()]).unwrap_err();
            assert!(err.contains("allowed_peer_ranges"), "{err}");
            assert!(err.contains(bad), "{err}");
        }
        let err = PeerPolicy::new(false, &["10.1.2.3/8".to_string()]).unwrap_err();
        assert!(err.contains("10.0.0.0/8"), "{err}");
    }
}
