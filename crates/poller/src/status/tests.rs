//! Table-driven parser tests: outputs captured from a real Icecast 2.4.4
//! (`fixtures/`), django-icecast-balancer's format, and garbage.

use super::json::repair;
use super::*;

const ADMIN_TWO: &str = include_str!("fixtures/admin-stats-two-sources.xml");
const ADMIN_ONE: &str = include_str!("fixtures/admin-stats-one-source.xml");
const ADMIN_NONE: &str = include_str!("fixtures/admin-stats-no-source.xml");
const JSON_TWO: &str = include_str!("fixtures/status-json-two-sources.json");
const JSON_ONE: &str = include_str!("fixtures/status-json-one-source.json");
const JSON_NONE: &str = include_str!("fixtures/status-json-no-source.json");
const JSON_INVALID: &str = include_str!("fixtures/status-json-invalid-numbers.json");
const LOAD_TWO: &str = include_str!("fixtures/load-two-sources.xml");
const LOAD_NONE: &str = include_str!("fixtures/load-no-source.xml");
const LOAD_DJANGO: &str = include_str!("fixtures/load-django.xml");

fn mount(
    mount: &str,
    listeners: Option<u32>,
    limit: ReportedLimit,
    free: Option<ReportedLimit>,
) -> MountReport {
    MountReport {
        mount: mount.into(),
        listeners,
        limit,
        free_slots: free,
        bytes_read: None,
        content_type: None,
        info: Default::default(),
    }
}

/// `m` as the fixtures' test-tone sources announce it: the media type
/// (`server_type`), genre "various" and, for Ogg, 32 kbit/s; Icecast's
/// "Unspecified name" placeholders are no name.
fn typed(m: MountReport) -> MountReport {
    let ogg = m.mount.ends_with(".ogg");
    MountReport {
        content_type: Some(if ogg { "application/ogg" } else { "audio/mpeg" }.into()),
        info: MountInfo {
            genre: Some("various".into()),
            bitrate_kbps: ogg.then_some(32),
            ..MountInfo::default()
        },
        ..m
    }
}

/// The fixtures whose MP3 source announced number-like text (name ".5",
/// genre "7."): kept as text, never turned into numbers.
fn number_like(m: MountReport) -> MountReport {
    let mut m = typed(m);
    m.info.name = Some(".5".into());
    m.info.genre = Some("7.".into());
    m
}

#[test]
fn admin_stats_from_a_real_server() {
    let report = parse_admin_stats(ADMIN_TWO).unwrap();
    // Fresh sources: Icecast had not yet counted their bytes (it does every 5 s).
    let fed = |m: MountReport| MountReport {
        bytes_read: Some(0),
        ..typed(m)
    };
    assert_eq!(
        report.mounts,
        [
            fed(mount("/hq.ogg", Some(1), ReportedLimit::Count(5), None)),
            MountReport {
                bytes_read: Some(0),
                ..number_like(mount("/lq.mp3", Some(1), ReportedLimit::Unlimited, None))
            },
        ]
    );
    // The fixture's global <listeners> says 1: Icecast's global count lags.
    assert!(ADMIN_TWO.contains("<listeners>1</listeners><location>"));
    assert_eq!(report.listeners, Some(2));
    assert!(report.skipped.is_empty());

    let one = parse_admin_stats(ADMIN_ONE).unwrap();
    assert_eq!(
        one.mounts,
        [fed(mount(
            "/hq.ogg",
            Some(0),
            ReportedLimit::Count(5),
            None
        ))]
    );
    let none = parse_admin_stats(ADMIN_NONE).unwrap();
    assert!(none.mounts.is_empty());
    assert_eq!(none.listeners, Some(0));
}

#[test]
fn status_json_in_every_shape_a_real_server_produces() {
    let two = parse_status_json(JSON_TWO).unwrap();
    assert_eq!(
        two.mounts,
        [
            typed(mount("/hq.ogg", Some(0), ReportedLimit::Unknown, None)),
            typed(mount("/lq.mp3", Some(0), ReportedLimit::Unknown, None)),
        ]
    );
    // One source: "source" is an object, not an array.
    assert_eq!(parse_status_json(JSON_ONE).unwrap().mounts.len(), 1);
    // No source: "source" is absent.
    let none = parse_status_json(JSON_NONE).unwrap();
    assert!(none.mounts.is_empty());
    assert_eq!(none.listeners, Some(0));
}

