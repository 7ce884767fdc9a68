//! HTTP/1.1 on the player port, as little of it as a redirector needs:
//! parsing request heads (with `httparse`, no copy) and encoding answers into
//! one buffer per batch of pipelined requests.
//!
//! A player sends a GET or HEAD without a body and reads a short answer; so
//! this module refuses, with a status and a closed connection, everything
//! else that could make two servers disagree about where a request ends:
//! bodies, `Transfer-Encoding`, several `Content-Length`s, HTTP/1.1 without
//! `Host`, heads over [`MAX_HEAD_BYTES`], HTTP/0.9, TLS and other garbage.

use std::fmt::Write as _;

use bytes::Bytes;

/// The largest request head accepted; a bigger one gets 431.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// The most header lines a head may have; more gets 431.
pub const MAX_HEADERS: usize = 64;

/// Room for a head's header lines, left uninitialised: httparse writes the
/// lines it finds, so parsing a request does not clear 2 KiB first.
pub type HeaderSlots<'b> = [std::mem::MaybeUninit<httparse::Header<'b>>; MAX_HEADERS];

/// Empty [`HeaderSlots`].
pub fn header_slots<'b>() -> HeaderSlots<'b> {
    [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS]
}

/// GET and HEAD are what players send; everything else is answered 405.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// A player, or a browser following a link.
    Get,
    /// A probe: the same answer without a body, and no slot taken.
    Head,
    /// Anything else.
    Other,
}

/// One parsed request head, borrowing the connection's buffer.
#[derive(Debug)]
pub struct Head<'b, 'h> {
    /// The method.
    pub method: Method,
    /// The path of the target, without the query.
    pub path: &'b str,
    /// The query string, without `?`; `None` when there is none.
    pub query: Option<&'b str>,
    /// Every header line, in order.
    pub headers: &'h [httparse::Header<'b>],
    /// HTTP/1.0 (else HTTP/1.1).
    pub http10: bool,
    /// Whether the client wants the connection kept after the answer.
    pub keep_alive: bool,
}

/// Why a head is refused; the connection closes after the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not HTTP/1.x, or not well-formed (HTTP/0.9, TLS, garbage).
    Malformed,
    /// HTTP/1.1 without exactly one `Host`.
    NoHost,
    /// A body, announced by `Content-Length` or `Transfer-Encoding`.
    Body,
    /// Over [`MAX_HEAD_BYTES`] or [`MAX_HEADERS`].
    TooLarge,
}

impl Refusal {
    /// The answer: status and text.
    pub fn reply(self) -> Reply {
        match self {
            Refusal::Malformed => Reply::text(Status::BadRequest, "Bad request.\n"),
            Refusal::NoHost => Reply::text(
                Status::BadRequest,
                "An HTTP/1.1 request needs one Host header.\n",
            ),
            Refusal::Body => {
                Reply::text(Status::BadRequest, "A request for a stream has no body.\n")
            }
            Refusal::TooLarge => {
                Reply::text(Status::HeadTooLarge, "The request head is over 16 KiB.\n")
            }
        }
    }
}

/// What [`parse`] found at the start of the buffer.
#[derive(Debug)]
pub enum Parsed<'b, 'h> {
    /// Not a whole head yet: read more.
    Partial,
    /// A head, and its length in bytes (the next request starts after it).
    Request(Head<'b, 'h>, usize),
    /// A head to refuse; the connection closes after the answer.
    Refused(Refusal, Method),
}

