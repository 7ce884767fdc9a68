//! `--help` texts under snapshot: a change to them is a visible, reviewed change.
//! `UPDATE_SNAPSHOTS=1 cargo test -p balancerctl --test help` rewrites them.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::Path;
use std::process::Command;

fn check(args: &[&str], snapshot: &str) {
    let output = Command::new(env!("CARGO_BIN_EXE_balancerctl"))
        .args(args)
        .env_remove("ICB_ADMIN")
        .env_remove("ICB_TOKEN")
        .env_remove("ICB_JSON")
        .env("COLUMNS", "100")
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(snapshot);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(
        text, want,
        "{snapshot} changed: review, then UPDATE_SNAPSHOTS=1 cargo test -p balancerctl --test help"
    );
}

#[test]
fn help_texts() {
    check(&["--help"], "help.txt");
    check(&["explain", "--help"], "explain-help.txt");
    check(&["drain", "--help"], "drain-help.txt");
}

#[test]
fn completions_are_generated() {
    for shell in ["bash", "zsh", "fish"] {
        let output = Command::new(env!("CARGO_BIN_EXE_balancerctl"))
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(output.status.success(), "{shell}");
        assert!(
            String::from_utf8_lossy(&output.stdout).contains("balancerctl"),
            "{shell}"
        );
    }
}
