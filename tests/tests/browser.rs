//! The real page in headless Chromium against the real `natter` binary
//! serving the real release bundle.

use std::time::{Duration, Instant};

use natter_e2e::browser::{Page, UI_TIMEOUT, artifacts_dir, console_messages, run_before_each_page, scenario};
use natter_e2e::redis_server::RedisServer;
use natter_e2e::{Natter, WsClient, bundle_dir};
use natter_shared::limits::MEMBERS_PAGE_MAX;
use natter_shared::{ServerMsg, UserName, color_for};

/// Each scenario's upper bound.
const LIMIT: Duration = Duration::from_secs(120);

/// A server serving the page built into the binary (`cargo xtask test`
/// builds natter with it), as a deployment does.
fn start_server() -> Natter {
    let _built = bundle_dir();
    Natter::start(&["--leave-grace", "2s"])
}

/// `#rrggbb` as the `rgb(r, g, b)` a browser reports.
fn rgb(hex: &str) -> String {
    let c = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex");
    format!("rgb({}, {}, {})", c(1), c(3), c(5))
}

#[tokio::test]
async fn two_browsers_chat_a_third_room_sees_nothing_and_text_stays_text() {
    let natter = start_server();
    let url = format!("http://{}/", natter.addr);
    scenario("chat", LIMIT, |browsers| async move {
        let ada = Page::open(browsers.open("ada").await, &url).await;
        let bob = Page::open(browsers.open("bob").await, &url).await;
        let cat = Page::open(browsers.open("cat").await, &url).await;
        ada.join("Ada", "lobby").await;
        bob.join("Bob", "lobby").await;
        cat.join("Cat", "elsewhere").await;
        ada.wait_for_text(".messages .notice", "Bob joined").await;
        ada.wait_for_text(".member-count", "2 members").await;

        // Typing shows up for the others.
        let composer = ada.client.find(fantoccini::Locator::Css("#composer-text")).await.expect("composer");
        composer.send_keys("Hello Bob").await.expect("type");
        bob.wait_for_text(".typing", "\u{2068}Ada\u{2069} is typing…").await; // the name bidi-isolated
        ada.say(", how are you?").await;
        bob.wait_texts(".typing", "the typing line to clear", |t| t.iter().all(String::is_empty)).await;
        bob.wait_for_text(".messages .msg .text", "Hello Bob, how are you?").await;
        bob.say("Fine, thanks!\u{E008}\u{E007}\u{E000}Second line").await; // Shift+Enter (then release Shift); Enter sends
        ada.wait_for_text(".messages .msg .text", "Second line").await;
        let texts = ada.texts(".messages .msg .text").await;
        assert!(texts.contains(&"Fine, thanks!\nSecond line".to_owned()), "{texts:?}");

        // Names and their colours.
        let names = bob.texts(".messages .msg .name").await;
        assert!(names.contains(&"Ada".to_owned()), "{names:?}");
        let ada_color = color_for(&UserName::parse("Ada").expect("valid"));
        let shown = bob
            .js("return [...document.querySelectorAll('.messages .msg .name')].find(e => e.textContent === 'Ada').style.color")
            .await;
        assert_eq!(shown.as_str(), Some(rgb(ada_color.as_str()).as_str()));

        // Markup is shown as text, never run or rendered.
        let xss = "<img src=x onerror=\"window.__pwned=1\"><b>bold?</b>";
        ada.say(xss).await;
        bob.wait_for_text(".messages .msg .text", "<img src=x").await;
        let texts = bob.texts(".messages .msg .text").await;
        assert!(texts.contains(&xss.to_owned()), "{texts:?}");
        assert_eq!(bob.js("return document.querySelectorAll('.messages img, .messages .text b').length").await, 0);
        assert_eq!(bob.js("return window.__pwned === undefined").await, true);

        // The other room saw none of it.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(cat.texts(".messages .msg").await.is_empty(), "another room stays separate");
        assert_eq!(cat.texts(".messages .notice .notice-text").await, vec!["Cat joined".to_owned()]);

        // The README's screenshot.
        let png = ada.client.screenshot().await.expect("screenshot");
        let _ = std::fs::create_dir_all(artifacts_dir());
        std::fs::write(artifacts_dir().join("chat.png"), png).expect("save screenshot");
    })
    .await;
}

