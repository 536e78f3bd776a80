//! Client addresses, for limits that hold per address: the key an address
//! counts under (an IPv4 address, or an IPv6 /64, which one host usually
//! holds whole), counted slots with a cap, and which address a request
//! comes from when a trusted reverse proxy forwards it.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};

/// What a client address counts under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddressKey(IpAddr);

impl AddressKey {
    /// The server itself (the unspecified address, which no client connects from).
    pub const SERVER: Self = Self(IpAddr::V6(Ipv6Addr::UNSPECIFIED));

    /// An IPv4 address (IPv4-mapped IPv6 included) as itself; an IPv6
    /// address as its /64.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(IpAddr::V4(v4)),
                None => {
                    let s = v6.segments();
                    Self(IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0)))
                }
            },
        }
    }
}

impl std::fmt::Display for AddressKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// Counts held per address, each below a cap. Entries go away with their
/// last slot, so the map holds only addresses that hold something.
#[derive(Debug)]
pub struct PerAddress {
    cap: u32,
    counts: Mutex<HashMap<AddressKey, u32>>,
}

/// One counted slot; dropping it gives it back.
#[derive(Debug)]
pub struct Slot {
    owner: Arc<PerAddress>,
    key: AddressKey,
}

impl PerAddress {
    /// At most `cap` slots per address.
    pub fn new(cap: u32) -> Arc<Self> {
        Arc::new(Self { cap, counts: Mutex::new(HashMap::new()) })
    }

    /// A slot for `key`, or `None` if it holds `cap` already.
    pub fn try_take(self: &Arc<Self>, key: AddressKey) -> Option<Slot> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(key).or_insert(0);
        if *count >= self.cap {
            if *count == 0 {
                counts.remove(&key);
            }
            return None;
        }
        *count += 1;
        Some(Slot { owner: self.clone(), key })
    }

    /// A slot for `key` whatever it holds: for the server's own use, which
    /// no client address pays for.
    pub fn take_uncapped(self: &Arc<Self>, key: AddressKey) -> Slot {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        *counts.entry(key).or_insert(0) += 1;
        Slot { owner: self.clone(), key }
    }

    /// Slots `key` holds.
    pub fn held(&self, key: AddressKey) -> u32 {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).get(&key).copied().unwrap_or(0)
    }
}

impl Slot {
    /// The address this slot counts for.
    pub fn key(&self) -> AddressKey {
        self.key
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.owner.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// A token bucket per address: at most `burst` at once, refilled at
/// `per_sec`. An address's entry is dropped once its bucket would be full
/// again (swept when the map has doubled since the last sweep), so the map
/// holds only addresses that took something within `burst / per_sec`.
#[derive(Debug)]
pub struct RatePerAddress {
    per_sec: u32,
    burst: u32,
    state: Mutex<RateState>,
}

#[derive(Debug, Default)]
struct RateState {
    buckets: HashMap<AddressKey, Bucket>,
    /// The map's size that starts the next sweep.
    sweep_at: usize,
}

/// A token bucket's state: tokens left and when they were counted. The
/// rate and the burst are the owner's (one per connection, or per address).
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    last: std::time::Instant,
}

impl Bucket {
    /// A full bucket of `burst` (at least 1) at `now`.
    pub fn full(burst: u32, now: std::time::Instant) -> Self {
        Self { tokens: f64::from(burst.max(1)), last: now }
    }

    /// Whether a token is there at `now`, without taking it.
    pub fn has(&self, per_sec: u32, burst: u32, now: std::time::Instant) -> bool {
        self.refilled(f64::from(per_sec), f64::from(burst.max(1)), now) >= 1.0
    }

    /// The tokens at `now`, refilled at `per_sec` up to `burst`.
    fn refilled(&self, per_sec: f64, burst: f64, now: std::time::Instant) -> f64 {
        (self.tokens + now.saturating_duration_since(self.last).as_secs_f64() * per_sec).min(burst)
    }

    /// Takes one token at `now`; false if there is none.
    pub fn take(&mut self, per_sec: u32, burst: u32, now: std::time::Instant) -> bool {
        let tokens = self.refilled(f64::from(per_sec), f64::from(burst.max(1)), now);
        let taken = tokens >= 1.0;
        *self = Self { tokens: if taken { tokens - 1.0 } else { tokens }, last: now.max(self.last) };
        taken
    }
}

/// Entries the map holds before its first sweep.
const RATE_SWEEP_MIN: usize = 64;

impl RatePerAddress {
    /// `burst` at once per address, `per_sec` sustained.
    pub fn new(per_sec: u32, burst: u32) -> Self {
        let state = RateState { buckets: HashMap::new(), sweep_at: RATE_SWEEP_MIN };
        Self { per_sec, burst: burst.max(1), state: Mutex::new(state) }
    }