#[test]
fn status_json_with_number_like_metadata_is_repaired() {
    assert!(
        serde_json::from_str::<serde_json::Value>(JSON_INVALID).is_err(),
        "the fixture is invalid JSON"
    );
    let report = parse_status_json(JSON_INVALID).unwrap();
    assert_eq!(
        report.mounts,
        [
            typed(mount("/hq.ogg", Some(1), ReportedLimit::Unknown, None)),
            number_like(mount("/lq.mp3", Some(1), ReportedLimit::Unknown, None)),
        ]
    );
}

#[test]
fn load_xsl_ours_and_django_icecast_balancers() {
    let ours = parse_load_xsl(LOAD_TWO).unwrap();
    assert_eq!(
        ours.mounts,
        [
            mount(
                "/hq.ogg",
                Some(1),
                ReportedLimit::Count(5),
                Some(ReportedLimit::Count(4))
            ),
            mount(
                "/lq.mp3",
                Some(1),
                ReportedLimit::Unlimited,
                Some(ReportedLimit::Unlimited)
            ),
        ]
    );
    assert_eq!(ours.listeners, Some(2));
    assert!(parse_load_xsl(LOAD_NONE).unwrap().mounts.is_empty());

    let django = parse_load_xsl(LOAD_DJANGO).unwrap();
    assert_eq!(
        django.mounts,
        [
            mount(
                "/fm4-hq.ogg",
                None,
                ReportedLimit::Unknown,
                Some(ReportedLimit::Count(32))
            ),
            mount(
                "/fm4-lq.ogg",
                None,
                ReportedLimit::Unknown,
                Some(ReportedLimit::Unknown)
            ),
            mount(
                "/fm4-mq.ogg",
                None,
                ReportedLimit::Unknown,
                Some(ReportedLimit::Count(64))
            ),
        ]
    );
    assert_eq!(
        django.listeners, None,
        "the old format has no listener counts"
    );
}

#[test]
fn one_bad_mount_does_not_drop_the_others() {
    let admin = r#"<icestats><source mount="/a"><listeners>x</listeners></source>
        <source mount="/b"><listeners>2</listeners><max_listeners>NaN</max_listeners></source>
        <source><listeners>1</listeners></source>
        <source mount="/c"></source>
        <source mount="/d"><listeners>-1</listeners></source></icestats>"#;
    let report = parse_admin_stats(admin).unwrap();
    assert_eq!(
        report.mounts,
        [mount("/b", Some(2), ReportedLimit::Unknown, None)]
    );
    assert_eq!(report.skipped.len(), 4, "{:?}", report.skipped);
    assert!(report.skipped[0].contains("/a: listeners \"x\""));

    let json = r#"{"icestats":{"source":[{"listenurl":"http://h/a","listeners":"3"},{"listeners":1},
        {"listenurl":"http://h/b","listeners":-4},{"listenurl":"http://h","listeners":1},
        {"listenurl":"http://h/c","listeners":2.0}]}}"#;
    let report = parse_status_json(json).unwrap();
    assert_eq!(
        report
            .mounts
            .iter()
            .map(|m| m.mount.as_str())
            .collect::<Vec<_>>(),
        ["/a"]
    );
    assert_eq!(report.skipped.len(), 4, "{:?}", report.skipped);

    let load = r#"<load><mount name="/a">3</mount><mount>4</mount><mount name="/b" listeners="q">1</mount></load>"#;
    let report = parse_load_xsl(load).unwrap();
    assert_eq!(report.mounts.len(), 1);
    assert_eq!(report.skipped.len(), 2);
}