#[tokio::test]
async fn two_pages_on_two_instances_share_one_room() {
    let _built = bundle_dir();
    let redis = RedisServer::start();
    let url = redis.url();
    let a = Natter::start(&["--leave-grace", "2s", "--redis", &url]);
    let b = Natter::start(&["--leave-grace", "2s", "--redis", &url]);
    let (url_a, url_b) = (format!("http://{}/", a.addr), format!("http://{}/", b.addr));
    scenario("instances", LIMIT, |browsers| async move {
        let ada = Page::open(browsers.open("ada").await, &url_a).await;
        let bob = Page::open(browsers.open("bob").await, &url_b).await;
        ada.join("Ada", "lobby").await;
        bob.join("Bob", "lobby").await;
        // Presence, the member list and its count span both instances.
        ada.wait_for_text(".messages .notice", "Bob joined").await;
        ada.wait_for_text(".member-count", "2 members").await;
        bob.wait_for_text(".member-count", "2 members").await;

        // Typing and messages go both ways.
        let composer = ada.client.find(fantoccini::Locator::Css("#composer-text")).await.expect("composer");
        composer.send_keys("Hello from A").await.expect("type");
        bob.wait_for_text(".typing", "\u{2068}Ada\u{2069} is typing…").await;
        ada.say("!").await;
        bob.wait_for_text(".messages .msg .text", "Hello from A!").await;
        bob.say("And back from B").await;
        ada.wait_for_text(".messages .msg .text", "And back from B").await;

        // The name is taken on the other instance too.
        let eve = Page::open(browsers.open("eve").await, &url_a).await;
        eve.submit_join("Bob", "lobby").await;
        eve.wait_for_text("#join-name-error", "already called Bob").await;
    })
    .await;
}

#[tokio::test]
async fn closing_a_browser_shows_left_in_the_other_within_a_second() {
    let natter = start_server();
    let url = format!("http://{}/", natter.addr);
    scenario("leave", LIMIT, |browsers| async move {
        let ada = Page::open(browsers.open("ada").await, &url).await;
        let bob_client = browsers.open("bob").await;
        let bob = Page::open(bob_client.clone(), &url).await;
        ada.join("Ada", "lobby").await;
        bob.join("Bob", "lobby").await;
        ada.wait_for_text(".messages .notice", "Bob joined").await;
        let closed = Instant::now();
        bob_client.close_window().await.expect("close Bob's page");
        ada.wait_for_text(".messages .notice", "Bob left").await;
        let took = closed.elapsed();
        assert!(took < Duration::from_secs(1), "\"left\" shown after {took:?}");
        ada.wait_for_text(".member-count", "1 member").await;
    })
    .await;
}

#[tokio::test]
async fn both_pages_survive_a_server_restart_and_nothing_is_lost_or_doubled() {
    let mut natter = start_server();
    let addr = natter.addr.to_string();
    let url = format!("http://{addr}/");
    let bundle = bundle_dir();
    scenario("restart", LIMIT, |browsers| async move {
        let ada = Page::open(browsers.open("ada").await, &url).await;
        let bob = Page::open(browsers.open("bob").await, &url).await;
        ada.join("Ada", "lobby").await;
        bob.join("Bob", "lobby").await;
        ada.say("before the restart").await;
        bob.wait_for_text(".messages .msg .text", "before the restart").await;

        natter.signal("TERM");
        assert!(natter.wait().success());
        ada.wait_for_text(".status", "Reconnecting").await;
        bob.wait_for_text(".status", "Reconnecting").await;
        // Typed while the server is down: kept in the outbox.
        ada.say("typed while the server was down").await;
        ada.wait_for_text(".messages .pending .state", "waiting to send").await;

        let data = natter.data_dir.display().to_string();
        let args = ["--bundle-dir", bundle.to_str().expect("utf-8"), "--leave-grace", "2s", "--data-dir", &data];
        let _natter = Natter::start_on(&addr, &args);
        ada.wait_for_text(".status", "Connected").await;
        bob.wait_for_text(".status", "Connected").await;
        bob.wait_for_text(".messages .msg .text", "typed while the server was down").await;
        bob.say("and after it").await;
        ada.wait_for_text(".messages .msg .text", "and after it").await;
        ada.wait_texts(".messages .pending", "an empty outbox", |t| t.is_empty()).await;

        for page in [&ada, &bob] {
            let texts = page.texts(".messages .msg .text").await;
            for expected in ["before the restart", "typed while the server was down", "and after it"] {
                let n = texts.iter().filter(|t| t.as_str() == expected).count();
                assert_eq!(n, 1, "{expected:?} shown {n} times in {texts:?}");
            }
            // Both resumed their saved memberships: nobody joined again.
            let joins = page.texts(".messages .notice-joined").await;
            assert_eq!(joins.len(), 2, "Ada's and Bob's first joins only: {joins:?}");
        }
    })
    .await;
}