    /// Takes one token for `key` at `now`; false if its bucket is empty.
    pub fn try_take(&self, key: AddressKey, now: std::time::Instant) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (per_sec, burst) = (self.per_sec, self.burst);
        if state.buckets.len() >= state.sweep_at {
            // A bucket that is full again is as good as none.
            let full = f64::from(burst);
            state.buckets.retain(|_, bucket| bucket.refilled(f64::from(per_sec), full, now) < full);
            state.sweep_at = (state.buckets.len() * 2).max(RATE_SWEEP_MIN);
        }
        state.buckets.entry(key).or_insert_with(|| Bucket::full(burst, now)).take(per_sec, burst, now)
    }

    /// Addresses with an entry (for tests).
    pub fn tracked(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).buckets.len()
    }
}

/// An address or network (`10.0.0.0/8`, `::1`) whose requests are trusted
/// to say where they come from (a reverse proxy's `X-Forwarded-For`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

/// A `--trusted-proxy` value that is not an address or network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--trusted-proxy {0:?} is not an IP address or network like 10.0.0.0/8 or fd00::/8")]
pub struct BadNetwork(pub String);

impl std::str::FromStr for Network {
    type Err = BadNetwork;

    fn from_str(raw: &str) -> Result<Self, BadNetwork> {
        let bad = || BadNetwork(raw.to_owned());
        let (addr, prefix) = match raw.trim().split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (raw.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(Self { addr, prefix })
    }
}

impl Network {
    /// True if `ip` is in this network (IPv4-mapped IPv6 counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_eq(&net.octets(), &ip.octets(), self.prefix),
            (IpAddr::V6(net), IpAddr::V6(ip)) => prefix_eq(&net.octets(), &ip.octets(), self.prefix),
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let full = usize::from(prefix / 8);
    let rest = prefix % 8;
    if a[..full] != b[..full] {
        return false;
    }
    rest == 0 || {
        let mask = 0xffu8 << (8 - rest);
        (a[full] & mask) == (b[full] & mask)
    }
}

/// The address a request comes from: the peer's, unless the peer is a
/// trusted proxy, in which case the last address in `X-Forwarded-For` that
/// is not itself a trusted proxy (the one the outermost trusted proxy saw).
/// A malformed header from a trusted proxy falls back to the peer.
pub fn client_ip<'a>(peer: IpAddr, forwarded_for: impl Iterator<Item = &'a str>, trusted: &[Network]) -> IpAddr {
    if !trusted.iter().any(|n| n.contains(peer)) {
        return peer;
    }
    let hops: Vec<&str> = forwarded_for.flat_map(|v| v.split(',')).map(str::trim).collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        match parse_hop(hop) {
            Some(ip) => {
                client = ip;
                if !trusted.iter().any(|n| n.contains(ip)) {
                    return ip;
                }
            }
            None => return client,
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, with a port (`1.2.3.4:80`,
/// `[2001:db8::1]:80`, as some proxies write) or in brackets.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| hop.strip_prefix('[')?.strip_suffix(']')?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(AddressKey::of(ip("2001:db8:1:2:aaaa::1")), AddressKey::of(ip("2001:db8:1:2:bbbb::9")));
        assert_ne!(AddressKey::of(ip("2001:db8:1:2::1")), AddressKey::of(ip("2001:db8:1:3::1")));
        assert_eq!(AddressKey::of(ip("::ffff:10.1.2.3")), AddressKey::of(ip("10.1.2.3")));
        assert_ne!(AddressKey::of(ip("10.1.2.3")), AddressKey::of(ip("10.1.2.4")));
        assert_eq!(AddressKey::of(ip("2001:db8:1:2::1")).to_string(), "2001:db8:1:2::/64");
    }

    #[test]
    fn slots_are_capped_per_address_and_given_back() {
        let limits = PerAddress::new(2);
        let (a, b) = (AddressKey::of(ip("10.0.0.1")), AddressKey::of(ip("10.0.0.2")));
        let first = limits.try_take(a).expect("first");
        let _second = limits.try_take(a).expect("second");
        assert!(limits.try_take(a).is_none(), "a third from the same address");
        assert!(limits.try_take(b).is_some(), "another address is not affected");
        drop(first);
        assert!(limits.try_take(a).is_some(), "a slot given back can be taken again");
        assert_eq!(limits.held(b), 0);
        assert!(limits.counts.lock().expect("lock").len() <= 1, "addresses holding nothing leave the map");
    }

    #[test]
    fn a_rate_per_address_refills_and_forgets_full_buckets() {
        let rate = RatePerAddress::new(2, 3);
        let (a, b) = (AddressKey::of(ip("192.0.2.1")), AddressKey::of(ip("192.0.2.2")));
        let t = std::time::Instant::now();
        for i in 0..3 {
            assert!(rate.try_take(a, t), "take {i} of the burst");
        }
        assert!(!rate.try_take(a, t), "the burst is spent");
        assert!(rate.try_take(b, t), "another address has its own bucket");
        assert!(!rate.try_take(a, t + std::time::Duration::from_millis(400)), "0.8 of a token");
        assert!(rate.try_take(a, t + std::time::Duration::from_millis(600)), "one token after half a second");
        let ms = std::time::Duration::from_millis;
        let other = |i: u32| AddressKey::of(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)));
        // Many addresses, each taking once every 20 ms: an entry whose
        // bucket is full again (after a second here) is swept.
        let t = t + std::time::Duration::from_secs(10);
        for i in 0..1_000u32 {
            assert!(rate.try_take(other(i), t + ms(u64::from(i) * 20)));
        }
        assert!(rate.tracked() <= 2 * RATE_SWEEP_MIN, "{} entries kept", rate.tracked());
        // A drained bucket is kept through the sweeps (dropping it would
        // give its address a full one).
        let slow = RatePerAddress::new(1, 3);
        for _ in 0..3 {
            assert!(slow.try_take(a, t));
        }
        for i in 0..200u32 {
            assert!(slow.try_take(other(i), t + ms(u64::from(i))));
        }
        assert!(slow.tracked() > RATE_SWEEP_MIN, "sweeps ran and kept the entries that are not full");
        assert!(!slow.try_take(a, t + ms(500)), "its drained bucket was kept: half a token");
    }

    /// Two takes whose times come out of order (two threads) refill once.
    #[test]
    fn a_bucket_refills_once_when_times_come_out_of_order() {
        let t = std::time::Instant::now();
        let second = std::time::Duration::from_secs(1);
        let mut b = Bucket::full(1, t);
        assert!(b.take(1, 1, t));
        assert!(b.take(1, 1, t + second), "refilled after a second");
        assert!(!b.take(1, 1, t), "an earlier time refills nothing");
        assert!(!b.take(1, 1, t + second), "nor does the same second again");
        assert!(!b.has(1, 1, t + second));
        assert!(b.has(1, 1, t + 2 * second));
    }

    #[test]
    fn networks_parse_and_match() {
        let net: Network = "10.0.0.0/8".parse().expect("valid");
        assert!(net.contains(ip("10.200.1.1")));
        assert!(net.contains(ip("::ffff:10.0.0.1")));
        assert!(!net.contains(ip("11.0.0.1")));
        let one: Network = "::1".parse().expect("valid");
        assert!(one.contains(ip("::1")) && !one.contains(ip("::2")));
        let odd: Network = "192.168.1.128/25".parse().expect("valid");
        assert!(odd.contains(ip("192.168.1.200")) && !odd.contains(ip("192.168.1.100")));
        for bad in ["", "10.0.0.0/33", "example.com", "10.0.0/8", "::/129"] {
            assert!(bad.parse::<Network>().is_err(), "{bad}");
        }
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<Network> = vec!["127.0.0.1".parse().expect("valid"), "10.0.0.0/8".parse().expect("valid")];
        let peer = ip("127.0.0.1");
        assert_eq!(
            client_ip(ip("192.0.2.9"), ["203.0.113.5"].into_iter(), &trusted),
            ip("192.0.2.9"),
            "untrusted peer"
        );
        assert_eq!(client_ip(peer, ["203.0.113.5"].into_iter(), &trusted), ip("203.0.113.5"));
        // A client cannot pick its address by sending its own header first:
        // the rightmost untrusted hop is what the trusted proxy saw.
        assert_eq!(client_ip(peer, ["6.6.6.6, 203.0.113.5, 10.1.1.1"].into_iter(), &trusted), ip("203.0.113.5"));
        assert_eq!(client_ip(peer, ["6.6.6.6", "203.0.113.5"].into_iter(), &trusted), ip("203.0.113.5"));
        assert_eq!(client_ip(peer, std::iter::empty(), &trusted), peer);
        assert_eq!(client_ip(peer, ["not-an-ip"].into_iter(), &trusted), peer);
        // Forms some proxies write, and garbage a client put before the real hop.
        assert_eq!(client_ip(peer, ["203.0.113.5:4711"].into_iter(), &trusted), ip("203.0.113.5"));
        assert_eq!(client_ip(peer, ["[2001:db8::5]:443"].into_iter(), &trusted), ip("2001:db8::5"));
        assert_eq!(client_ip(peer, ["[2001:db8::6]"].into_iter(), &trusted), ip("2001:db8::6"));
        assert_eq!(client_ip(peer, ["\u{e9}garbage, 203.0.113.7"].into_iter(), &trusted), ip("203.0.113.7"));
    }
}
