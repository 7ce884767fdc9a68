//! The player's address: the socket peer, unless the peer is a trusted proxy,
//! then the forwarding headers read from the right, skipping trusted hops.
//! And the scheme the player used: http (the player port has no TLS), unless
//! a trusted proxy says otherwise.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use httparse::Header;
use ipnet::IpNet;

const FORWARDED: &str = "forwarded";
const X_FORWARDED_FOR: &str = "x-forwarded-for";
const X_FORWARDED_PROTO: &str = "x-forwarded-proto";

/// The scheme a player used to reach the balancer, which is the scheme its
/// redirect should keep: Android's ExoPlayer and iOS's AVPlayer do not follow
/// a redirect from one scheme to the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Plain http.
    Http,
    /// http over TLS.
    Https,
}

impl Scheme {
    /// Both, http first.
    pub const ALL: [Scheme; 2] = [Scheme::Http, Scheme::Https];

    /// `http` or `https`, case-insensitively; anything else is `None`.
    pub fn parse(text: &str) -> Option<Scheme> {
        let text = text.trim().trim_matches('"');
        if text.eq_ignore_ascii_case("https") {
            Some(Scheme::Https)
        } else if text.eq_ignore_ascii_case("http") {
            Some(Scheme::Http)
        } else {
            None
        }
    }

    /// Its position in per-scheme arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The other scheme.
    pub fn other(self) -> Scheme {
        match self {
            Scheme::Http => Scheme::Https,
            Scheme::Https => Scheme::Http,
        }
    }
}