#[tokio::test]
async fn a_reload_restores_the_name_and_the_history() {
    let natter = start_server();
    let url = format!("http://{}/", natter.addr);
    scenario("reload", LIMIT, |browsers| async move {
        let ada = Page::open(browsers.open("ada").await, &url).await;
        ada.join("Ada", "dev-team").await;
        ada.say("one").await;
        ada.say("two").await;
        ada.wait_for_text(".messages .msg.mine .state", "sent").await;
        ada.wait_texts(".messages .msg .text", "both messages", |t| t.len() == 2).await;
        assert!(ada.js("return location.hash").await.as_str().is_some_and(|h| h == "#/r/dev-team"));

        ada.client.refresh().await.expect("reload");
        ada.wait_for_text(".status", "Connected").await;
        ada.wait_for_text(".room-name", "#dev-team").await;
        let texts = ada.wait_texts(".messages .msg .text", "the history", |t| t.len() == 2).await;
        assert_eq!(texts, ["one", "two"]);
        let names = ada.texts(".messages .msg .name").await;
        assert!(names.iter().all(|n| n == "Ada"), "{names:?}");

        // A new page of the same browser remembers the name and the room.
        ada.client.goto(&format!("{url}?fresh=1")).await.expect("navigate");
        ada.click(".leave").await;
        let name = ada.js("return document.getElementById('join-name').value").await;
        assert_eq!(name.as_str(), Some("Ada"));
        let room = ada.js("return document.getElementById('join-room').value").await;
        assert_eq!(room.as_str(), Some("dev-team"));
    })
    .await;
}

/// Records every Content-Security-Policy violation of the page in
/// `window.__csp`, from before the page's first script runs.
const RECORD_CSP_VIOLATIONS: &str = "window.__csp = []; document.addEventListener('securitypolicyviolation', \
     e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));";

#[tokio::test]
async fn the_page_works_under_its_content_security_policy() {
    let natter = start_server();
    let url = format!("http://{}/", natter.addr);
    scenario("csp", LIMIT, |browsers| async move {
        let mut pages = Vec::new();
        for label in ["ada", "bob"] {
            let client = browsers.open(label).await;
            run_before_each_page(&client, RECORD_CSP_VIOLATIONS).await;
            pages.push(Page::open(client, &url).await);
        }
        let (ada, bob) = (&pages[0], &pages[1]);
        // The loader (inline), the wasm, the stylesheet, the icon and the socket all load.
        ada.join("Ada", "lobby").await;
        bob.join("Bob", "lobby").await;
        ada.say("under a policy").await;
        bob.wait_for_text(".messages .msg .text", "under a policy").await;
        ada.wait_for_text(".messages .msg.mine .state", "sent").await;
        for page in [ada, bob] {
            assert_eq!(page.js("return window.__csp").await, serde_json::json!([]), "no violation");
            let refused: Vec<String> = console_messages(&page.client)
                .await
                .into_iter()
                .filter(|m| m.contains("Content Security Policy"))
                .collect();
            assert!(refused.is_empty(), "{refused:#?}");
        }
        // The policy is really there: a script injected into the page does not run.
        let injected = "const s = document.createElement('script'); s.textContent = 'window.__injected = 1'; \
                        document.body.append(s); return window.__injected === undefined";
        assert_eq!(ada.js(injected).await, true, "an injected inline script must be blocked");
        let reported = ada.js("return window.__csp").await;
        assert!(
            reported
                .as_array()
                .is_some_and(|v| v.len() == 1 && v[0].as_str().is_some_and(|d| d.starts_with("script-src"))),
            "{reported}"
        );
    })
    .await;
}

