//! The player's address: the socket peer, unless the peer is a trusted proxy,
//! then the forwarding headers read from the right, skipping trusted hops.
//! And the scheme the player used: http (the player port has no TLS), unless
//! a trusted proxy says otherwise.

use std::net::{IpAddr, SocketAddr};

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
    // The hop lists are walked from the right where they lie, never collected.
    let (ip, scheme) = if has(headers, FORWARDED) {
        (
            nearest_untrusted(peer, forwarded_params(headers, "for").rev(), trusted),
            forwarded_params(headers, "proto").next(),
        )
    } else {
        (
            nearest_untrusted(peer, header_list(headers, X_FORWARDED_FOR).rev(), trusted),
            header_list(headers, X_FORWARDED_PROTO).next(),
        )
    };
    (ip, scheme.and_then(Scheme::parse).unwrap_or(Scheme::Http))
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
fn nearest_untrusted<'a>(
    mut client: IpAddr,
    hops: impl Iterator<Item = &'a str>,
    trusted: &TrustedProxies,
) -> IpAddr {
    for (nth, hop) in hops.enumerate() {
        // The first address is the trusted peer.
        if nth > 0 && !trusted.contains(client) {
            break;
        }
        match parse_hop(hop) {
            Some(ip) => client = ip,
            // Garbage or an obfuscated identifier: the last address we can vouch for stands.
            None => break,
        }
    }
    client
}

/// Whether a header called `name` is there.
fn has(headers: &[Header<'_>], name: &str) -> bool {
    headers.iter().any(|h| crate::wire::header_is(h.name, name))
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
