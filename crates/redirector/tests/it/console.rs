//! The operator console in a real headless Chromium, against a real poller,
//! real icecast2 servers and a real redirector on one Redis: the fleet table
//! shows each server's real state, a confirmed click on Drain moves the
//! redirects away within a second, Explain answers as `balancerctl explain`,
//! and with a token nothing is shown or done without it. Screenshots of each
//! page go to `target/tmp/screenshots`.

use std::path::PathBuf;
use std::time::Instant;

use balancer_testkit::browser::Browser;
use balancer_testkit::{
    IcecastServer, IcecastSpec, MountSpec, Player, RedisServer, free_port, wait_until,
};
use serde_json::Value;

use crate::control::ctl;
use crate::support::*;

fn screenshots() -> PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots")
}

/// Polls `script` in the page until it returns something other than null.
async fn wait_in_page(browser: &Browser, what: &str, script: &str) -> Value {
    wait_until(what, PATIENCE, || async {
        let value = browser.run(script).await;
        (!value.is_null()).then_some(value)
    })
    .await
}

/// Clicks `selector` without waiting (the click opens a confirm dialog, which
/// would block the script), then accepts the dialog; returns its text.
async fn click_and_confirm(browser: &Browser, selector: &str) -> String {
    let script = format!(
        "const b = document.querySelector({selector:?}); if (!b) return false; \
         setTimeout(() => b.click(), 0); return true;"
    );
    assert_eq!(browser.run(&script).await, true, "no {selector} to click");
    let question = wait_until("the confirm dialog", PATIENCE, || async {
        browser.alert_text().await
    })
    .await;
    browser.accept_alert().await;
    question
}