/// The scheme the player used. The player port speaks plain http, so that is
/// the answer unless the peer is a trusted proxy (a TLS terminator) that says
/// `proto=https` in `Forwarded` or `X-Forwarded-Proto: https`. The first
/// (outermost) value counts: it is the scheme the player itself connected
/// with. A value we do not know is ignored.
pub fn client_scheme(peer: IpAddr, headers: &[Header<'_>], trusted: &TrustedProxies) -> Scheme {
    client(peer, headers, trusted).1
}

/// The player's address and scheme, [`client_ip`] and [`client_scheme`]
/// together, with the peer's trust and the kind of forwarding header looked
/// up once: what every request needs.
pub fn client(peer: IpAddr, headers: &[Header<'_>], trusted: &TrustedProxies) -> (IpAddr, Scheme) {
    let peer = canonical(peer);
    if !trusted.contains(peer) {
        return (peer, Scheme::Http);
    }
    let present = Present::in_headers(headers);
    // The hop lists are walked from the right where they lie, never collected.
    let (ip, scheme) = if present.forwarded {
        (
            nearest_untrusted(peer, forwarded_params(headers, "for").rev(), trusted),
            forwarded_params(headers, "proto").next(),
        )
    } else {
        let ip = match present.x_forwarded_for {
            None => peer,
            // The usual case: one header, its entries walked where they lie.
            Some(Some(only)) => nearest_untrusted(peer, hops(headers[only].value), trusted),
            Some(None) => nearest_untrusted(peer, x_forwarded_for_hops(headers), trusted),
        };
        let scheme = if present.x_forwarded_proto {
            header_list(headers, X_FORWARDED_PROTO).next()
        } else {
            None
        };
        (ip, scheme)
    };
    (ip, scheme.and_then(Scheme::parse).unwrap_or(Scheme::Http))
}

/// Which forwarding headers a request has, found in one pass over its
/// header names (most requests have none of them, or only one).
#[derive(Default)]
struct Present {
    forwarded: bool,
    /// `Some(Some(i))`: one `X-Forwarded-For`, header `i`; `Some(None)`: more.
    x_forwarded_for: Option<Option<usize>>,
    x_forwarded_proto: bool,
}

impl Present {
    fn in_headers(headers: &[Header<'_>]) -> Present {
        let mut present = Present::default();
        for (at, header) in headers.iter().enumerate() {
            // The length first: most names are none of the three.
            let name = header.name;
            match name.len() {
                9 => present.forwarded |= crate::wire::header_is(name, FORWARDED),
                15 if crate::wire::header_is(name, X_FORWARDED_FOR) => {
                    present.x_forwarded_for = match present.x_forwarded_for {
                        None => Some(Some(at)),
                        Some(_) => Some(None),
                    }
                }
                17 => present.x_forwarded_proto |= crate::wire::header_is(name, X_FORWARDED_PROTO),
                _ => {}
            }
        }
        present
    }
}

/// Proxies whose forwarding headers are believed (`--trusted-proxy`).
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Trusts the given networks.
    pub fn new(nets: Vec<IpNet>) -> Self {
        TrustedProxies(nets)
    }

    /// Whether `ip` is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }
}

/// The address to place the player by. A header from an untrusted peer changes
/// nothing; with trusted proxies, the rightmost address that is not a trusted
/// proxy is the player (`Forwarded` if present, else `X-Forwarded-For`).
pub fn client_ip(peer: IpAddr, headers: &[Header<'_>], trusted: &TrustedProxies) -> IpAddr {
    client(peer, headers, trusted).0
}

/// Walks `hops` (newest first) from the trusted `client` while each address
/// vouched for is a trusted proxy; the first that is not is the player.
fn nearest_untrusted<H: Hop>(
    mut client: IpAddr,
    hops: impl Iterator<Item = H>,
    trusted: &TrustedProxies,
) -> IpAddr {
    for (nth, hop) in hops.enumerate() {
        // The first address is the trusted peer.
        if nth > 0 && !trusted.contains(client) {
            break;
        }
        match hop.parse() {
            Some(ip) => client = ip,
            // Garbage or an obfuscated identifier: the last address we can vouch for stands.
            None => break,
        }
    }
    client
}

/// One entry of a forwarding header's list: an address, perhaps with a port,
/// brackets or quotes.
trait Hop {
    /// The address, if the entry is one.
    fn parse(self) -> Option<IpAddr>;
}

impl Hop for &str {
    fn parse(self) -> Option<IpAddr> {
        parse_hop(self)
    }
}

/// An `X-Forwarded-For` entry as sent: the usual plain IPv4 address is read
/// straight from the bytes, anything else as text.
impl Hop for &[u8] {
    fn parse(self) -> Option<IpAddr> {
        let hop = self.trim_ascii();
        match dotted_quad(hop) {
            Some(v4) => Some(IpAddr::V4(v4)),
            None => parse_hop(std::str::from_utf8(hop).ok()?),
        }
    }
}

/// The entries of every `X-Forwarded-For` header, newest (rightmost, last
/// header) first, as bytes: split without decoding, so a plain address costs
/// no more than its digits. A header that is not UTF-8 is left out, as
/// [`header_list`] does.
fn x_forwarded_for_hops<'a>(headers: &[Header<'a>]) -> impl Iterator<Item = &'a [u8]> {
    headers
        .iter()
        .rev()
        .filter(|h| crate::wire::header_is(h.name, X_FORWARDED_FOR))
        .flat_map(|h| hops(h.value))
}

/// The entries of one `X-Forwarded-For` value, rightmost first; none if it is
/// not UTF-8.
fn hops(value: &[u8]) -> RightToLeft<'_> {
    let text = value.is_ascii() || std::str::from_utf8(value).is_ok();
    RightToLeft(text.then_some(value))
}

/// The comma-separated entries of a header value, rightmost first. What
/// `rsplit` does, as a plain loop over the bytes: a player's request has one
/// entry or a few, and the generic splitter cost more than their digits.
struct RightToLeft<'a>(Option<&'a [u8]>);

impl<'a> Iterator for RightToLeft<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = self.0?;
        match rest.iter().rposition(|&b| b == b',') {
            Some(comma) => {
                self.0 = Some(&rest[..comma]);
                Some(&rest[comma + 1..])
            }
            None => {
                self.0 = None;
                Some(rest)
            }
        }
    }
}