#[test]
fn garbage_is_an_error_never_a_panic() {
    let xml_garbage = [
        "",
        "not xml",
        "<icestats>",
        "<icestats></wrong>",
        "<icestats/><icestats/>",
        "<!DOCTYPE icestats [<!ENTITY e \"x\">]><icestats>&e;</icestats>",
        "<!DOCTYPE lolz [<!ENTITY lol \"lol\"><!ENTITY lol2 \"&lol;&lol;\">]><icestats>&lol2;</icestats>",
        "<icestats>&unknown;</icestats>",
        "<icestats><source mount=\"/a\" mount=\"/b\"/></icestats>",
        "\u{0}\u{1}\u{2}",
        "<html><body>404</body></html>",
    ];
    for body in xml_garbage {
        assert!(parse_admin_stats(body).is_err(), "admin accepted {body:?}");
        assert!(parse_load_xsl(body).is_err(), "load accepted {body:?}");
    }
    let deep = "<icestats>".to_owned() + &"<a>".repeat(100) + &"</a>".repeat(100) + "</icestats>";
    assert!(matches!(parse_admin_stats(&deep), Err(ParseError::Xml(_))));

    for body in [
        "",
        "{",
        "[]",
        "null",
        "{\"icestats\":5}",
        "{\"other\":{}}",
        "<icestats/>",
        "{\"icestats\":{\"source\":",
    ] {
        assert!(parse_status_json(body).is_err(), "json accepted {body:?}");
    }
    // A source that is not an object is skipped, not fatal.
    let odd = parse_status_json("{\"icestats\":{\"source\":[1,\"x\",null]}}").unwrap();
    assert!(odd.mounts.is_empty());
    assert_eq!(odd.skipped.len(), 3);
}

#[test]
fn entities_and_references_that_are_allowed() {
    let admin =
        r#"<icestats><source mount="/a&amp;b"><listeners>&#51;</listeners></source></icestats>"#;
    let report = parse_admin_stats(admin).unwrap();
    assert_eq!(
        report.mounts,
        [mount("/a&b", Some(3), ReportedLimit::Unknown, None)]
    );
}

#[test]
fn repair_quotes_only_what_is_not_json() {
    let cases = [
        (r#"{"a":7.,"b":.5}"#, r#"{"a":"7.","b":".5"}"#),
        (
            r#"{"a":NaN, "b":1e5, "c":true, "d":null, "e":-3}"#,
            r#"{"a":"NaN", "b":1e5, "c":true, "d":null, "e":-3}"#,
        ),
        ("{\"a\":\"x\u{1}y\"}", r#"{"a":"x\u0001y"}"#),
        (r#"{"a":"say \"7.\""}"#, r#"{"a":"say \"7.\""}"#),
        (JSON_TWO, JSON_TWO),
    ];
    for (input, want) in cases {
        assert_eq!(repair(input), want, "{input}");
    }
}

#[test]
fn counts_as_icecast_prints_them() {
    for (text, want) in [
        ("12", Some(12)),
        (" 7 ", Some(7)),
        ("3.0", Some(3)),
        ("-1", None),
        ("1.5", None),
        ("NaN", None),
        ("", None),
        ("99999999999", None),
    ] {
        assert_eq!(parse_count(text), want, "{text:?}");
    }
    assert_eq!(
        ReportedLimit::from_text("Unlimited"),
        ReportedLimit::Unlimited
    );
    assert_eq!(ReportedLimit::from_text("NaN"), ReportedLimit::Unknown);
}

#[test]
fn a_byte_count_that_is_not_a_number_is_ignored_not_fatal() {
    let odd = ADMIN_ONE.replace(
        "<total_bytes_read>0</total_bytes_read>",
        "<total_bytes_read>lots</total_bytes_read>",
    );
    assert_ne!(odd, ADMIN_ONE, "the fixture has the field");
    let report = parse_admin_stats(&odd).unwrap();
    // The mount is still reported; without a count it can never look stalled.
    assert_eq!(
        report.mounts,
        [typed(mount(
            "/hq.ogg",
            Some(0),
            ReportedLimit::Count(5),
            None
        ))]
    );
}

#[test]
fn announced_text_is_one_clean_bounded_line() {
    assert_eq!(info_text("  Radio FM4  "), Some("Radio FM4".to_owned()));
    assert_eq!(info_text("Unspecified name"), None);
    assert_eq!(info_text(" \t "), None);
    assert_eq!(info_text("a\r\nb\u{7}c"), Some("abc".to_owned()));
    assert_eq!(
        info_text(&"x".repeat(5000)).map(|t| t.len()),
        Some(MAX_INFO_CHARS)
    );
    // Markup stays as it is: it is escaped where it is shown.
    assert_eq!(
        info_text("<script>alert(1)</script>"),
        Some("<script>alert(1)</script>".to_owned())
    );
    let odd = ADMIN_ONE.replace(
        "<genre>various</genre>",
        "<genre>various</genre><artist>Bilderbuch</artist><title>Maschin</title>",
    );
    let report = parse_admin_stats(&odd).unwrap();
    assert_eq!(
        report.mounts[0].info.title.as_deref(),
        Some("Bilderbuch - Maschin")
    );
}