const FLEET_ROWS: &str = "const rows = [...document.querySelectorAll('#fleet-table tr.server')]; \
     if (rows.length < 3) return null; \
     return Object.fromEntries(rows.map(r => [r.dataset.server, \
       { state: r.querySelector('.state').innerText, bad: r.classList.contains('bad'), \
         warn: r.classList.contains('warn') }]));";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_the_fleet_and_a_confirmed_drain_moves_players_within_a_second() {
    let spec = || {
        IcecastSpec::new([
            MountSpec::ogg("/s.ogg").max_listeners(500),
            MountSpec::ogg("/q.ogg").without_source(),
        ])
    };
    let (redis, servers) = tokio::join!(
        RedisServer::start(),
        IcecastServer::start_many([spec(), spec()])
    );
    // "gone" points at a port nobody listens on: down.
    let fleet = format!(
        "{POLLER_TABLE}audience_interval = \"300ms\"\n{}{}[[server]]\nname = \"gone\"\nstatus = \"json\"\nurl = \"http://127.0.0.1:{}\"\n\
         [[stream]]\nname = \"s\"\nmounts = [{{ server = \"one\", mount = \"/s.ogg\" }}, \
         {{ server = \"two\", mount = \"/s.ogg\" }}, {{ server = \"gone\", mount = \"/s.ogg\", max_listeners = 100 }}]\n\
         [[stream]]\nname = \"quiet\"\nmounts = [{{ server = \"one\", mount = \"/q.ogg\" }}]\n",
        server_block("one", &servers[0], ""),
        server_block("two", &servers[1], ""),
        free_port(),
    );
    let (poller, replicas) = balancer(&redis, &fleet, 1, &[]).await;
    let redirector = &replicas[0];

    let browser = Browser::start().await;
    browser.resize(1280, 1100).await;
    browser
        .goto(&format!("http://{}/console", poller.admin))
        .await;
    let rows = wait_in_page(
        &browser,
        "the fleet table with one and two up, gone down",
        &format!(
            "const f = (() => {{ {FLEET_ROWS} }})(); \
             return f && f.one.state === 'up' && f.two.state === 'up' && f.gone.state === 'down' \
               ? f : null;"
        ),
    )
    .await;
    assert_eq!(
        rows["gone"]["bad"], true,
        "a down server stands out: {rows}"
    );
    assert_eq!(rows["one"]["bad"], false, "{rows}");
    let page = wait_in_page(
        &browser,
        "the mount without a source flagged, the stream totals and the chart",
        "const quiet = document.querySelector('tr.mount[data-mount=\"/q.ogg\"][data-server=\"one\"]'); \
         const streams = document.querySelectorAll('#streams-table tr[data-stream]').length; \
         const lines = document.querySelectorAll('#chart polyline').length; \
         if (!quiet || !quiet.classList.contains('bad') || streams < 2 || lines < 2) return null; \
         return { quiet: quiet.innerText, problems: document.getElementById('problems').innerText, \
                  status: document.getElementById('status').innerText, \
                  mounts: document.querySelectorAll('#fleet-table tr.mount').length };",
    )
    .await;
    assert!(
        page["quiet"].as_str().unwrap().contains("no source"),
        "{page}"
    );
    let problems = page["problems"].as_str().unwrap();
    assert!(
        problems.contains("gone is down") && problems.contains("/q.ogg: no source"),
        "{page}"
    );
    assert!(
        page["status"].as_str().unwrap().contains("poller"),
        "{page}"
    );
    assert_eq!(page["mounts"], 4, "{page}");
    // Listeners with three players' user agents show in the stream totals
    // and the audience panel.
    let mut players = Vec::new();
    for agent in ["VLC/3.0.20 LibVLC/3.0.20", "mpv 0.37.0", "Lavf/60.16.100"] {
        let url = servers[0].mount_url("/s.ogg");
        let player = Player::connect_as(&url, "127.0.0.1".parse().unwrap(), agent).await;
        players.push(player.unwrap());
    }
    let audience = wait_in_page(
        &browser,
        "3 listeners in the audience panel and the stream totals",
        "const a = document.querySelector('#audience-body .columns[data-stream=\"s\"]'); \
         const total = document.querySelector('#streams-table tr[data-stream=\"s\"] td.num'); \
         if (!a || !total || total.innerText !== '3' || !a.innerText.includes('mpv')) return null; \
         return document.getElementById('audience-body').innerText;",
    )
    .await;
    let audience = audience.as_str().unwrap();
    assert!(audience.contains("s: 3 listeners"), "{audience}");
    for family in ["vlc", "mpv", "ffmpeg"] {
        assert!(audience.contains(&format!("{family}\t1")), "{audience}");
    }
    browser.resize(1280, 1900).await;
    browser
        .screenshot(&screenshots().join("console-fleet.png"))
        .await;
    browser.resize(1280, 1100).await;
    drop(players);

    // Drain "two" with a click: confirmed, then within a second no player
    // goes there.
    let question = click_and_confirm(&browser, "button[data-server=\"two\"]").await;
    assert!(question.starts_with("Drain two?"), "{question}");
    let clicked = Instant::now();
    let only = servers[0].mount_url("/s.ogg");
    let took = all_sent_within_a_second(redirector, &only, clicked).await;
    println!("drain effective {took:?} after the click was confirmed");
    let rows = wait_in_page(
        &browser,
        "two shown drained",
        &format!(
            "const f = (() => {{ {FLEET_ROWS} }})(); \
             return f && f.two.state.includes('drained') ? f : null;"
        ),
    )
    .await;
    assert_eq!(rows["two"]["warn"], true, "{rows}");
    let result = browser
        .run("return document.getElementById('action-result').innerText;")
        .await;
    assert_eq!(result, "two drained");
    let (_, out, _) = ctl(poller.admin, &["--json", "servers"]);
    assert!(
        out.contains("\"drained\":true"),
        "balancerctl agrees: {out}"
    );

    // Undrain the same way: players come back to two.
    let question = click_and_confirm(&browser, "button[data-server=\"two\"]").await;
    assert!(question.starts_with("Undrain two?"), "{question}");
    let two = servers[1].mount_url("/s.ogg");
    let client = client();
    wait_until("a redirect to two again", PATIENCE, || async {
        let response = client.head(redirector.url("/s")).send().await.ok()?;
        (location(&response) == two).then_some(())
    })
    .await;

    // Poll now and Reload, confirmed like every action, answer as balancerctl does.
    let question = click_and_confirm(&browser, "#poll-now").await;
    assert_eq!(question, "Poll every server now?");
    wait_in_page(
        &browser,
        "the poll's snapshot version",
        "const r = document.getElementById('action-result').innerText; \
         return r.startsWith('polled: snapshot v') ? r : null;",
    )
    .await;
    click_and_confirm(&browser, "#reload").await;
    let reloaded = wait_in_page(
        &browser,
        "the reload's summary",
        "const r = document.getElementById('action-result').innerText; \
         return r.startsWith('reloaded: ') ? r : null;",
    )
    .await;
    assert!(
        reloaded.as_str().unwrap().contains("3 servers"),
        "{reloaded}"
    );

    // The redirector's console: its own status, Explain as balancerctl
    // gives it, and a pointer to the poller for the fleet.
    browser
        .goto(&format!("http://{}/console", redirector.admin))
        .await;
    let note = wait_in_page(
        &browser,
        "the redirector's console",
        "const n = document.getElementById('fleet-note'); \
         return n.hidden ? null : n.innerText;",
    )
    .await;
    assert!(
        note.as_str().unwrap().contains("the poller's console"),
        "{note}"
    );
    browser
        .run(
            "document.getElementById('explain-stream').value = 's'; \
             document.getElementById('explain-ip').value = '192.0.2.10'; \
             document.querySelector('#explain-form button').click(); return null;",
        )
        .await;
    let explained = wait_in_page(
        &browser,
        "the Explain answer",
        "const c = document.getElementById('explain-candidates'); \
         const x = document.getElementById('explain-excluded'); \
         return c && x ? { candidates: [...c.children].map(li => li.innerText), \
                           excluded: [...x.children].map(li => li.innerText) } : null;",
    )
    .await;
    let (code, cli, err) = ctl(redirector.admin, &["explain", "s", "192.0.2.10"]);
    assert_eq!(code, 0, "{err}");
    let candidates = explained["candidates"].as_array().unwrap();
    assert_eq!(candidates.len(), 2, "{explained}");
    for line in candidates {
        let server = line.as_str().unwrap().split(' ').next().unwrap();
        assert!(
            cli.lines()
                .any(|l| l.contains(&format!(". {server} /s.ogg"))),
            "{explained} vs {cli}"
        );
    }
    assert!(
        explained["excluded"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().starts_with("gone /s.ogg: down")),
        "{explained}"
    );
    assert!(cli.contains("excluded gone /s.ogg: down"), "{cli}");
    browser
        .screenshot(&screenshots().join("console-redirector.png"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_the_console_shows_and_does_nothing_without_it() {
    let icecast = IcecastServer::start(IcecastSpec::new([
        MountSpec::ogg("/s.ogg").max_listeners(50)
    ]))
    .await;
    let fleet = one_stream_fleet(&[("one", &icecast, "")], "admin");
    let redirector = Service::standalone(&fleet, &["--admin-token", "s3cret-token"]).await;
    wait_health(&redirector, true).await;
    let api = |path: &str| format!("http://{}/console/api/{path}", redirector.admin);
    let http = balancer_testkit::http().build().unwrap();

    // No data without the token (the rule does not depend on where the
    // request comes from: loopback needs it too once a token is set).
    for path in [
        "status",
        "servers",
        "streams",
        "audience",
        "explain?stream=s&ip=192.0.2.1",
    ] {
        let response = http.get(api(path)).send().await.unwrap();
        assert_eq!(response.status(), 401, "{path}");
        let body = response.text().await.unwrap();
        assert!(
            !body.contains("one") && !body.contains("s3cret"),
            "{path}: {body}"
        );
    }
    // No action without the token, nor with it but from another page.
    let drain = |token: Option<&str>, marked: bool, origin: Option<&str>| {
        let mut request = http
            .post(api("drain"))
            .header("content-type", "application/json")
            .body(r#"{"server":"one"}"#);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if marked {
            request = request.header("x-icb-console", "1");
        }
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.send()
    };
    assert_eq!(drain(None, true, None).await.unwrap().status(), 401);
    assert_eq!(
        drain(Some("wrong"), true, None).await.unwrap().status(),
        401
    );
    assert_eq!(
        drain(Some("s3cret-token"), false, None)
            .await
            .unwrap()
            .status(),
        403
    );
    let foreign = drain(Some("s3cret-token"), true, Some("https://attacker.example"));
    assert_eq!(foreign.await.unwrap().status(), 403);
    let servers = http
        .get(api("servers"))
        .header("authorization", "Bearer s3cret-token")
        .send()
        .await
        .unwrap();
    assert_eq!(servers.status(), 200);
    let listed: Value = serde_json::from_str(&servers.text().await.unwrap()).unwrap();
    assert_eq!(
        listed["servers"][0]["drained"], false,
        "nothing was drained"
    );

    // In the browser: a login form; a wrong token is refused; the right one
    // opens the console.
    let browser = Browser::start().await;
    browser
        .goto(&format!("http://{}/console", redirector.admin))
        .await;
    wait_in_page(
        &browser,
        "the login form",
        "return document.getElementById('login').hidden ? null : true;",
    )
    .await;
    let fleet_hidden = browser
        .run("return document.getElementById('main').hidden && document.querySelectorAll('#fleet-table tr.server').length === 0;")
        .await;
    assert_eq!(fleet_hidden, true);
    let login = |token: &str| {
        format!(
            "document.getElementById('token').value = {token:?}; \
             document.querySelector('#login-form button').click(); return null;"
        )
    };
    browser.run(&login("wrong")).await;
    wait_in_page(
        &browser,
        "the refusal",
        "const e = document.getElementById('login-error').innerText; \
         return e.includes('refused') ? e : null;",
    )
    .await;
    browser.run(&login("s3cret-token")).await;
    wait_in_page(
        &browser,
        "the fleet after signing in",
        "return document.querySelector('#fleet-table tr.server[data-server=\"one\"]') ? true : null;",
    )
    .await;
    wait_in_page(
        &browser,
        "the stream totals",
        "return document.querySelector('#streams-table tr[data-stream=\"s\"]') ? true : null;",
    )
    .await;
    browser
        .screenshot(&screenshots().join("console-standalone.png"))
        .await;
}