/// `a.b.c.d` exactly as Rust's own parser accepts it (decimal, each part 0 to
/// 255 without a leading zero), read from bytes in one pass; `None` for
/// anything else, which then goes through [`parse_hop`].
fn dotted_quad(text: &[u8]) -> Option<Ipv4Addr> {
    // "0.0.0.0" to "255.255.255.255".
    if !(7..=15).contains(&text.len()) {
        return None;
    }
    let mut octets = [0u8; 4];
    // The part being read, its value so far, and its digits so far. A digit
    // costs a subtraction and a multiply-add; each part is checked once, at
    // its end (wrapping is harmless: more than 3 digits is refused there).
    let (mut part, mut value, mut digits) = (0, 0u32, 0u32);
    for &byte in text {
        let digit = byte.wrapping_sub(b'0');
        if digit < 10 {
            value = value.wrapping_mul(10).wrapping_add(u32::from(digit));
            digits += 1;
        } else if byte == b'.' && part < 3 {
            octets[part] = octet(value, digits)?;
            (part, value, digits) = (part + 1, 0, 0);
        } else {
            return None;
        }
    }
    if part != 3 {
        return None;
    }
    octets[3] = octet(value, digits)?;
    Some(Ipv4Addr::from(octets))
}

/// A part of a dotted quad read as `value` from `digits` digits: 1 to 3 of
/// them, no leading zero, at most 255.
fn octet(value: u32, digits: u32) -> Option<u8> {
    let least = match digits {
        1 => 0,
        2 => 10,
        3 => 100,
        _ => return None,
    };
    if value < least {
        return None;
    }
    u8::try_from(value).ok()
}

/// The entries of a comma-separated header, across repeated headers in order
/// (or, reversed, newest first).
fn header_list<'a>(
    headers: &[Header<'a>],
    name: &'static str,
) -> impl DoubleEndedIterator<Item = &'a str> {
    headers
        .iter()
        .filter(move |h| crate::wire::header_is(h.name, name))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .flat_map(|v| v.split(','))
}

/// The value of `key=` in each `Forwarded` element that has one (RFC 7239),
/// oldest first; keys are case-insensitive.
fn forwarded_params<'a>(
    headers: &[Header<'a>],
    key: &'static str,
) -> impl DoubleEndedIterator<Item = &'a str> {
    header_list(headers, FORWARDED).filter_map(move |element| {
        element.split(';').find_map(|pair| {
            let (k, value) = pair.split_once('=')?;
            k.trim().eq_ignore_ascii_case(key).then_some(value)
        })
    })
}

/// `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `"[2001:db8::1]:443"`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim().trim_matches('"');
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(addr) = hop.parse::<SocketAddr>() {
        return Some(canonical(addr.ip()));
    }
    let bracketed = hop.strip_prefix('[')?.split(']').next()?;
    bracketed.parse::<IpAddr>().ok().map(canonical)
}

