//! Table-driven tests of parsing and validation, including garbage.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use crate::{ConfigError, ListenerLimit, StatusSource, parse};

const VALID: &str = r#"
[poller]
interval = "5s"
timeout = "2s"

[[server]]
name = "a"
url = "http://10.0.0.1:8000/"
public_url = "https://a.example/radio/"
admin_user = "admin"
admin_password_env = "A_PASS"
location = { lat = 48.2, lon = 16.4 }
country = "at"

[[server]]
name = "b"
url = "http://10.0.0.2"
status = "json"

[[stream]]
name = "hq"
mounts = [{ server = "a", mount = "/hq.ogg" }, { server = "b", mount = "/hq.ogg", max_listeners = 50 }]
fallback = "lq"
deny_countries = ["US"]

[[stream]]
name = "lq"
mounts = [{ server = "b", mount = "/lq.mp3", max_listeners = "unlimited" }]
"#;

fn env(name: &str) -> Option<String> {
    HashMap::from([("A_PASS", "s3cret")])
        .get(name)
        .map(|v| (*v).to_owned())
}

fn check(text: &str) -> Result<crate::Fleet, ConfigError> {
    parse(text, Path::new("fleet.toml"), &env)
}

#[test]
fn valid_file_resolves_everything() {
    let fleet = check(VALID).expect("valid");
    assert_eq!(fleet.poller.interval, Duration::from_secs(5));
    assert_eq!(fleet.poller.timeout, Duration::from_secs(2));
    assert_eq!((fleet.poller.rise, fleet.poller.fall), (2, 3));
    assert_eq!(fleet.poller.stall_after, Duration::from_secs(15));
    let a = fleet.server("a").expect("a");
    assert_eq!(a.url.as_str(), "http://10.0.0.1:8000/");
    assert_eq!(a.public_url.as_str(), "https://a.example/radio");
    assert_eq!(a.status, StatusSource::Admin);
    assert_eq!(a.admin.as_ref().expect("creds").password.expose(), "s3cret");
    assert_eq!(a.weight, 100);
    assert_eq!(a.country.map(|c| c.to_string()).as_deref(), Some("AT"));
    assert_eq!(fleet.server("b").expect("b").country, None);
    let b = fleet.server("b").expect("b");
    assert_eq!(b.public_url, b.url);
    assert_eq!(b.status, StatusSource::Json);
    let hq = fleet.stream("hq").expect("hq");
    assert_eq!(hq.fallback.as_deref(), Some("lq"));
    assert_eq!(
        hq.countries,
        crate::CountryRule::Except(vec![crate::Code::new("US").expect("code")])
    );
    assert_eq!(
        hq.mounts[1].max_listeners,
        Some(ListenerLimit::Listeners(50))
    );
    let lq = fleet.stream("lq").expect("lq");
    assert_eq!(lq.mounts[0].max_listeners, Some(ListenerLimit::Unlimited));
    assert_eq!(
        fleet.summary(),
        "2 servers, 2 streams, 3 mounts, poll every 5s (timeout 2s)"
    );
}

#[test]
fn public_urls_headroom_canary_and_tls() {
    let text = VALID
        .replace(
            "url = \"http://10.0.0.2\"",
            "url = \"https://10.0.0.2\"\npublic_url = [\"https://b.example\", \"http://b.example:8000\"]\ncross_scheme = false\nheadroom = \"10%\"\ncanary = false",
        )
        .replace("timeout = \"2s\"", "timeout = \"2s\"\ncanary_interval = \"off\"");
    let fleet = check(&text).expect("valid");
    assert_eq!(fleet.poller.canary_interval, None);
    let b = fleet.server("b").expect("b");
    assert_eq!(b.url.scheme(), "https", "https polling is accepted");
    assert_eq!(
        b.public_url.as_str(),
        "https://b.example/",
        "the first listed"
    );
    assert_eq!(
        b.public_urls.http.as_ref().map(|u| u.as_str()),
        Some("http://b.example:8000/")
    );
    assert_eq!(
        b.public_urls.https.as_ref().map(|u| u.as_str()),
        Some("https://b.example/")
    );
    assert!(!b.cross_scheme && !b.canary);
    assert_eq!(b.headroom, crate::Headroom::Percent(10));
    assert_eq!(b.headroom.slots(Some(95)), 10, "rounded up");
    assert_eq!(b.headroom.slots(None), 0);
    // The defaults: one public URL per server, crossing allowed, canaries every 30 s.
    let fleet = check(VALID).expect("valid");
    let a = fleet.server("a").expect("a");
    assert_eq!(a.public_urls.http, None);
    assert!(a.cross_scheme && a.canary);
    assert_eq!(a.headroom, crate::Headroom::None);
    assert_eq!(fleet.poller.canary_interval, Some(Duration::from_secs(30)));
    assert_eq!(crate::Headroom::Slots(500).slots(Some(200)), 200);
}

