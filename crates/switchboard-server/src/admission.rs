//! Who may open a connection (spec §8): at most `max_connections` client connections on this
//! node, `max_connections_per_ip` from one address, `max_connections_per_user` of one user.
//! A door asks before it upgrades or opens a stream; the [`Permit`] it gets back is held for
//! the connection's life and gives its place back when dropped.
//!
//! The client's address is the socket's peer, or, when that peer is one of `trusted_proxies`,
//! the last address in `X-Forwarded-For` that is not a trusted proxy itself.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::http::HeaderMap;
use parking_lot::Mutex;
use switchboard_proto::ErrorCode;

use crate::config::LimitsConfig;
use crate::metrics::ServerStats;

/// The peer address of the connection a request came on (set by the accept loop).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerAddr(pub SocketAddr);

/// A refused connection: the code and message the client gets (an HTTP status from the code
/// before any upgrade).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refused {
    pub code: ErrorCode,
    pub message: String,
}

pub(crate) struct Admission {
    max_total: usize,
    max_per_ip: usize,
    max_per_user: usize,
    trusted: Vec<Cidr>,
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Where refusals are counted (`/metrics`).
    stats: Arc<ServerStats>,
}

/// A connection's place, given back when dropped. `None` where no limit is configured, so
/// an unlimited server keeps no count per connection.
pub(crate) struct Permit {
    _place: Option<Box<Place>>,
}

struct Place {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Drop for Place {
    fn drop(&mut self) {
        let a = &self.admission;
        a.total.fetch_sub(1, Ordering::AcqRel);
        if a.max_per_ip > 0 {
            let mut per_ip = a.per_ip.lock();
            if let Some(n) = per_ip.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    per_ip.remove(&self.ip);
                }
            }
        }
    }
}

