//! `balancerctl` against an address where nothing listens: a clear error, exit 69.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::net::TcpListener;
use std::process::Command;

#[test]
fn unreachable_admin_exits_69_naming_the_address() {
    // A port that was just free: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let admin = format!("127.0.0.1:{port}");
    let out = Command::new(env!("CARGO_BIN_EXE_balancerctl"))
        .args(["--admin", &admin, "--token", "sekrit", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot reach the admin API at {admin}")),
        "{stderr}"
    );
    assert!(
        !stderr.contains("sekrit"),
        "the token must not be echoed: {stderr}"
    );
}

#[test]
fn usage_errors_are_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_balancerctl"))
        .args(["drain"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("<SERVER>"));
}
