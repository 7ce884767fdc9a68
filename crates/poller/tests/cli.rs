//! The `icecast-poller` binary's config checking, as an operator runs it.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::Path;
use std::process::{Command, Output};

const EXAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../deploy/examples/fleet.toml"
);

fn poller(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_icecast-poller"));
    command.args(args).env_remove("RUST_LOG");
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("run icecast-poller")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_config_accepts_the_example() {
    let out = poller(&["--check-config", EXAMPLE], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "one-line summary: {stdout}");
    assert!(
        stdout.contains("ok: 3 servers, 2 streams, 5 mounts, poll every 2s (timeout 1500ms)"),
        "{stdout}"
    );
}

#[test]
fn check_config_through_the_environment() {
    let out = poller(&["--check-config"], &[("ICB_CONFIG", EXAMPLE)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn a_broken_copy_exits_64_naming_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("fleet.toml");
    let example = std::fs::read_to_string(EXAMPLE).unwrap();
    let text_with_typo = example.replacen(
        "url = \"http://127.0.0.1:8002\"",
        "url = \"ftp://127.0.0.1:8002\"",
        1,
    );
    assert_ne!(example, text_with_typo, "the example has the line to break");
    std::fs::write(&broken, &text_with_typo).unwrap();
    let line = text_with_typo
        .lines()
        .position(|l| l.contains("ftp://"))
        .unwrap()
        + 1;

    let out = poller(&["--check-config", broken.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(64));
    let stderr = text(&out.stderr);
    let expected = format!("{}:{line}:", broken.display());
    assert!(
        stderr.contains(&expected),
        "expected {expected} in {stderr}"
    );
    assert!(stderr.contains("server[1].url"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn a_missing_file_or_secret_exits_64() {
    let out = poller(&["--check-config", "/nonexistent/fleet.toml"], &[]);
    assert_eq!(out.status.code(), Some(64));
    assert!(text(&out.stderr).contains("/nonexistent/fleet.toml: cannot read"));

    let dir = tempfile::tempdir().unwrap();
    let fleet = dir.path().join("fleet.toml");
    let example = std::fs::read_to_string(EXAMPLE).unwrap();
    std::fs::write(
        &fleet,
        example.replacen(
            "admin_password = \"hackme\"",
            "admin_password_env = \"ICB_TEST_PASS\"",
            1,
        ),
    )
    .unwrap();
    let out = poller(&["--check-config", fleet.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("ICB_TEST_PASS is not set"));
    // A secret no temporary path can contain by chance.
    let secret = "s3cret-Q9-pass";
    let out = poller(
        &["--check-config", fleet.to_str().unwrap()],
        &[("ICB_TEST_PASS", secret)],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let printed = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(!printed.contains(secret), "{printed}");
}

#[test]
fn bad_flags_are_refused() {
    let out = poller(&["--config", EXAMPLE, "--redis", "http://127.0.0.1/"], &[]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("use redis://, rediss:// or redis+sentinel://"),
        "{}",
        text(&out.stderr)
    );
    let out = poller(&["--config", EXAMPLE], &[]);
    assert_eq!(out.status.code(), Some(64));
    assert!(text(&out.stderr).contains("--redis URL is required"));
    assert!(Path::new(EXAMPLE).exists());
}