/// `::ffff:1.2.3.4` is `1.2.3.4`.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    fn headers<'a>(pairs: &[(&'a str, &'a str)]) -> Vec<Header<'a>> {
        pairs
            .iter()
            .map(|(name, value)| Header {
                name,
                value: value.as_bytes(),
            })
            .collect()
    }

    #[test]
    fn table() {
        let trusted = TrustedProxies::new(vec![
            "10.0.0.0/8".parse().unwrap(),
            "fd00::/8".parse().unwrap(),
        ]);
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case<'_>] = &[
            // An untrusted peer's headers change nothing.
            (
                "203.0.113.9",
                &[("x-forwarded-for", "1.1.1.1")],
                "203.0.113.9",
            ),
            (
                "203.0.113.9",
                &[("forwarded", "for=1.1.1.1")],
                "203.0.113.9",
            ),
            // A trusted proxy: the rightmost untrusted hop.
            ("10.0.0.1", &[("x-forwarded-for", "1.1.1.1")], "1.1.1.1"),
            (
                "10.0.0.1",
                &[("x-forwarded-for", "6.6.6.6, 1.1.1.1, 10.0.0.2")],
                "1.1.1.1",
            ),
            (
                "10.0.0.1",
                &[
                    ("x-forwarded-for", "6.6.6.6"),
                    ("x-forwarded-for", "1.1.1.1"),
                ],
                "1.1.1.1",
            ),
            // Spoofed entries to the left of the real client are ignored.
            (
                "10.0.0.1",
                &[("x-forwarded-for", "10.9.9.9, 1.1.1.1")],
                "1.1.1.1",
            ),
            // Forwarded wins over X-Forwarded-For; ports, quotes and brackets are handled.
            (
                "10.0.0.1",
                &[
                    ("forwarded", "for=1.1.1.1;proto=http"),
                    ("x-forwarded-for", "2.2.2.2"),
                ],
                "1.1.1.1",
            ),
            (
                "10.0.0.1",
                &[("forwarded", "for=\"[2001:db8::7]:4711\", for=10.0.0.3")],
                "2001:db8::7",
            ),
            ("10.0.0.1", &[("forwarded", "For=3.3.3.3:80")], "3.3.3.3"),
            (
                "10.0.0.1",
                &[("x-forwarded-for", "::ffff:4.4.4.4")],
                "4.4.4.4",
            ),
            // Garbage stops the walk at the last address we can vouch for.
            (
                "10.0.0.1",
                &[("x-forwarded-for", "1.1.1.1, garbage")],
                "10.0.0.1",
            ),
            ("10.0.0.1", &[("forwarded", "for=_hidden")], "10.0.0.1"),
            ("10.0.0.1", &[("forwarded", "by=1.2.3.4")], "10.0.0.1"),
            ("10.0.0.1", &[], "10.0.0.1"),
            // Everyone trusted: the leftmost.
            (
                "10.0.0.1",
                &[("x-forwarded-for", "10.0.0.5, 10.0.0.6")],
                "10.0.0.5",
            ),
            ("fd00::1", &[("x-forwarded-for", "5.5.5.5")], "5.5.5.5"),
            (
                "::ffff:10.0.0.1",
                &[("x-forwarded-for", "5.5.5.5")],
                "5.5.5.5",
            ),
        ];
        for (peer, hdrs, want) in cases {
            let got = client_ip(peer.parse().unwrap(), &headers(hdrs), &trusted);
            assert_eq!(
                got,
                want.parse::<IpAddr>().unwrap(),
                "peer {peer} headers {hdrs:?}"
            );
        }
        let nobody = TrustedProxies::default();
        let got = client_ip(
            "10.0.0.1".parse().unwrap(),
            &headers(&[("x-forwarded-for", "1.1.1.1")]),
            &nobody,
        );
        assert_eq!(
            got.to_string(),
            "10.0.0.1",
            "no trusted proxies: headers ignored"
        );
    }

    #[test]
    fn dotted_quads_read_from_bytes_exactly_as_rust_parses_them() {
        let mut rng = fastrand::Rng::with_seed(7);
        let alphabet = b"0123456789.....0012559 :x";
        let mut accepted = 0;
        for _ in 0..200_000 {
            let text: String = if rng.bool() {
                (0..rng.usize(0..18))
                    .map(|_| char::from(alphabet[rng.usize(..alphabet.len())]))
                    .collect()
            } else {
                // Near misses: 3 to 5 parts of 0 to 4 digits.
                let parts: Vec<String> = (0..rng.usize(3..=5))
                    .map(|_| (0..rng.usize(0..=4)).map(|_| rng.digit(10)).collect())
                    .collect();
                parts.join(".")
            };
            let fast = dotted_quad(text.as_bytes());
            assert_eq!(fast, text.parse::<Ipv4Addr>().ok(), "{text:?}");
            accepted += usize::from(fast.is_some());
        }
        // Random addresses, each octet over its whole range.
        for _ in 0..100_000 {
            let ip = Ipv4Addr::from(rng.u32(..));
            assert_eq!(dotted_quad(ip.to_string().as_bytes()), Some(ip));
        }
        assert!(
            accepted > 500,
            "the random texts held too few addresses: {accepted}"
        );
    }

    #[test]
    fn forwarded_for_entries_split_from_the_right_like_rsplit() {
        let mut rng = fastrand::Rng::with_seed(11);
        let alphabet = b"1.2, ,,x";
        for _ in 0..20_000 {
            let value: Vec<u8> = (0..rng.usize(0..12))
                .map(|_| alphabet[rng.usize(..alphabet.len())])
                .collect();
            let ours: Vec<&[u8]> = RightToLeft(Some(&value)).collect();
            let std: Vec<&[u8]> = value.rsplit(|&b| b == b',').collect();
            assert_eq!(ours, std, "{:?}", String::from_utf8_lossy(&value));
        }
    }

    #[test]
    fn a_forwarded_for_header_that_is_not_utf8_is_left_out() {
        let trusted = TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap()]);
        let headers = [
            Header {
                name: "X-Forwarded-For",
                value: b"1.1.1.1",
            },
            Header {
                name: "x-forwarded-for",
                value: b"2.2.2.\xff",
            },
        ];
        let ip = client_ip("10.0.0.1".parse().unwrap(), &headers, &trusted);
        assert_eq!(ip, "1.1.1.1".parse::<IpAddr>().unwrap());
        // Alone, it vouches for no one: the proxy is the player.
        let ip = client_ip("10.0.0.1".parse().unwrap(), &headers[1..], &trusted);
        assert_eq!(ip, "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn scheme_table() {
        let trusted = TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap()]);
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], Scheme);
        let cases: &[Case<'_>] = &[
            // No proxy: the player port is plain http, whatever a header says.
            ("203.0.113.9", &[], Scheme::Http),
            (
                "203.0.113.9",
                &[("x-forwarded-proto", "https")],
                Scheme::Http,
            ),
            ("203.0.113.9", &[("forwarded", "proto=https")], Scheme::Http),
            // A trusted TLS terminator.
            ("10.0.0.1", &[("x-forwarded-proto", "https")], Scheme::Https),
            ("10.0.0.1", &[("x-forwarded-proto", "HTTPS")], Scheme::Https),
            ("10.0.0.1", &[("x-forwarded-proto", "http")], Scheme::Http),
            (
                "10.0.0.1",
                &[("x-forwarded-proto", "https, http")],
                Scheme::Https,
            ),
            (
                "10.0.0.1",
                &[("forwarded", "for=1.1.1.1;proto=https")],
                Scheme::Https,
            ),
            (
                "10.0.0.1",
                &[("forwarded", "for=1.1.1.1;Proto=\"https\"")],
                Scheme::Https,
            ),
            // Forwarded wins over X-Forwarded-Proto, as for the address.
            (
                "10.0.0.1",
                &[
                    ("forwarded", "for=1.1.1.1;proto=http"),
                    ("x-forwarded-proto", "https"),
                ],
                Scheme::Http,
            ),
            // Unknown values and no header: http.
            ("10.0.0.1", &[("x-forwarded-proto", "wss")], Scheme::Http),
            ("10.0.0.1", &[("forwarded", "for=1.1.1.1")], Scheme::Http),
            ("10.0.0.1", &[], Scheme::Http),
        ];
        for (peer, hdrs, want) in cases {
            let got = client_scheme(peer.parse().unwrap(), &headers(hdrs), &trusted);
            assert_eq!(got, *want, "peer {peer} headers {hdrs:?}");
        }
    }
}