/// Whether header `name` is `lowercase` (letters and `-`), regardless of
/// case. httparse lets only token characters into a name, and of those,
/// setting bit 0x20 turns exactly the upper-case letters into lower-case ones
/// and leaves the rest as they are or turns them into something no
/// `lowercase` name contains (only a CR, never in a name, would become `-`):
/// one OR per byte instead of `eq_ignore_ascii_case`'s conversion of both sides.
pub fn header_is(name: &str, lowercase: &str) -> bool {
    debug_assert!(
        lowercase
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'-')
    );
    let (name, lowercase) = (name.as_bytes(), lowercase.as_bytes());
    if name.len() != lowercase.len() {
        return false;
    }
    // Eight bytes at a time: the names looked for are up to 17 bytes long.
    let (mut have, mut want) = (name.chunks_exact(8), lowercase.chunks_exact(8));
    let word = |bytes: &[u8]| u64::from_ne_bytes(bytes.try_into().unwrap_or_default());
    have.by_ref()
        .zip(want.by_ref())
        .all(|(have, want)| word(have) | 0x2020_2020_2020_2020 == word(want))
        && have
            .remainder()
            .iter()
            .zip(want.remainder())
            .all(|(have, want)| have | 0x20 == *want)
}

/// Parses the request head at the start of `buffer`, using `headers` as the
/// storage for its header lines.
pub fn parse<'b, 'h>(buffer: &'b [u8], headers: &'h mut HeaderSlots<'b>) -> Parsed<'b, 'h> {
    let mut request = httparse::Request::new(&mut []);
    let length = match request.parse_with_uninit_headers(buffer, headers) {
        Ok(httparse::Status::Complete(length)) if length <= MAX_HEAD_BYTES => length,
        Ok(httparse::Status::Complete(_)) | Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Refused(Refusal::TooLarge, Method::Other);
        }
        Ok(httparse::Status::Partial) if buffer.len() > MAX_HEAD_BYTES => {
            return Parsed::Refused(Refusal::TooLarge, Method::Other);
        }
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Refused(Refusal::Malformed, Method::Other),
    };
    let method = match request.method {
        Some("GET") => Method::Get,
        Some("HEAD") => Method::Head,
        _ => Method::Other,
    };
    let http10 = request.version == Some(0);
    let Some(target) = request.path.and_then(origin_form) else {
        return Parsed::Refused(Refusal::Malformed, method);
    };
    let headers: &'h [httparse::Header<'b>] = request.headers;
    let mut hosts = 0;
    let mut lengths: Option<&[u8]> = None;
    let mut keep_alive = !http10;
    for header in headers {
        let name = header.name;
        if header_is(name, "host") {
            hosts += 1;
        } else if header_is(name, "transfer-encoding") {
            return Parsed::Refused(Refusal::Body, method);
        } else if header_is(name, "content-length") {
            let value = header.value;
            if lengths.is_some_and(|seen| seen != value) || value.trim_ascii() != b"0" {
                return Parsed::Refused(Refusal::Body, method);
            }
            lengths = Some(value);
        } else if header_is(name, "connection") {
            for token in header.value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if http10 && token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                }
            }
        }
    }
    if !http10 && hosts != 1 {
        return Parsed::Refused(Refusal::NoHost, method);
    }
    // A byte loop: `split_once`'s searcher costs more than a short path.
    let (path, query) = match target.bytes().position(|b| b == b'?') {
        Some(mark) => (&target[..mark], Some(&target[mark + 1..])),
        None => (target, None),
    };
    let head = Head {
        method,
        path,
        query,
        headers,
        http10,
        keep_alive,
    };
    Parsed::Request(head, length)
}

/// The path and query of a request target: origin-form as is, absolute-form
/// (`http://host/path`, which RFC 9112 says servers must accept) without its
/// scheme and authority. `*` and authority-form are not for us.
fn origin_form(target: &str) -> Option<&str> {
    if target.starts_with('/') {
        return Some(target);
    }
    let rest = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))?;
    match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => Some(&rest[i..]),
        // `http://host?q` and `http://host` mean the path `/`.
        _ => Some("/"),
    }
}

/// The statuses the player port answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// A playlist or an index page.
    Ok,
    /// The redirect.
    Found,
    /// A malformed request.
    BadRequest,
    /// An unknown stream.
    NotFound,
    /// Not GET or HEAD.
    MethodNotAllowed,
    /// A head over the limit.
    HeadTooLarge,
    /// A stream not licensed for the player's country.
    LegalReasons,
    /// Every relay is full, or no data yet.
    Unavailable,
}

