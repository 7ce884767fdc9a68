//! Fails when the checked-in generated code differs from what `proto/` generates.
//!
//! `cargo xtask codegen` runs this test with `UPDATE_GENERATED=1`, which writes
//! the fresh code into `src/generated/` instead of comparing.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::fs;
use std::path::{Path, PathBuf};

use prost::Message as _;

const PROTOS: &[&str] = &[
    "icecast_balancer/snapshot/v1/snapshot.proto",
    "icecast_balancer/control/v1/control.proto",
];

#[test]
fn generated_code_is_fresh() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let checked_in = crate_dir.join("src/generated");
    let fresh = tempfile::tempdir().expect("temp dir");
    generate(&crate_dir.join("proto"), fresh.path());

    if std::env::var_os("UPDATE_GENERATED").is_some() {
        fs::create_dir_all(&checked_in).expect("create src/generated");
        for file in files(&checked_in) {
            fs::remove_file(checked_in.join(file)).expect("remove stale file");
        }
        for file in files(fresh.path()) {
            fs::copy(fresh.path().join(&file), checked_in.join(&file))
                .expect("copy generated file");
        }
        return;
    }

    let stale = differences(fresh.path(), &checked_in);
    assert!(
        stale.is_empty(),
        "src/generated/ is stale ({}): run `cargo xtask codegen` and commit the result",
        stale.join(", ")
    );
}

/// The drift check itself must notice a changed, missing or extra file.
#[test]
fn drift_check_notices_stale_code() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fresh = tempfile::tempdir().expect("temp dir");
    generate(&crate_dir.join("proto"), fresh.path());
    let stale = tempfile::tempdir().expect("temp dir");
    for file in files(fresh.path()) {
        fs::copy(fresh.path().join(&file), stale.path().join(&file)).expect("copy");
    }
    assert!(differences(fresh.path(), stale.path()).is_empty());

    let snapshot = stale.path().join("icecast_balancer.snapshot.v1.rs");
    let mut text = fs::read_to_string(&snapshot).expect("read");
    text.push_str("// edited by hand\n");
    fs::write(&snapshot, text).expect("write");
    fs::write(stale.path().join("leftover.rs"), "").expect("write");
    fs::remove_file(stale.path().join("descriptor.bin")).expect("remove");
    assert_eq!(
        differences(fresh.path(), stale.path()),
        [
            "descriptor.bin (missing)",
            "icecast_balancer.snapshot.v1.rs (differs)",
            "leftover.rs (not generated)"
        ]
    );
}

/// Files of `checked_in` that differ from, lack or add to those of `fresh`.
fn differences(fresh: &Path, checked_in: &Path) -> Vec<String> {
    let (want, have) = (files(fresh), files(checked_in));
    let mut out = Vec::new();
    for file in &want {
        if !have.contains(file) {
            out.push(format!("{file} (missing)"));
        } else if fs::read(fresh.join(file)).ok() != fs::read(checked_in.join(file)).ok() {
            out.push(format!("{file} (differs)"));
        }
    }
    out.extend(
        have.iter()
            .filter(|f| !want.contains(f))
            .map(|f| format!("{f} (not generated)")),
    );
    out.sort();
    out
}

fn generate(proto_dir: &Path, out: &Path) {
    let fds = protox::compile(PROTOS, [proto_dir]).expect("compile protos");
    // The descriptor for server reflection, without comments and source positions.
    let mut bare = fds.clone();
    for file in &mut bare.file {
        file.source_code_info = None;
    }
    fs::write(out.join("descriptor.bin"), bare.encode_to_vec()).expect("write descriptor");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .out_dir(out)
        .compile_fds(fds)
        .expect("generate Rust code");
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.expect("dir entry").path())
                .filter(|p: &PathBuf| p.is_file())
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}