impl Admission {
    pub(crate) fn new(limits: &LimitsConfig, stats: Arc<ServerStats>) -> Result<Self, String> {
        let trusted = limits
            .trusted_proxies
            .iter()
            .map(|text| {
                Cidr::parse(text).ok_or_else(|| {
                    format!("limits.trusted_proxies: `{text}` is not an address or CIDR range")
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Admission {
            max_total: limits.max_connections,
            max_per_ip: limits.max_connections_per_ip,
            max_per_user: limits.max_connections_per_user,
            trusted,
            total: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            stats,
        })
    }

    /// The client's address: the peer, or what a trusted proxy in front says it is.
    pub(crate) fn client_ip(&self, peer: Option<PeerAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = canonical(peer?.0.ip());
        if !self.is_trusted(peer) {
            return Some(peer);
        }
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|a| a.trim().parse::<IpAddr>().ok().map(canonical))
            .collect::<Vec<_>>();
        // The nearest hop that is not one of ours is the client (earlier ones it can forge).
        let client = forwarded.into_iter().rev().find(|a| !self.is_trusted(*a));
        Some(client.unwrap_or(peer))
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|c| c.contains(ip))
    }

    /// A place for a new connection from `ip`, or why there is none.
    pub(crate) fn admit(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<Permit, Refused> {
        if self.max_total == 0 && self.max_per_ip == 0 {
            return Ok(Permit { _place: None });
        }
        let total = self.total.fetch_add(1, Ordering::AcqRel) + 1;
        let ip = canonical(ip.unwrap_or(IpAddr::from([0, 0, 0, 0])));
        // From here the place is held: refusing below gives it back on drop.
        let place = Place {
            admission: self.clone(),
            ip,
        };
        if self.max_total > 0 && total > self.max_total {
            drop(place);
            self.stats
                .refused_connections
                .fetch_add(1, Ordering::Relaxed);
            return Err(Refused {
                code: ErrorCode::Unavailable,
                message: format!(
                    "this node holds its most connections ({}): try another or later",
                    self.max_total
                ),
            });
        }
        if self.max_per_ip > 0 {
            let mut per_ip = self.per_ip.lock();
            let n = per_ip.entry(ip).or_default();
            *n += 1;
            if *n > self.max_per_ip {
                drop(per_ip);
                drop(place);
                self.stats.refused_per_ip.fetch_add(1, Ordering::Relaxed);
                return Err(Refused {
                    code: ErrorCode::RateLimited,
                    message: format!(
                        "too many connections from this address (at most {})",
                        self.max_per_ip
                    ),
                });
            }
        }
        Ok(Permit {
            _place: Some(Box::new(place)),
        })
    }

    /// Whether `user` (who already has `existing` connections here) may open one more.
    pub(crate) fn admit_user(&self, user: &str, existing: usize) -> Result<(), Refused> {
        if self.max_per_user == 0 || user.is_empty() || existing < self.max_per_user {
            return Ok(());
        }
        self.stats.refused_per_user.fetch_add(1, Ordering::Relaxed);
        Err(Refused {
            code: ErrorCode::RateLimited,
            message: format!(
                "this user has its most connections (at most {})",
                self.max_per_user
            ),
        })
    }
}

/// An IPv4-mapped IPv6 address is the IPv4 address it maps.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// An address range, `a.b.c.d/n` or `x::y/n` (a bare address is the range of itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cidr {
    base: IpAddr,
    prefix: u32,
}

impl Cidr {
    fn parse(text: &str) -> Option<Cidr> {
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix.parse::<u32>().ok()?)),
            None => (text.trim(), None),
        };
        let base = canonical(addr.parse::<IpAddr>().ok()?);
        let bits = if base.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(bits);
        (prefix <= bits).then_some(Cidr { base, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self.base, canonical(ip)) {
            (IpAddr::V4(base), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix).unwrap_or(0);
                u32::from(base) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(base), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix).unwrap_or(0);
                u128::from(base) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn admission(total: usize, per_ip: usize, trusted: &[&str]) -> Arc<Admission> {
        let limits = LimitsConfig {
            max_connections: total,
            max_connections_per_ip: per_ip,
            trusted_proxies: trusted.iter().map(|s| s.to_string()).collect(),
            ..LimitsConfig::default()
        };
        Arc::new(Admission::new(&limits, Arc::default()).unwrap())
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn places_are_counted_and_given_back() {
        let a = admission(2, 0, &[]);
        let first = a.admit(ip("10.0.0.1")).unwrap();
        let _second = a.admit(ip("10.0.0.2")).unwrap();
        let refused = a.admit(ip("10.0.0.3")).err().unwrap();
        assert_eq!(refused.code, ErrorCode::Unavailable);
        drop(first);
        assert!(a.admit(ip("10.0.0.3")).is_ok());
        assert_eq!(a.stats.refused_connections.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn one_address_is_limited_alone() {
        let a = admission(0, 1, &[]);
        let _one = a.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(
            a.admit(ip("10.0.0.1")).err().unwrap().code,
            ErrorCode::RateLimited
        );
        assert!(a.admit(ip("10.0.0.2")).is_ok());
        assert!(
            a.admit(ip("::ffff:10.0.0.1")).is_err(),
            "an IPv4-mapped address is the same client"
        );
    }

    #[test]
    fn no_limit_keeps_no_count() {
        let a = admission(0, 0, &[]);
        let permit = a.admit(ip("10.0.0.1")).unwrap();
        assert!(permit._place.is_none());
    }

    #[test]
    fn forwarded_addresses_count_only_behind_a_trusted_proxy() {
        let a = admission(0, 0, &["127.0.0.1", "10.1.0.0/16"]);
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 203.0.113.9, 10.1.2.3"),
        );
        let proxy = Some(PeerAddr("127.0.0.1:1000".parse().unwrap()));
        assert_eq!(a.client_ip(proxy, &headers), ip("203.0.113.9"));
        let direct = Some(PeerAddr("198.51.100.1:1000".parse().unwrap()));
        assert_eq!(
            a.client_ip(direct, &headers),
            ip("198.51.100.1"),
            "a client that is no proxy of ours cannot name another address"
        );
    }

    #[test]
    fn cidr_ranges() {
        let net = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(net.contains("10.1.255.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        let v6 = Cidr::parse("fd00::/8").unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/x"] {
            assert!(Cidr::parse(bad).is_none(), "{bad}");
        }
    }
}
