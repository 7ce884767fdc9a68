//! The `icecast-redirector` binary's config checking, as an operator runs it.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::process::{Command, Output};

const EXAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../deploy/examples/fleet.toml"
);

fn redirector(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_icecast-redirector"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run icecast-redirector")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_config_in_standalone_mode() {
    let out = redirector(&[
        "--check-config",
        "--fleet",
        EXAMPLE,
        "--listen",
        "127.0.0.1:8000",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.contains("standalone:") && stdout.contains("3 servers"),
        "{stdout}"
    );
}

#[test]
fn check_config_in_redis_mode() {
    let out = redirector(&[
        "--check-config",
        "--redis",
        "redis://127.0.0.1:6379/",
        "--trusted-proxy",
        "10.0.0.0/8",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout)
            .contains("redis mode; no --listen; admin 127.0.0.1:7071; 1 trusted proxies")
    );
}

#[test]
fn a_broken_fleet_exits_64_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("fleet.toml");
    std::fs::write(&broken, "[poller]\ninterval = \"0s\"\n").unwrap();
    let out = redirector(&["--check-config", broken.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:2:", broken.display())),
        "{stderr}"
    );
    assert!(stderr.contains("poller.interval"), "{stderr}");
}

#[test]
fn missing_mode_exits_64() {
    let out = redirector(&["--listen", "127.0.0.1:8000"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(text(&out.stderr).contains("--redis URL"));
}

#[test]
fn flags_out_of_range_are_refused_with_the_flag_named() {
    for (flag, value, says) in [
        ("--retry-after", "20-5", "must not exceed"),
        ("--retry-after", "0", "from 1 to 3600"),
        ("--retry-after", "soon", "from 1 to 3600"),
        ("--threads", "0", "--threads must be between 1 and 256"),
        ("--slot-lease", "10ms", "--slot-lease must be between"),
        (
            "--connect-grace",
            "30s",
            "--connect-grace must be at most 10s",
        ),
    ] {
        let out = redirector(&[
            "--check-config",
            "--fleet",
            EXAMPLE,
            "--listen",
            "127.0.0.1:8000",
            flag,
            value,
        ]);
        let stderr = text(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{flag} {value}: {stderr}");
        assert!(stderr.contains(says), "{flag} {value}: {stderr}");
    }
}
