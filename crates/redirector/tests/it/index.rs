//! The public stream index against a real icecast2 whose source announces
//! hostile text: the page and the JSON list every stream with what Icecast
//! and the fleet file say, everything escaped, no internal address, a strict
//! Content-Security-Policy; the listen link plays; `--index off` hides it.

use balancer_testkit::{IcecastServer, IcecastSpec, MountSpec, Player, wait_until};

use crate::support::*;

/// What a source client may set, meant to break out of the page.
const HOSTILE_TITLE: &str = "<script>alert(1)</script>\"><img src=x onerror=alert(2)>";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_lists_every_stream_escaped_and_its_link_plays() {
    let icecast = IcecastServer::start(IcecastSpec::new([
        MountSpec::ogg("/s.ogg")
            .max_listeners(50)
            .announce("Radio <b>Test</b>", "jazz")
            .song_title(HOSTILE_TITLE),
        MountSpec::ogg("/t.ogg").without_source(),
    ]))
    .await;
    let fleet = format!(
        "{POLLER_TABLE}{}\
         [[stream]]\nname = \"s\"\ndescription = \"Tom & Jerry's \\\"best\\\" <i>radio</i>\"\n\
         mounts = [{{ server = \"one\", mount = \"/s.ogg\" }}]\n\
         [[stream]]\nname = \"t\"\ntitle = \"The quiet one\"\n\
         mounts = [{{ server = \"one\", mount = \"/t.ogg\" }}]\n",
        server_block("one", &icecast, ""),
    );
    let redirector = Service::standalone(&fleet, &["--index", "listeners"]).await;
    let client = client();
    let page = wait_until("the index to show the song", PATIENCE, || async {
        let response = client.get(redirector.url("/")).send().await.ok()?;
        let csp = response
            .headers()
            .get("content-security-policy")?
            .to_str()
            .ok()?
            .to_owned();
        let content_type = response
            .headers()
            .get("content-type")?
            .to_str()
            .ok()?
            .to_owned();
        let body = response.text().await.ok()?;
        body.contains("Now playing")
            .then_some((csp, content_type, body))
    })
    .await;
    let (csp, content_type, html) = page;
    assert_eq!(content_type, "text/html; charset=utf-8");
    assert!(
        csp.starts_with("default-src 'none'") && !csp.contains("script-src"),
        "{csp}"
    );
    // What the source announced, shown as text.
    assert!(
        html.contains(
            "Now playing: &lt;script&gt;alert(1)&lt;/script&gt;&quot;&gt;&lt;img src=x onerror=alert(2)&gt;"
        ),
        "{html}"
    );
    assert!(
        html.contains("<h2>Radio &lt;b&gt;Test&lt;/b&gt;</h2>"),
        "{html}"
    );
    assert!(html.contains("Ogg · 32 kbit/s · jazz"), "{html}");
    // The fleet file's words, escaped too.
    assert!(
        html.contains("Tom &amp; Jerry&#39;s &quot;best&quot; &lt;i&gt;radio&lt;/i&gt;"),
        "{html}"
    );
    assert!(html.contains("<h2>The quiet one</h2>") && html.contains("Off the air"));
    assert!(!html.contains("<script") && !html.contains("<img") && !html.contains("<i>"));
    // Only the balancer's own links: no server, port or address.
    assert!(html.contains("href=\"/s\"") && html.contains("href=\"/s.m3u\""));
    assert!(!html.contains(&icecast.port().to_string()) && !html.contains("127.0.0.1"));
    assert!(html.contains("listener"), "--index listeners shows counts");

    // The JSON holds the same, unescaped (it is JSON).
    let response = client
        .get(redirector.url("/streams.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "application/json");
    let json: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    let streams = json["streams"].as_array().unwrap();
    assert_eq!(streams.len(), 2);
    assert_eq!(streams[0]["name"], "s");
    assert_eq!(streams[0]["now_playing"], HOSTILE_TITLE);
    assert_eq!(streams[0]["format"], "Ogg");
    assert_eq!(streams[0]["bitrate_kbps"], 32);
    assert_eq!(streams[0]["live"], true);
    assert_eq!(streams[0]["playlists"]["pls"], "/s.pls");
    assert!(streams[0]["listeners"].is_u64());
    assert_eq!(
        (streams[1]["name"].as_str(), streams[1]["live"].as_bool()),
        (Some("t"), Some(false))
    );
    assert!(!json.to_string().contains("127.0.0.1"));

    // The old prefix serves the page; the stylesheet is there.
    let old = client
        .get(redirector.url("/icecast_balancer/"))
        .send()
        .await
        .unwrap();
    assert_eq!(old.status(), 200);
    assert!(old.text().await.unwrap().contains("The quiet one"));
    let css = client
        .get(redirector.url("/streams.css"))
        .send()
        .await
        .unwrap();
    assert_eq!(css.headers()["content-type"], "text/css; charset=utf-8");

    // The listen link plays.
    let player = Player::connect(&redirector.url("/s")).await.unwrap();
    assert_eq!(player.status(), 200);
    assert!(
        player.wait_for_bytes(1024, PATIENCE).await,
        "the listen link plays"
    );

    // --index off: neither page exists.
    let hidden = Service::standalone(&fleet, &["--index", "off"]).await;
    wait_health(&hidden, true).await;
    for path in ["/", "/streams.json", "/icecast_balancer/"] {
        let response = client.get(hidden.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 404, "{path} with --index off");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_real_browser_a_hostile_title_is_text_and_the_listen_link_plays() {
    use balancer_testkit::browser::Browser;
    let icecast = IcecastServer::start(IcecastSpec::new([MountSpec::ogg("/s.ogg")
        .max_listeners(50)
        .announce("Radio Test", "jazz")
        .song_title(HOSTILE_TITLE)]))
    .await;
    let fleet = format!(
        "{POLLER_TABLE}{}[[stream]]\nname = \"s\"\nmounts = [{{ server = \"one\", mount = \"/s.ogg\" }}]\n",
        server_block("one", &icecast, ""),
    );
    let redirector = Service::standalone(&fleet, &[]).await;
    let client = client();
    wait_until("the song in the index", PATIENCE, || async {
        let response = client
            .get(redirector.url("/streams.json"))
            .send()
            .await
            .ok()?;
        let text = response.text().await.ok()?;
        text.contains("onerror").then_some(())
    })
    .await;

    let browser = Browser::start().await;
    browser.goto(&redirector.url("/")).await;
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    browser.screenshot(&shots.join("stream-index.png")).await;
    // No script ran and no element came from the title: it is text.
    assert_eq!(browser.alert_text().await, None, "an alert opened");
    let page = browser
        .run(
            "return { injected: document.querySelectorAll('script, img').length, \
                      text: document.body.innerText, title: document.title, \
                      styled: getComputedStyle(document.body).maxWidth }",
        )
        .await;
    assert_eq!(page["injected"], 0, "{page}");
    assert_eq!(page["title"], "Streams");
    let text = page["text"].as_str().unwrap_or_default();
    assert!(
        text.contains(&format!("Now playing: {HOSTILE_TITLE}")),
        "{text}"
    );
    assert_ne!(
        page["styled"], "none",
        "the stylesheet loaded under the CSP: {page}"
    );

    // The Listen link: the browser follows it through the 302 to the Icecast
    // mount; a real player given the same link plays.
    let href = browser
        .run("return document.querySelector('a.listen').getAttribute('href');")
        .await;
    assert_eq!(href, "/s");
    browser
        .run("document.querySelector('a.listen').click(); return null;")
        .await;
    let mount = icecast.mount_url("/s.ogg");
    wait_until("the browser on the mount", PATIENCE, || async {
        (browser.current_url().await == mount).then_some(())
    })
    .await;
    browser.screenshot(&shots.join("listen-link.png")).await;
    let player = Player::connect(&redirector.url("/s")).await.unwrap();
    assert_eq!(player.final_url().as_str(), mount);
    assert!(
        player.wait_for_bytes(4096, PATIENCE).await,
        "the link plays"
    );
}
