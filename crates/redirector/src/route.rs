//! Which stream and which answer a request path asks for.

/// How the player wants the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A 302 to one mount.
    Redirect,
    /// An M3U playlist, for players that do not follow redirects.
    M3u,
    /// A PLS playlist.
    Pls,
    /// An XSPF playlist.
    Xspf,
}

/// A request for a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route<'a> {
    /// The stream name (not yet known to exist).
    pub stream: &'a str,
    /// The answer wanted.
    pub format: Format,
}

/// Reads `/<stream>`, `/<stream>/`, `<prefix>/<stream>/` (django-icecast-balancer's
/// URLs) and `/<stream>.m3u|.pls|.xspf`. Anything else, including names with
/// characters a stream name cannot have, is `None` (404); nothing is decoded,
/// so `%2e%2e` and friends never reach a lookup.
pub fn route<'a>(path: &'a str, prefix: &str) -> Option<Route<'a>> {
    let path = match path.strip_prefix(prefix).filter(|_| !prefix.is_empty()) {
        Some(rest) if rest.starts_with('/') => rest,
        _ => path,
    };
    let name = path.strip_prefix('/')?;
    let name = name.strip_suffix('/').unwrap_or(name);
    let (stream, format) = [
        (".m3u", Format::M3u),
        (".pls", Format::Pls),
        (".xspf", Format::Xspf),
    ]
    .into_iter()
    .find_map(|(ext, format)| name.strip_suffix(ext).map(|stream| (stream, format)))
    .filter(|_| !path.ends_with('/'))
    .unwrap_or((name, Format::Redirect));
    valid_name(stream).then_some(Route { stream, format })
}

/// The characters the fleet config allows in stream names.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let prefix = "/icecast_balancer";
        let ok = |stream, format| Some(Route { stream, format });
        let cases = [
            ("/fm4-hq", ok("fm4-hq", Format::Redirect)),
            ("/fm4-hq/", ok("fm4-hq", Format::Redirect)),
            ("/icecast_balancer/fm4-hq/", ok("fm4-hq", Format::Redirect)),
            ("/icecast_balancer/fm4-hq", ok("fm4-hq", Format::Redirect)),
            ("/fm4-hq.m3u", ok("fm4-hq", Format::M3u)),
            ("/fm4-hq.pls", ok("fm4-hq", Format::Pls)),
            ("/fm4-hq.xspf", ok("fm4-hq", Format::Xspf)),
            ("/icecast_balancer/fm4-hq.m3u", ok("fm4-hq", Format::M3u)),
            ("/v1.2", ok("v1.2", Format::Redirect)),
            ("/", None),
            ("", None),
            ("fm4", None),
            ("//evil.example", None),
            ("/fm4/../etc", None),
            ("/fm4%2e%2e", None),
            ("/a/b", None),
            ("/icecast_balancer/", None),
            (
                "/icecast_balancer",
                ok("icecast_balancer", Format::Redirect),
            ),
            ("/.m3u", None),
            // A stream name cannot end in .m3u (the config refuses it), so this 404s at lookup.
            ("/fm4.m3u/", ok("fm4.m3u", Format::Redirect)),
            ("/fm4\r\nx", None),
            ("/fümf", None),
        ];
        for (path, want) in cases {
            assert_eq!(route(path, prefix), want, "{path:?}");
        }
        assert_eq!(
            route("/x", ""),
            ok("x", Format::Redirect),
            "no prefix configured"
        );
    }
}
