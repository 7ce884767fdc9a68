//! From the file as written ([`crate::raw`]) to a [`Fleet`] whose references resolve.

use std::collections::HashMap;
use std::time::Duration;

use toml::Spanned;
use url::Url;

use crate::error::{ConfigError, Source};
use crate::raw::{
    RawFleet, RawLimit, RawMount, RawPoller, RawServer, RawStatus, RawStream, RawUrls,
};
use crate::{
    AdminCredentials, CaBundle, Code, CountryRule, DEFAULT_AUDIENCE_INTERVAL,
    DEFAULT_CANARY_INTERVAL, DEFAULT_CANARY_TIMEOUT, DEFAULT_FALL, DEFAULT_INTERVAL, DEFAULT_RISE,
    DEFAULT_STALL_AFTER, DEFAULT_TIMEOUT, DEFAULT_WEIGHT, Fleet, Headroom, ListenerLimit,
    MAX_WEIGHT, MIN_STALL_AFTER, MountRef, PollerSettings, PublicUrls, Secret, Server,
    StatusSource, Stream,
};

/// File extensions the redirector answers with a playlist; a stream name must not end in one.
const PLAYLIST_EXTENSIONS: [&str; 3] = [".m3u", ".pls", ".xspf"];

pub(crate) fn parse(
    source: Source<'_>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Fleet, ConfigError> {
    let raw = deserialize(&source)?;
    let poller = poller(&source, raw.poller)?;
    let servers = servers(&source, raw.server, env)?;
    let streams = streams(&source, raw.stream, &servers)?;
    Ok(Fleet {
        poller,
        servers,
        streams,
    })
}

fn deserialize(source: &Source<'_>) -> Result<RawFleet, ConfigError> {
    let document = toml::Deserializer::parse(source.text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        source.error(span, "(syntax)", e.message())
    })?;
    serde_path_to_error::deserialize(document).map_err(|e| {
        // `Spanned` fields add a private segment to the path; it means nothing to a reader.
        let path = e.path().to_string();
        let field = match path.split(".$__serde_spanned").next().unwrap_or(&path) {
            "." => "(top level)".to_owned(),
            path => path.to_owned(),
        };
        let span = e.inner().span().unwrap_or(0..0);
        source.error(span, field, e.inner().message())
    })
}

fn poller(source: &Source<'_>, raw: RawPoller) -> Result<PollerSettings, ConfigError> {
    let interval = match raw.interval {
        Some(v) => duration(source, &v, "poller.interval")?,
        None => DEFAULT_INTERVAL,
    };
    let timeout = match &raw.timeout {
        Some(v) => duration(source, v, "poller.timeout")?,
        None => DEFAULT_TIMEOUT.min(interval),
    };
    if let Some(v) = raw.timeout.as_ref().filter(|_| timeout > interval) {
        return Err(source.error(
            v.span(),
            "poller.timeout",
            format!(
                "{} is longer than the interval ({}): a poll must end before the next begins",
                v.get_ref(),
                humantime::format_duration(interval)
            ),
        ));
    }
    let count = |value: Option<Spanned<u32>>, field: &str, default: u32| match value {
        Some(v) if *v.get_ref() == 0 => Err(source.error(v.span(), field, "must be at least 1")),
        Some(v) => Ok(v.into_inner()),
        None => Ok(default),
    };
    let stall_after = match &raw.stall_after {
        Some(v) => duration(source, v, "poller.stall_after")?,
        None => DEFAULT_STALL_AFTER,
    };
    if let Some(v) = raw
        .stall_after
        .as_ref()
        .filter(|_| stall_after < MIN_STALL_AFTER)
    {
        return Err(source.error(
            v.span(),
            "poller.stall_after",
            format!(
                "{} is too short: Icecast updates total_bytes_read about every 5 s; use at least {}",
                v.get_ref(),
                humantime::format_duration(MIN_STALL_AFTER)
            ),
        ));
    }
    Ok(PollerSettings {
        interval,
        timeout,
        rise: count(raw.rise, "poller.rise", DEFAULT_RISE)?,
        fall: count(raw.fall, "poller.fall", DEFAULT_FALL)?,
        stall_after,
        canary_interval: match &raw.canary_interval {
            Some(v) if v.get_ref() == "off" => None,
            Some(v) => Some(duration(source, v, "poller.canary_interval")?),
            None => Some(DEFAULT_CANARY_INTERVAL),
        },
        audience_interval: match &raw.audience_interval {
            Some(v) if v.get_ref() == "off" => None,
            Some(v) => Some(duration(source, v, "poller.audience_interval")?),
            None => Some(DEFAULT_AUDIENCE_INTERVAL),
        },
        canary_timeout: match &raw.canary_timeout {
            Some(v) => duration(source, v, "poller.canary_timeout")?,
            None => DEFAULT_CANARY_TIMEOUT,
        },
        ca: match &raw.ca_file {
            Some(v) => Some(ca_bundle(source, v)?),
            None => None,
        },
    })
}