/// Waits until `script` returns `expected` in `page`.
async fn wait_js(page: &Page, script: &str, expected: serde_json::Value) {
    let deadline = Instant::now() + UI_TIMEOUT;
    loop {
        let got = page.js(script).await;
        if got == expected {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for `{script}` to return {expected}; it returns {got}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The names a presence line mentions (each bidi-isolated by the page).
fn isolated_names(line: &str) -> Vec<String> {
    line.split('\u{2068}').skip(1).filter_map(|s| s.split('\u{2069}').next()).map(str::to_owned).collect()
}

const LISTED: &str = "return document.querySelectorAll('.members .member').length";
const MORE: &str = "return document.querySelector('.members-more span')?.textContent ?? null";

#[tokio::test]
async fn a_big_room_batches_presence_and_lists_members_a_page_at_a_time() {
    let bundle = bundle_dir();
    // Every room above one member is big; pings are kept out of the test's
    // way (its protocol clients do not read).
    let natter = Natter::start(&[
        "--bundle-dir",
        bundle.to_str().expect("utf-8 path"),
        "--presence-threshold",
        "1",
        "--presence-interval",
        "100ms",
        "--ping-interval",
        "300s",
    ]);
    let (url, ws) = (format!("http://{}/", natter.addr), natter.ws_url());
    scenario("presence", LIMIT, |browsers| async move {
        // More members than a welcome lists, before the page joins.
        let others = MEMBERS_PAGE_MAX as usize + 5;
        let mut clients = Vec::new();
        for i in 0..others {
            let mut client = WsClient::connect(&ws).await;
            assert!(matches!(client.hello(&format!("m{i:03}"), "big").await, ServerMsg::Welcome(_)));
            clients.push(client);
        }
        let ada = Page::open(browsers.open("ada").await, &url).await;
        ada.join("Ada", "big").await;
        let total = others + 1;
        ada.wait_for_text(".member-count", &format!("{total} members")).await;
        // The welcome listed the first page ("Ada" sorts first), and the panel says how many are not.
        wait_js(&ada, LISTED, MEMBERS_PAGE_MAX.into()).await;
        let left_out = total - MEMBERS_PAGE_MAX as usize;
        assert_eq!(ada.js(MORE).await, serde_json::json!(format!("and {left_out} more")));
        // Her own join comes as a presence line, not a stored notice.
        let lines = ada.wait_texts(".messages .presence", "Ada's join", |t| t.iter().any(|l| l.contains("Ada"))).await;
        assert!(lines.iter().all(|l| l.ends_with(" joined")), "{lines:?}");
        // (Only m000, who joined the room empty, has a stored notice.)
        assert_eq!(ada.texts(".messages .notice .name").await, ["m000"], "no stored notice above one member");

        // On a narrow screen, opening the list asks for the rest.
        ada.client.set_window_size(500, 760).await.expect("resize");
        ada.click(".members-toggle").await;
        wait_js(&ada, LISTED, total.into()).await;
        assert_eq!(ada.js(MORE).await, serde_json::Value::Null, "complete: no \"and N more\"");

        // Three leave at once: their names in lines, the count and the list follow.
        let leavers = ["m102", "m103", "m104"];
        for mut client in clients.drain(others - 3..) {
            client.ws.close(None).await.expect("close");
            // Read to the server's answer: a socket dropped with unread
            // frames is reset, and a reset can beat the Close frame to the
            // server (a drop, not a leave).
            client.close_code().await;
        }
        ada.wait_for_text(".member-count", &format!("{} members", total - 3)).await;
        let lines = ada
            .wait_texts(".messages .presence", "the three leaves", |t| {
                let named: Vec<String> =
                    t.iter().filter(|l| l.ends_with(" left")).flat_map(|l| isolated_names(l)).collect();
                leavers.iter().all(|n| named.iter().any(|m| m == n))
            })
            .await;
        assert!(lines.iter().all(|l| !l.contains("timed out")), "{lines:?}");
        wait_js(&ada, LISTED, (total - 3).into()).await;
        let listed = ada.js("return [...document.querySelectorAll('.members .member')].map(e => e.textContent)").await;
        assert!(!listed.to_string().contains("m104"), "{listed}");
    })
    .await;
}
