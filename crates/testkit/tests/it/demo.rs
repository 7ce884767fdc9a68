//! `icecast-demo` (what `cargo xtask demo` runs): it comes up, plays, and
//! Ctrl-C leaves nothing running.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use balancer_testkit::browser::Browser;
use balancer_testkit::{Player, process_exists, wait_until};

/// Every process below `root`, found through the parent ids in /proc.
fn descendants(root: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| {
            let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The command name is in parentheses and may hold spaces.
            let after = &stat[stat.rfind(')')? + 2..];
            let ppid = after.split(' ').nth(1)?.parse().ok()?;
            Some((pid, ppid))
        })
        .collect();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(c, _)| *c),
        );
        i += 1;
    }
    found.remove(0);
    found
}

#[tokio::test]
async fn demo_plays_and_ctrl_c_leaves_nothing_running() {
    // 3 icecast2 + 6 ffmpeg sources + redis + poller + 2 redirectors.
    run_demo(
        &[],
        &["icecast vienna", "redis ", "poller ", "redirector-2 "],
        13,
    )
    .await;
}

#[tokio::test]
async fn the_standalone_demo_plays_without_redis_and_leaves_nothing_running() {
    // 3 icecast2 + 6 ffmpeg sources + one redirector polling in-process.
    let printed = run_demo(&["--standalone"], &["icecast berlin", "redirector "], 10).await;
    assert!(!printed.contains("redis://"), "{printed}");
}

/// The stream index and the console the demo printed show the demo's fleet,
/// in a real browser too; screenshots go to `target/tmp/screenshots`.
async fn show_the_pages(printed: &str, name: &str) {
    let url_on = |label: &str| {
        printed
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .and_then(|l| l.split_whitespace().find(|w| w.starts_with("http://")))
            .unwrap_or_else(|| panic!("no {label} URL in:\n{printed}"))
            .to_owned()
    };
    let (index, console) = (url_on("stream index"), url_on("console"));
    let text = |url: String| async move {
        let response = balancer_testkit::http_get(url).await.unwrap();
        assert_eq!(response.status(), 200);
        response.text().await.unwrap()
    };
    let page = text(index.clone()).await;
    assert!(
        page.contains("href=\"/demo\"") && page.contains("href=\"/demo-mp3\""),
        "{page}"
    );
    let api = console.replace("/console", "/console/api/servers");
    let servers = text(api).await;
    for server in ["vienna", "graz", "berlin"] {
        assert!(
            servers.contains(&format!("\"name\":\"{server}\"")),
            "{servers}"
        );
    }

    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    let browser = Browser::start().await;
    browser.goto(&index).await;
    browser
        .screenshot(&shots.join(format!("{name}-index.png")))
        .await;
    browser.resize(1100, 1000).await;
    browser.goto(&console).await;
    wait_until(
        "the demo's fleet in the console",
        Duration::from_secs(20),
        || async {
            let rows = browser
                .run("return document.querySelectorAll('#fleet-table tr.server').length;")
                .await;
            (rows == 3).then_some(())
        },
    )
    .await;
    browser
        .screenshot(&shots.join(format!("{name}-console.png")))
        .await;
}

/// Runs the demo with `args` until it is ready, checks what it printed and
/// that its URL plays, then sends Ctrl-C and checks that the `processes` it
/// started are all gone. Returns what it printed.
async fn run_demo(args: &[&str], expected: &[&str], processes: usize) -> String {
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_icecast-demo"));
    let bin_dir = binary.parent().unwrap();
    let mut demo = Command::new(binary)
        .arg("--bin-dir")
        .arg(bin_dir)
        .arg("--any-ports")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = demo.id();
    // Read what it prints on a thread; the lines arrive once it is ready.
    let stdout = demo.stdout.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut printed = Vec::new();
    while !printed.iter().any(|l: &String| l.contains("Ctrl-C")) {
        match lines_rx.recv_timeout(Duration::from_secs(90)) {
            Ok(line) => printed.push(line),
            Err(e) => panic!("the demo never became ready ({e}); printed: {printed:#?}"),
        }
    }
    let text = printed.join("\n");
    for expected in expected.iter().chain(&["status", "/metrics"]) {
        assert!(text.contains(expected), "no {expected:?} in:\n{text}");
    }
    // The printed listen URL plays through the balancer.
    let url = text
        .split_whitespace()
        .find(|w| w.starts_with("http://") && w.ends_with("/demo"))
        .unwrap_or_else(|| panic!("no listen URL in:\n{text}"));
    let outcome = Player::play(url).await.unwrap();
    assert!(outcome.played(), "{outcome:?}");
    let name = if args.contains(&"--standalone") {
        "demo-standalone"
    } else {
        "demo"
    };
    show_the_pages(&text, name).await;

    let started = descendants(pid);
    assert!(
        started.len() >= processes,
        "only {} processes: {started:?}",
        started.len()
    );
    #[allow(unsafe_code)]
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is our child.
    unsafe {
        libc::kill(i32::try_from(pid).unwrap(), libc::SIGINT);
    }
    let status = tokio::task::spawn_blocking(move || demo.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "the demo exited with {status}");
    wait_until(
        "every process the demo started to end after Ctrl-C",
        Duration::from_secs(5),
        || std::future::ready(started.iter().all(|p| !process_exists(*p)).then_some(())),
    )
    .await;
    println!(
        "demo {args:?}: {} processes started, all gone after Ctrl-C",
        started.len()
    );
    text
}