/// Reads `ca_file`, relative to the fleet file's folder, and checks that it holds certificates.
fn ca_bundle(source: &Source<'_>, value: &Spanned<String>) -> Result<CaBundle, ConfigError> {
    let path = source
        .file
        .parent()
        .unwrap_or(std::path::Path::new(""))
        .join(value.get_ref());
    let pem = std::fs::read(&path).map_err(|e| {
        source.error(
            value.span(),
            "poller.ca_file",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
        return Err(source.error(
            value.span(),
            "poller.ca_file",
            format!(
                "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                path.display()
            ),
        ));
    }
    Ok(CaBundle { path, pem })
}

fn duration(
    source: &Source<'_>,
    value: &Spanned<String>,
    field: &str,
) -> Result<Duration, ConfigError> {
    let parsed = humantime::parse_duration(value.get_ref()).map_err(|e| {
        source.error(
            value.span(),
            field,
            format!(
                "{:?} is not a duration ({e}); write e.g. \"2s\" or \"1500ms\"",
                value.get_ref()
            ),
        )
    })?;
    if parsed.is_zero() {
        return Err(source.error(value.span(), field, "must be greater than zero"));
    }
    Ok(parsed)
}

fn servers(
    source: &Source<'_>,
    raw: Vec<RawServer>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<Server>, ConfigError> {
    if raw.is_empty() {
        return Err(source.error(0..0, "server", "the fleet has no [[server]]"));
    }
    let mut seen = HashMap::new();
    let mut servers = Vec::with_capacity(raw.len());
    for (i, raw) in raw.into_iter().enumerate() {
        let field = |name: &str| format!("server[{i}].{name}");
        let name = name(source, &raw.name, &field("name"), &mut seen, "server")?;
        let url = http_url(source, &raw.url, &field("url"))?;
        let (public_url, public_urls) = public_urls(source, raw.public_url.as_ref(), &url, i)?;
        // With a URL for each scheme there is never a reason to cross; with
        // one, players of the other scheme go there unless the file says no.
        let cross_scheme = raw.cross_scheme.unwrap_or(true);
        let headroom = match &raw.headroom {
            Some(v) => headroom(source, v, &field("headroom"))?,
            None => Headroom::None,
        };
        let status = match raw.status.as_ref().map(|s| *s.get_ref()) {
            None | Some(RawStatus::Admin) => StatusSource::Admin,
            Some(RawStatus::Json) => StatusSource::Json,
            Some(RawStatus::LoadXsl) => StatusSource::LoadXsl,
        };
        let admin = admin_credentials(source, &raw, i, env)?;
        if status == StatusSource::Admin && admin.is_none() {
            let span = raw.status.as_ref().map_or(raw.name.span(), Spanned::span);
            return Err(source.error(
                span,
                field("status"),
                "status \"admin\" reads /admin/stats and needs admin_user with admin_password \
                 or admin_password_env (or choose status = \"json\" or \"load-xsl\")",
            ));
        }
        let weight = match raw.weight {
            Some(w) if !(1..=MAX_WEIGHT).contains(w.get_ref()) => {
                return Err(source.error(
                    w.span(),
                    field("weight"),
                    format!("{} is outside 1..={MAX_WEIGHT} (drain a server to stop sending players to it)", w.get_ref()),
                ));
            }
            Some(w) => w.into_inner(),
            None => DEFAULT_WEIGHT,
        };
        let max_listeners = match raw.max_listeners {
            Some(m) if *m.get_ref() == 0 => {
                return Err(source.error(m.span(), field("max_listeners"), "must be at least 1"));
            }
            other => other.map(Spanned::into_inner),
        };
        let country = match &raw.country {
            Some(c) => Some(country_code(source, c, &field("country"))?),
            None => None,
        };
        servers.push(Server {
            name,
            url,
            public_url,
            public_urls,
            cross_scheme,
            headroom,
            canary: raw.canary.unwrap_or(true),
            status,
            admin,
            location: raw.location,
            country,
            weight,
            max_listeners,
        });
    }
    Ok(servers)
}

/// A unique name made of characters safe in URLs, Redis keys and metric labels.
fn name(
    source: &Source<'_>,
    value: &Spanned<String>,
    field: &str,
    seen: &mut HashMap<String, usize>,
    kind: &str,
) -> Result<String, ConfigError> {
    let name = value.get_ref();
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || !name.chars().all(allowed) || name.len() > 64 {
        return Err(source.error(
            value.span(),
            field,
            format!(
                "{name:?} is not a valid name: use 1 to 64 ASCII letters, digits, '.', '_' or '-'"
            ),
        ));
    }
    let line = source.location(value.span().start).line;
    if let Some(first) = seen.insert(name.clone(), line) {
        return Err(source.error(
            value.span(),
            field,
            format!("duplicate {kind} name {name:?} (first defined on line {first})"),
        ));
    }
    Ok(name.clone())
}

fn http_url(source: &Source<'_>, value: &Spanned<String>, field: &str) -> Result<Url, ConfigError> {
    let bad = |why: String| source.error(value.span(), field, why);
    let mut url = Url::parse(value.get_ref())
        .map_err(|e| bad(format!("{:?} is not a URL: {e}", value.get_ref())))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad(format!(
            "scheme {:?} is not allowed: use http or https",
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("the URL has no host".to_owned()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            "credentials do not belong in a URL: use admin_user and admin_password_env".to_owned(),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("the URL must not have a query or fragment".to_owned()));
    }
    // Mount names start with '/', so keep the base without a trailing one.
    let path = url.path().trim_end_matches('/').to_owned();
    url.set_path(&path);
    Ok(url)
}

/// `public_url`: one URL, or a list with at most one per scheme; `url` when absent.
fn public_urls(
    source: &Source<'_>,
    raw: Option<&Spanned<RawUrls>>,
    url: &Url,
    i: usize,
) -> Result<(Url, PublicUrls), ConfigError> {
    let field = format!("server[{i}].public_url");
    let Some(raw) = raw else {
        return Ok((url.clone(), PublicUrls::default().with(url.clone())));
    };
    let spanned = |text: &str| Spanned::new(raw.span(), text.to_owned());
    let listed: Vec<Url> = match raw.get_ref() {
        RawUrls::One(text) => vec![http_url(source, &spanned(text), &field)?],
        RawUrls::Many(list) => list
            .iter()
            .enumerate()
            .map(|(j, text)| http_url(source, &spanned(text), &format!("{field}[{j}]")))
            .collect::<Result<_, _>>()?,
    };
    let mut urls = PublicUrls::default();
    for (j, url) in listed.iter().enumerate() {
        let slot = if url.scheme() == "https" {
            &mut urls.https
        } else {
            &mut urls.http
        };
        if slot.is_some() {
            return Err(source.error(
                raw.span(),
                format!("{field}[{j}]"),
                format!("a second {} URL: list at most one per scheme", url.scheme()),
            ));
        }
        *slot = Some(url.clone());
    }
    match listed.into_iter().next() {
        Some(first) => Ok((first, urls)),
        None => Err(source.error(raw.span(), field, "the list is empty")),
    }
}

impl PublicUrls {
    fn with(mut self, url: Url) -> Self {
        if url.scheme() == "https" {
            self.https = Some(url);
        } else {
            self.http = Some(url);
        }
        self
    }
}

/// `headroom`: a number of slots, or a percentage of each mount's limit.
fn headroom(
    source: &Source<'_>,
    value: &Spanned<RawLimit>,
    field: &str,
) -> Result<Headroom, ConfigError> {
    let bad = || {
        source.error(
            value.span(),
            field,
            format!(
                "{:?} is not a headroom: write a number of slots or a percentage from 1% to 99%",
                value.get_ref()
            ),
        )
    };
    match value.get_ref() {
        RawLimit::Number(0) => Ok(Headroom::None),
        RawLimit::Number(n) => u32::try_from(*n).map(Headroom::Slots).map_err(|_| bad()),
        RawLimit::Word(w) => match w.strip_suffix('%').map(|p| p.trim().parse::<u32>()) {
            Some(Ok(p)) if (1..=99).contains(&p) => Ok(Headroom::Percent(p)),
            _ => Err(bad()),
        },
    }
}

fn admin_credentials(
    source: &Source<'_>,
    raw: &RawServer,
    i: usize,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<AdminCredentials>, ConfigError> {
    let field = |name: &str| format!("server[{i}].{name}");
    let password = match (&raw.admin_password, &raw.admin_password_env) {
        (Some(_), Some(var)) => {
            return Err(source.error(
                var.span(),
                field("admin_password_env"),
                "give admin_password or admin_password_env, not both",
            ));
        }
        (Some(p), None) => Some(Secret::new(p.get_ref().clone())),
        (None, Some(var)) => match env(var.get_ref()) {
            Some(value) if !value.is_empty() => Some(Secret::new(value)),
            _ => {
                return Err(source.error(
                    var.span(),
                    field("admin_password_env"),
                    format!("environment variable {} is not set or empty", var.get_ref()),
                ));
            }
        },
        (None, None) => None,
    };
    match (&raw.admin_user, password) {
        (Some(user), Some(password)) => Ok(Some(AdminCredentials {
            user: user.clone(),
            password,
        })),
        (None, None) => Ok(None),
        (Some(_), None) => Err(source.error(
            raw.name.span(),
            field("admin_user"),
            "admin_user is set but neither admin_password nor admin_password_env is",
        )),
        (None, Some(_)) => Err(source.error(
            raw.name.span(),
            field("admin_user"),
            "a password is set but admin_user is missing",
        )),
    }
}

fn streams(
    source: &Source<'_>,
    raw: Vec<RawStream>,
    servers: &[Server],
) -> Result<Vec<Stream>, ConfigError> {
    let mut seen = HashMap::new();
    let mut streams = Vec::with_capacity(raw.len());
    for (i, raw) in raw.iter().enumerate() {
        let field = |name: &str| format!("stream[{i}].{name}");
        let name = name(source, &raw.name, &field("name"), &mut seen, "stream")?;
        if let Some(ext) = PLAYLIST_EXTENSIONS.iter().find(|ext| name.ends_with(*ext)) {
            return Err(source.error(
                raw.name.span(),
                field("name"),
                format!("a stream name must not end in {ext}: that URL serves the playlist"),
            ));
        }
        if crate::RESERVED_STREAM_NAMES.contains(&name.as_str()) {
            return Err(source.error(
                raw.name.span(),
                field("name"),
                format!("{name:?} is taken: the redirector serves its stream index there"),
            ));
        }
        if raw.mounts.get_ref().is_empty() {
            return Err(source.error(
                raw.mounts.span(),
                field("mounts"),
                "a stream needs at least one mount",
            ));
        }
        let mut mounts: Vec<MountRef> = Vec::with_capacity(raw.mounts.get_ref().len());
        for (j, m) in raw.mounts.get_ref().iter().enumerate() {
            let mount = mount(source, m, &format!("stream[{i}].mounts[{j}]"), servers)?;
            let server = servers.iter().find(|s| s.name == mount.server);
            let limitless =
                server.is_some_and(|s| s.status == StatusSource::Json && s.max_listeners.is_none());
            if limitless && mount.max_listeners.is_none() {
                // /status-json.xsl reports listeners but no limits.
                return Err(source.error(
                    m.mount.span(),
                    format!("stream[{i}].mounts[{j}].max_listeners"),
                    format!(
                        "server {} is polled with status = \"json\", which reports no limits: give this \
                         mount max_listeners (a number or \"unlimited\"), or the server max_listeners",
                        mount.server
                    ),
                ));
            }
            if mounts
                .iter()
                .any(|other| other.server == mount.server && other.mount == mount.mount)
            {
                return Err(source.error(
                    m.mount.span(),
                    format!("stream[{i}].mounts[{j}].mount"),
                    format!("{} on {} is listed twice", mount.mount, mount.server),
                ));
            }
            mounts.push(mount);
        }
        let countries = country_rule(source, raw, i)?;
        let title = text(source, raw.title.as_ref(), &field("title"))?;
        let description = text(source, raw.description.as_ref(), &field("description"))?;
        streams.push(Stream {
            name,
            mounts,
            fallback: raw.fallback.as_ref().map(|f| f.get_ref().clone()),
            countries,
            title,
            description,
        });
    }
    check_fallbacks(source, &raw, &streams)?;
    Ok(streams)
}

/// A line of text for listeners: not empty, no control characters, at most
/// [`crate::MAX_TEXT_CHARS`].
fn text(
    source: &Source<'_>,
    value: Option<&Spanned<String>>,
    field: &str,
) -> Result<Option<String>, ConfigError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let text = value.get_ref().trim();
    let why = if text.is_empty() {
        Some("is empty: remove the key to use what Icecast reports".to_owned())
    } else if text.chars().any(char::is_control) {
        Some("holds a control character (a line break, a tab): write one line".to_owned())
    } else if text.chars().count() > crate::MAX_TEXT_CHARS {
        Some(format!(
            "is longer than {} characters",
            crate::MAX_TEXT_CHARS
        ))
    } else {
        None
    };
    match why {
        Some(why) => Err(source.error(value.span(), field, why)),
        None => Ok(Some(text.to_owned())),
    }
}

fn mount(
    source: &Source<'_>,
    raw: &RawMount,
    field: &str,
    servers: &[Server],
) -> Result<MountRef, ConfigError> {
    let server = raw.server.get_ref();
    if !servers.iter().any(|s| &s.name == server) {
        let known: Vec<&str> = servers.iter().map(|s| s.name.as_str()).collect();
        return Err(source.error(
            raw.server.span(),
            format!("{field}.server"),
            format!(
                "no [[server]] is named {server:?} (known: {})",
                known.join(", ")
            ),
        ));
    }
    let mount = raw.mount.get_ref();
    let valid = mount.starts_with('/')
        && mount.len() > 1
        && mount.len() <= 256
        && !mount
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || matches!(c, '?' | '#' | '\\'))
        && !mount.split('/').any(|segment| segment == "..");
    if !valid {
        return Err(source.error(
            raw.mount.span(),
            format!("{field}.mount"),
            format!("{mount:?} is not a mount: it must start with '/' and hold no spaces, '?', '#', '\\' or '..'"),
        ));
    }
    let max_listeners = match &raw.max_listeners {
        None => None,
        Some(limit) => Some(match limit.get_ref() {
            RawLimit::Number(n) if (1..=i64::from(u32::MAX)).contains(n) => {
                ListenerLimit::Listeners(u32::try_from(*n).unwrap_or(u32::MAX))
            }
            RawLimit::Word(w) if w == "unlimited" => ListenerLimit::Unlimited,
            other => {
                return Err(source.error(
                    limit.span(),
                    format!("{field}.max_listeners"),
                    format!("{other:?} is not a limit: write a positive number or \"unlimited\""),
                ));
            }
        }),
    };
    Ok(MountRef {
        server: server.clone(),
        mount: mount.clone(),
        max_listeners,
    })
}

fn country_code(
    source: &Source<'_>,
    value: &Spanned<String>,
    field: &str,
) -> Result<Code, ConfigError> {
    Code::new(value.get_ref()).ok_or_else(|| {
        source.error(
            value.span(),
            field,
            format!(
                "{:?} is not an ISO 3166-1 alpha-2 country code like \"AT\"",
                value.get_ref()
            ),
        )
    })
}

/// `allow_countries` or `deny_countries` (not both), each a list of country codes.
fn country_rule(
    source: &Source<'_>,
    raw: &RawStream,
    i: usize,
) -> Result<CountryRule, ConfigError> {
    let codes =
        |list: &Spanned<Vec<Spanned<String>>>, key: &str| -> Result<Vec<Code>, ConfigError> {
            list.get_ref()
                .iter()
                .enumerate()
                .map(|(j, c)| country_code(source, c, &format!("stream[{i}].{key}[{j}]")))
                .collect()
        };
    match (&raw.allow_countries, &raw.deny_countries) {
        (Some(_), Some(deny)) => Err(source.error(
            deny.span(),
            format!("stream[{i}].deny_countries"),
            "give allow_countries or deny_countries, not both",
        )),
        (Some(allow), None) if allow.get_ref().is_empty() => Err(source.error(
            allow.span(),
            format!("stream[{i}].allow_countries"),
            "an empty allow list would refuse every player; remove the key to allow everyone",
        )),
        (Some(allow), None) => Ok(CountryRule::Only(codes(allow, "allow_countries")?)),
        (None, Some(deny)) => Ok(CountryRule::Except(codes(deny, "deny_countries")?)),
        (None, None) => Ok(CountryRule::Anyone),
    }
}

/// Every fallback names another stream, and following fallbacks never comes back.
fn check_fallbacks(
    source: &Source<'_>,
    raw: &[RawStream],
    streams: &[Stream],
) -> Result<(), ConfigError> {
    let index: HashMap<&str, usize> = streams
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    for (i, stream) in streams.iter().enumerate() {
        let Some(fallback) = &raw[i].fallback else {
            continue;
        };
        let field = format!("stream[{i}].fallback");
        let Some(&next) = index.get(fallback.get_ref().as_str()) else {
            return Err(source.error(
                fallback.span(),
                field,
                format!("no [[stream]] is named {:?}", fallback.get_ref()),
            ));
        };
        let mut path = vec![stream.name.as_str()];
        let mut at = Some(next);
        while let Some(j) = at {
            path.push(streams[j].name.as_str());
            if j == i {
                return Err(source.error(
                    fallback.span(),
                    field,
                    format!("fallbacks form a cycle: {}", path.join(" -> ")),
                ));
            }
            if path.len() > streams.len() + 1 {
                break; // a cycle that does not include `i`; it is reported from its own members
            }
            at = streams[j]
                .fallback
                .as_deref()
                .and_then(|f| index.get(f).copied());
        }
    }
    Ok(())
}