#[test]
fn ca_file_is_read_relative_to_the_fleet_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("ca.pem"),
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    std::fs::write(dir.path().join("junk.pem"), "not a certificate").expect("write");
    let with = |file: &str| {
        VALID.replace(
            "timeout = \"2s\"",
            &format!("timeout = \"2s\"\nca_file = \"{file}\""),
        )
    };
    let fleet = parse(&with("ca.pem"), &dir.path().join("fleet.toml"), &env).expect("valid");
    let ca = fleet.poller.ca.expect("ca");
    assert_eq!(ca.path, dir.path().join("ca.pem"));
    let error = parse(&with("junk.pem"), &dir.path().join("fleet.toml"), &env).expect_err("junk");
    assert_eq!(error.field(), Some("poller.ca_file"));
    assert!(
        error.to_string().contains("holds no PEM certificate"),
        "{error}"
    );
}

#[test]
fn secrets_never_print() {
    let fleet = check(VALID).expect("valid");
    let shown = format!("{fleet:?}");
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(shown.contains("***"));
}

#[test]
fn the_example_in_deploy_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples/fleet.toml");
    let fleet = crate::load(&path, &env).expect("deploy/examples/fleet.toml must be valid");
    assert_eq!(fleet.servers.len(), 3);
}

/// Each case replaces one line of VALID and expects an error at that line naming the field.
#[test]
fn mistakes_name_line_and_field() {
    let cases: &[(&str, &str, &str, &str)] = &[
        // (line to replace, replacement, field, part of the message)
        (
            "interval = \"5s\"",
            "interval = \"0s\"",
            "poller.interval",
            "greater than zero",
        ),
        (
            "interval = \"5s\"",
            "interval = \"soon\"",
            "poller.interval",
            "not a duration",
        ),
        (
            "interval = \"5s\"",
            "interval = 5",
            "poller.interval",
            "invalid type",
        ),
        (
            "timeout = \"2s\"",
            "timeout = \"9s\"",
            "poller.timeout",
            "longer than the interval",
        ),
        (
            "timeout = \"2s\"",
            "tiemout = \"2s\"",
            "poller.tiemout",
            "unknown field",
        ),
        (
            "timeout = \"2s\"",
            "stall_after = \"5s\"\ntimeout = \"2s\"",
            "poller.stall_after",
            "Icecast updates total_bytes_read about every 5 s",
        ),
        (
            "name = \"b\"",
            "name = \"a\"",
            "server[1].name",
            "duplicate server name \"a\" (first defined on line 7)",
        ),
        (
            "name = \"b\"",
            "name = \"b c\"",
            "server[1].name",
            "not a valid name",
        ),
        (
            "name = \"lq\"",
            "name = \"streams.json\"",
            "stream[1].name",
            "is taken",
        ),
        (
            "name = \"lq\"",
            "title = \"\"\nname = \"lq\"",
            "stream[1].title",
            "is empty",
        ),
        (
            "status = \"json\"",
            "public_url = [\"http://b\", \"http://c\"]\nstatus = \"json\"",
            "server[1].public_url[1]",
            "a second http URL",
        ),
        (
            "status = \"json\"",
            "public_url = [\"http://b\", \"gopher://c\"]\nstatus = \"json\"",
            "server[1].public_url[1]",
            "use http or https",
        ),
        (
            "status = \"json\"",
            "public_url = []\nstatus = \"json\"",
            "server[1].public_url",
            "the list is empty",
        ),
        (
            "status = \"json\"",
            "headroom = \"100%\"\nstatus = \"json\"",
            "server[1].headroom",
            "from 1% to 99%",
        ),
        (
            "status = \"json\"",
            "headroom = -3\nstatus = \"json\"",
            "server[1].headroom",
            "not a headroom",
        ),
        (
            "timeout = \"2s\"",
            "canary_interval = \"never\"\ntimeout = \"2s\"",
            "poller.canary_interval",
            "not a duration",
        ),
        (
            "timeout = \"2s\"",
            "ca_file = \"no-such-ca.pem\"\ntimeout = \"2s\"",
            "poller.ca_file",
            "cannot read",
        ),
        (
            "url = \"http://10.0.0.2\"",
            "url = \"ftp://10.0.0.2\"",
            "server[1].url",
            "use http or https",
        ),
        (
            "url = \"http://10.0.0.2\"",
            "url = \"10.0.0.2:8000\"",
            "server[1].url",
            "not a URL",
        ),
        (
            "url = \"http://10.0.0.2\"",
            "url = \"localhost:8000\"",
            "server[1].url",
            "scheme \"localhost\" is not allowed",
        ),
        (
            "url = \"http://10.0.0.2\"",
            "url = \"http://u:p@10.0.0.2\"",
            "server[1].url",
            "credentials",
        ),
        (
            "url = \"http://10.0.0.2\"",
            "url = \"http://10.0.0.2/?x\"",
            "server[1].url",
            "query",
        ),
        (
            "url = \"http://10.0.0.2\"",
            "url = \"not a url\"",
            "server[1].url",
            "not a URL",
        ),
        (
            "status = \"json\"",
            "status = \"xml\"",
            "server[1].status",
            "unknown variant",
        ),
        (
            "status = \"json\"",
            "status = \"admin\"",
            "server[1].status",
            "needs admin_user",
        ),
        (
            "admin_password_env = \"A_PASS\"",
            "admin_password_env = \"NOPE\"",
            "server[0].admin_password_env",
            "NOPE is not set",
        ),
        (
            "location = { lat = 48.2, lon = 16.4 }",
            "location = { lat = 148.2, lon = 16.4 }",
            "server[0].location",
            "latitude",
        ),
        (
            "location = { lat = 48.2, lon = 16.4 }",
            "weight = 0",
            "server[0].weight",
            "outside 1..=1000",
        ),
        (
            "location = { lat = 48.2, lon = 16.4 }",
            "max_listeners = 0",
            "server[0].max_listeners",
            "at least 1",
        ),
        (
            "location = { lat = 48.2, lon = 16.4 }",
            "max_listeners = -5",
            "server[0].max_listeners",
            "invalid value",
        ),
        (
            "name = \"lq\"",
            "name = \"hq\"",
            "stream[1].name",
            "duplicate stream name",
        ),
        (
            "name = \"lq\"",
            "name = \"lq.m3u\"",
            "stream[1].name",
            "playlist",
        ),
        (
            "fallback = \"lq\"",
            "fallback = \"nope\"",
            "stream[0].fallback",
            "no [[stream]] is named \"nope\"",
        ),
        (
            "fallback = \"lq\"",
            "fallback = \"hq\"",
            "stream[0].fallback",
            "cycle: hq -> hq",
        ),
        (
            "mounts = [{ server = \"b\", mount = \"/lq.mp3\", max_listeners = \"unlimited\" }]",
            "mounts = [{ server = \"c\", mount = \"/lq.mp3\" }]",
            "stream[1].mounts[0].server",
            "no [[server]] is named \"c\" (known: a, b)",
        ),
        (
            "mounts = [{ server = \"b\", mount = \"/lq.mp3\", max_listeners = \"unlimited\" }]",
            "mounts = [{ server = \"b\", mount = \"lq.mp3\" }]",
            "stream[1].mounts[0].mount",
            "must start with '/'",
        ),
        (
            "mounts = [{ server = \"b\", mount = \"/lq.mp3\", max_listeners = \"unlimited\" }]",
            "mounts = [{ server = \"b\", mount = \"/../x\" }]",
            "stream[1].mounts[0].mount",
            "'..'",
        ),
        (
            "mounts = [{ server = \"b\", mount = \"/lq.mp3\", max_listeners = \"unlimited\" }]",
            "mounts = [{ server = \"b\", mount = \"/lq.mp3\", max_listeners = \"NaN\" }]",
            "stream[1].mounts[0].max_listeners",
            "not a limit",
        ),
        (
            "mounts = [{ server = \"b\", mount = \"/lq.mp3\", max_listeners = \"unlimited\" }]",
            "mounts = [{ server = \"b\", mount = \"/lq.mp3\", max_listeners = 5 }, { server = \"b\", mount = \"/lq.mp3\", max_listeners = 5 }]",
            "stream[1].mounts[1].mount",
            "listed twice",
        ),
        (
            "mounts = [{ server = \"b\", mount = \"/lq.mp3\", max_listeners = \"unlimited\" }]",
            "mounts = []",
            "stream[1].mounts",
            "at least one mount",
        ),
        (
            "mounts = [{ server = \"b\", mount = \"/lq.mp3\", max_listeners = \"unlimited\" }]",
            "mounts = [{ server = \"b\", mount = \"/lq.mp3\" }]",
            "stream[1].mounts[0].max_listeners",
            "reports no limits",
        ),
        (
            "country = \"at\"",
            "country = \"AUT\"",
            "server[0].country",
            "not an ISO 3166-1",
        ),
        (
            "deny_countries = [\"US\"]",
            "deny_countries = [\"US\", \"U5\"]",
            "stream[0].deny_countries[1]",
            "not an ISO",
        ),
        (
            "deny_countries = [\"US\"]",
            "deny_countries = [\"US\"]\nallow_countries = [\"AT\"]",
            "stream[0].deny_countries",
            "not both",
        ),
        (
            "deny_countries = [\"US\"]",
            "allow_countries = []",
            "stream[0].allow_countries",
            "refuse every player",
        ),
        ("[poller]", "[poller", "(syntax)", "expected"),
    ];
    for (old, new, field, message) in cases {
        let line = VALID
            .lines()
            .position(|l| l == *old)
            .expect("case line exists")
            + 1;
        let text = VALID.replacen(old, new, 1);
        let err = check(&text).expect_err(&format!("{new:?} must be refused"));
        let shown = err.to_string();
        assert_eq!(err.field(), Some(*field), "{new:?}: {shown}");
        assert_eq!(err.line(), Some(line), "{new:?}: {shown}");
        assert!(shown.starts_with(&format!("fleet.toml:{line}:")), "{shown}");
        assert!(
            shown.contains(message),
            "{new:?}: expected {message:?} in {shown}"
        );
    }
}