impl Status {
    /// The status line, ready to write.
    fn line(self) -> &'static [u8] {
        match self {
            Status::Ok => b"HTTP/1.1 200 OK\r\n",
            Status::Found => b"HTTP/1.1 302 Found\r\n",
            Status::BadRequest => b"HTTP/1.1 400 Bad Request\r\n",
            Status::NotFound => b"HTTP/1.1 404 Not Found\r\n",
            Status::MethodNotAllowed => b"HTTP/1.1 405 Method Not Allowed\r\n",
            Status::HeadTooLarge => b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
            Status::LegalReasons => b"HTTP/1.1 451 Unavailable For Legal Reasons\r\n",
            Status::Unavailable => b"HTTP/1.1 503 Service Unavailable\r\n",
        }
    }

    /// The code, e.g. for tests and logs.
    pub fn code(self) -> u16 {
        match self {
            Status::Ok => 200,
            Status::Found => 302,
            Status::BadRequest => 400,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::HeadTooLarge => 431,
            Status::LegalReasons => 451,
            Status::Unavailable => 503,
        }
    }
}

/// One answer, before encoding.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The status.
    pub status: Status,
    /// The `Content-Type`.
    pub content_type: &'static str,
    /// The body (also counted, but not sent, for HEAD).
    pub body: Bytes,
    /// The `Location`, for a redirect.
    pub location: Option<Location>,
    /// Seconds for `Retry-After`, for a 503.
    pub retry_after: Option<u32>,
    /// Further fixed header lines, each ending in CRLF (`Allow`, the index's CSP).
    pub extra: &'static str,
}

impl Reply {
    /// A plain-text answer.
    pub fn text(status: Status, body: &'static str) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: Bytes::from_static(body.as_bytes()),
            location: None,
            retry_after: None,
            extra: "",
        }
    }
}

/// Where a redirect sends the player: a URL of the view (shared, not
/// copied) and the request's query string, already checked printable.
#[derive(Debug, Clone)]
pub struct Location {
    /// Public URL and mount.
    pub url: std::sync::Arc<str>,
    /// Appended after `?` when set.
    pub query: Option<String>,
}

/// How the connection goes on after an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Kept, HTTP/1.1 style (no header needed).
    KeepAlive,
    /// Kept for an HTTP/1.0 client that asked (`Connection: keep-alive`).
    KeepAlive10,
    /// Closed after this answer (`Connection: close`).
    Close,
}