#[test]
fn garbage_is_refused_without_panicking() {
    let inputs = [
        "",
        "\0\0\0",
        "[[server]]",
        "server = 5",
        "[[stream]]\nname = 1",
        &"[".repeat(10_000),
        "\u{feff}[poller]\ninterval = \"\u{1F600}\"",
    ];
    for input in inputs {
        let err = check(input).expect_err("garbage must be refused");
        assert!(err.to_string().starts_with("fleet.toml:"), "{err}");
    }
}

#[test]
fn missing_file_names_the_file() {
    let err = crate::load(Path::new("/nonexistent/fleet.toml"), &env).expect_err("no file");
    assert!(
        err.to_string()
            .starts_with("/nonexistent/fleet.toml: cannot read"),
        "{err}"
    );
}

#[test]
fn longer_fallback_cycles_are_found() {
    let text = VALID.replace(
        "mounts = [{ server = \"b\", mount = \"/lq.mp3\", max_listeners = \"unlimited\" }]",
        "mounts = [{ server = \"b\", mount = \"/lq.mp3\", max_listeners = 5 }]\nfallback = \"hq\"",
    );
    let err = check(&text).expect_err("cycle");
    assert_eq!(err.field(), Some("stream[0].fallback"));
    assert!(
        err.to_string()
            .contains("fallbacks form a cycle: hq -> lq -> hq"),
        "{err}"
    );
}