/// Appends `reply` to `out` as an HTTP/1.1 answer dated `date` (an IMF-fixdate,
/// see [`DateCache`]), without the body for a HEAD.
pub fn encode(reply: &Reply, head_only: bool, next: Next, date: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(reply.status.line());
    out.extend_from_slice(b"date: ");
    out.extend_from_slice(date.as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: ");
    out.extend_from_slice(reply.content_type.as_bytes());
    out.extend_from_slice(b"\r\ncache-control: no-store\r\n");
    if let Some(location) = &reply.location {
        out.extend_from_slice(b"location: ");
        out.extend_from_slice(location.url.as_bytes());
        if let Some(query) = &location.query {
            out.push(b'?');
            out.extend_from_slice(query.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    if let Some(seconds) = reply.retry_after {
        out.extend_from_slice(b"retry-after: ");
        push_number(out, u64::from(seconds));
        out.extend_from_slice(b"\r\n");
    }
    if !reply.extra.is_empty() {
        out.extend_from_slice(reply.extra.as_bytes());
    }
    match next {
        Next::KeepAlive => {}
        Next::KeepAlive10 => out.extend_from_slice(b"connection: keep-alive\r\n"),
        Next::Close => out.extend_from_slice(b"connection: close\r\n"),
    }
    out.extend_from_slice(b"content-length: ");
    push_number(out, reply.body.len() as u64);
    out.extend_from_slice(b"\r\n\r\n");
    if !head_only {
        out.extend_from_slice(&reply.body);
    }
}

fn push_number(out: &mut Vec<u8>, n: u64) {
    // Bodies and Retry-After are short: their one to three digits are
    // written as such, a copy of known length each.
    let digit = |n: u64| b'0' + (n % 10) as u8;
    match n {
        0..=9 => return out.push(digit(n)),
        10..=99 => return out.extend_from_slice(&[digit(n / 10), digit(n)]),
        100..=999 => return out.extend_from_slice(&[digit(n / 100), digit(n / 10), digit(n)]),
        _ => {}
    }
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// The `Date` header's value, formatted once per second.
#[derive(Debug, Default)]
pub struct DateCache {
    second: i64,
    text: String,
}

impl DateCache {
    /// The date for `now_ms` (milliseconds since the Unix epoch).
    pub fn at(&mut self, now_ms: i64) -> &str {
        let second = now_ms.div_euclid(1000);
        if second != self.second || self.text.is_empty() {
            self.second = second;
            let time = std::time::UNIX_EPOCH
                + std::time::Duration::from_secs(u64::try_from(second).unwrap_or(0));
            self.text.clear();
            let _ = write!(self.text, "{}", httpdate::HttpDate::from(time));
        }
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(bytes: &[u8]) -> Result<(Method, String, Option<String>, bool, usize), Refusal> {
        let mut headers = header_slots();
        match parse(bytes, &mut headers) {
            Parsed::Request(head, length) => Ok((
                head.method,
                head.path.to_owned(),
                head.query.map(str::to_owned),
                head.keep_alive,
                length,
            )),
            Parsed::Refused(refusal, _) => Err(refusal),
            Parsed::Partial => panic!("partial: {:?}", String::from_utf8_lossy(bytes)),
        }
    }

    #[test]
    fn header_names_compare_as_eq_ignore_ascii_case_for_every_token_byte() {
        // RFC 9110 token characters, the only ones httparse lets into a name.
        let token: Vec<u8> = (0u8..128)
            .filter(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b))
            .collect();
        let wanted: Vec<u8> = (b'a'..=b'z').chain([b'-']).collect();
        for &have in &token {
            for &want in &wanted {
                let (have, want) = (char::from(have).to_string(), char::from(want).to_string());
                assert_eq!(
                    header_is(&have, &want),
                    have.eq_ignore_ascii_case(&want),
                    "{have:?} against {want:?}"
                );
            }
        }
        // The same for every byte of a long name, read eight bytes at a time.
        for want in [
            "transfer-encoding",
            "x-forwarded-for",
            "content-length",
            "host",
        ] {
            for at in 0..want.len() {
                for &byte in &token {
                    let mut have = want.to_ascii_uppercase().into_bytes();
                    have[at] = byte;
                    let have = String::from_utf8(have).unwrap();
                    assert_eq!(
                        header_is(&have, want),
                        have.eq_ignore_ascii_case(want),
                        "{have:?} against {want:?}"
                    );
                }
            }
        }
        assert!(header_is("X-Forwarded-For", "x-forwarded-for"));
        assert!(!header_is("X-Forwarded-Fo", "x-forwarded-for"));
        assert!(!header_is("X_Forwarded-For", "x-forwarded-for"));
    }

    #[test]
    fn players_requests() {
        let (method, path, query, keep, length) =
            parsed(b"GET /s?a=1 HTTP/1.1\r\nHost: x\r\n\r\nGET /t").unwrap();
        assert_eq!(
            (method, path.as_str(), query.as_deref(), keep),
            (Method::Get, "/s", Some("a=1"), true)
        );
        assert_eq!(length, 32, "the pipelined request after it is left alone");
        let head = parsed(b"HEAD /s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        assert_eq!((head.0, head.3), (Method::Head, false));
        let absolute = parsed(b"GET http://bal.example/s?x HTTP/1.1\r\nHost: bal.example\r\n\r\n");
        assert_eq!(absolute.unwrap().1, "/s");
        let other = parsed(b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert_eq!(other.0, Method::Other);
    }

    #[test]
    fn http_1_0_closes_unless_asked_to_keep() {
        assert!(
            !parsed(b"GET /s HTTP/1.0\r\n\r\n").unwrap().3,
            "no Host needed"
        );
        assert!(
            parsed(b"GET /s HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
                .unwrap()
                .3
        );
        assert!(
            !parsed(b"GET /s HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, close\r\n\r\n")
                .unwrap()
                .3
        );
    }

    #[test]
    fn the_classic_holes_are_refused() {
        let cases: &[(&[u8], Refusal)] = &[
            (b"GET /s HTTP/1.1\r\n\r\n", Refusal::NoHost),
            (b"GET /s HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", Refusal::NoHost),
            (
                b"GET /s HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
                Refusal::Body,
            ),
            (
                b"GET /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n",
                Refusal::Body,
            ),
            (
                b"GET /s HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 1\r\n\r\n",
                Refusal::Body,
            ),
            (b"GET /s\r\n\r\n", Refusal::Malformed),
            (b"GET / HTTP/9.9\r\n\r\n", Refusal::Malformed),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Refusal::Malformed),
            (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", Refusal::Malformed),
            (b"GARBAGE\r\n\r\n", Refusal::Malformed),
            (b"GET /s\0 HTTP/1.1\r\nHost: x\r\n\r\n", Refusal::Malformed),
            (b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", Refusal::Malformed),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                parsed(bytes).unwrap_err(),
                *want,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn heads_are_bounded() {
        let mut headers = header_slots();
        let mut big = b"GET /s HTTP/1.1\r\nHost: x\r\nX-Filler: ".to_vec();
        big.resize(MAX_HEAD_BYTES + 1, b'a');
        assert!(matches!(
            parse(&big, &mut headers),
            Parsed::Refused(Refusal::TooLarge, _)
        ));
        let mut many = b"GET /s HTTP/1.1\r\nHost: x\r\n".to_vec();
        for i in 0..MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        let mut headers = header_slots();
        assert!(matches!(
            parse(&many, &mut headers),
            Parsed::Refused(Refusal::TooLarge, _)
        ));
        let mut headers = header_slots();
        assert!(matches!(
            parse(b"GET /s HTTP/1.1\r\nHo", &mut headers),
            Parsed::Partial
        ));
    }

    #[test]
    fn answers_are_encoded_in_one_piece() {
        let mut reply = Reply::text(Status::Found, "Redirecting to a relay.\n");
        reply.location = Some(Location {
            url: "http://relay.example:8000/s.ogg".into(),
            query: Some("a=1".to_owned()),
        });
        let mut out = Vec::new();
        let date = "Tue, 01 Dec 2026 00:00:00 GMT";
        encode(&reply, false, Next::KeepAlive, date, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 302 Found\r\ndate: Tue, 01 Dec 2026 00:00:00 GMT\r\n\
             content-type: text/plain; charset=utf-8\r\ncache-control: no-store\r\n\
             location: http://relay.example:8000/s.ogg?a=1\r\ncontent-length: 24\r\n\r\n\
             Redirecting to a relay.\n"
        );
        let mut busy = Reply::text(Status::Unavailable, "Full.\n");
        busy.retry_after = Some(12);
        let mut out = Vec::new();
        encode(&busy, true, Next::Close, date, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(text.contains("retry-after: 12\r\nconnection: close\r\ncontent-length: 6\r\n\r\n"));
        assert!(text.ends_with("\r\n\r\n"), "HEAD: no body");
    }

    #[test]
    fn numbers_are_written_in_decimal_at_every_length() {
        for n in (0..2_000).chain([9_999, 10_000, 123_456, u64::from(u32::MAX), u64::MAX]) {
            let mut out = b"x".to_vec();
            push_number(&mut out, n);
            assert_eq!(out, format!("x{n}").into_bytes());
        }
    }

    #[test]
    fn the_date_is_formatted_once_a_second() {
        let mut dates = DateCache::default();
        assert_eq!(dates.at(1_796_083_200_000), "Tue, 01 Dec 2026 00:00:00 GMT");
        assert_eq!(dates.at(1_796_083_200_999), "Tue, 01 Dec 2026 00:00:00 GMT");
        assert_eq!(dates.at(1_796_083_201_000), "Tue, 01 Dec 2026 00:00:01 GMT");
    }
}
