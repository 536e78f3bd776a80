//! Names across instances on one Redis (issue 15, stage 3): a name is
//! unique in its room whichever instance its member is on; a browser's
//! resume token takes its name over on another instance with no presence
//! traffic, and its old instance never announces it gone; the names of an
//! instance that stopped renewing its liveness key are free after its TTL.

mod common;

use std::time::Duration;

use common::redis_server::{RedisCluster, RedisServer};
use common::{Client, TestServer, redis_config, resume};
use natter_backend::Config;
use natter_backend::config::HistoryKind;
use natter_shared::{ErrorCode, Hello, NoticeKind, ServerMsg, Welcome};

/// The liveness TTL of the instances in these tests.
const TTL: Duration = Duration::from_secs(1);
/// The grace period before a dropped member times out.
const GRACE: Duration = Duration::from_millis(500);

fn names_config(url: &str) -> Config {
    let mut config = redis_config(url);
    if let HistoryKind::Redis(redis) = &mut config.history {
        redis.instance_ttl = TTL;
    }
    config.timing.leave_grace = GRACE;
    config
}

/// The reply to `hello` as `name` in `room`, from a new client of `server`.
async fn try_join(server: &TestServer, hello: Hello) -> (Client, ServerMsg) {
    let mut client = server.client().await;
    let reply = client.hello_with(hello).await;
    (client, reply)
}

fn welcome(reply: ServerMsg) -> Welcome {
    match reply {
        ServerMsg::Welcome(w) => w,
        other => panic!("expected a welcome, got {other:?}"),
    }
}

fn assert_taken(reply: &ServerMsg, who: &str) {
    match reply {
        ServerMsg::Error(e) => assert_eq!(e.code, ErrorCode::NameTaken, "{who}: {e:?}"),
        other => panic!("{who}: expected name_taken, got {other:?}"),
    }
}

/// The presence notices `client` gets within `wait` (other frames skipped).
async fn notices_within(client: &mut Client, wait: Duration) -> Vec<(NoticeKind, String)> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return seen;
        }
        match client.try_recv(left).await {
            Some(ServerMsg::Notice(n)) => seen.push((n.kind, n.name.as_str().to_owned())),
            Some(ServerMsg::Notices(batch)) => {
                seen.extend(batch.notices.into_iter().map(|n| (n.kind, n.name.as_str().to_owned())));
            }
            Some(_) => {}
            None => return seen,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_held_on_one_instance_is_refused_on_the_other_until_it_is_given_back() {
    let redis = RedisServer::start();
    let a = TestServer::start(names_config(&redis.url())).await;
    let b = TestServer::start(names_config(&redis.url())).await;
    let (ada, _) = a.joined("Ada", "lobby").await;

    // The same name, another case, a look-alike letter (Cyrillic А), on the other instance.
    for name in ["Ada", "ADA", "\u{410}da"] {
        let (_, reply) = try_join(&b, Hello::new(name, "lobby")).await;
        assert_taken(&reply, name);
    }
    // A resume token that is not hers takes nothing.
    let forged = "0123456789abcdef0123456789abcdef";
    let (_, reply) = try_join(&b, resume("Ada", "lobby", natter_shared::Seq(0), Some(forged))).await;
    assert_taken(&reply, "a forged token");
    // Names are per room.
    let (_, reply) = try_join(&b, Hello::new("Ada", "elsewhere")).await;
    welcome(reply);

    // Once she leaves, the name is free everywhere.
    ada.close().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, reply) = try_join(&b, Hello::new("Ada", "lobby")).await;
        match reply {
            ServerMsg::Welcome(_) => break,
            other if tokio::time::Instant::now() > deadline => panic!("the name was not given back: {other:?}"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_that_moves_to_another_instance_keeps_its_name_and_nobody_hears_of_it() {
    let redis = RedisServer::start();
    let a = TestServer::start(names_config(&redis.url())).await;
    let b = TestServer::start(names_config(&redis.url())).await;
    let (mut cy, _) = b.joined("Cy", "lobby").await;
    let (ada, ada_w) = a.joined("Ada", "lobby").await;
    assert_eq!(notices_within(&mut cy, Duration::from_secs(2)).await, vec![(NoticeKind::Joined, "Ada".into())]);

    // Her connection to A drops; her page comes back through the balancer, to B.
    ada.drop_connection();
    let hello = Hello {
        history_id: Some(ada_w.history_id.clone()),
        ..resume("Ada", "lobby", ada_w.seq_head, Some(ada_w.resume_token.as_str()))
    };
    let (mut ada, reply) = try_join(&b, hello).await;
    let back = welcome(reply);
    assert!(back.history.is_empty(), "a resume with nothing missed: {:?}", back.history);
    assert_ne!(back.resume_token, ada_w.resume_token, "the token rotates");

    // A's grace period for her old connection runs out: she is on B, so nobody is told anything.
    let heard = notices_within(&mut cy, GRACE * 4).await;
    assert!(heard.is_empty(), "no presence for a move: {heard:?}");
    // The name is B's now: a stranger on A is refused, and her old token is spent.
    let (_, reply) = try_join(&a, Hello::new("Ada", "lobby")).await;
    assert_taken(&reply, "a stranger on A");
    let (_, reply) = try_join(&a, resume("Ada", "lobby", ada_w.seq_head, Some(ada_w.resume_token.as_str()))).await;
    assert_taken(&reply, "the spent token");

    // She is still herself on B: her message reaches Cy, and her leave is announced once.
    ada.say("m1", "still here").await;
    ada.close().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let (mut said, mut left) = (false, 0);
    while tokio::time::Instant::now() < deadline && !(said && left == 1) {
        match cy.try_recv(Duration::from_millis(200)).await {
            Some(ServerMsg::Message(m)) => said |= m.text.as_str() == "still here",
            Some(ServerMsg::Notice(n)) if n.name.as_str() == "Ada" => {
                assert_eq!(n.kind, NoticeKind::Left, "{n:?}");
                left += 1;
            }
            _ => {}
        }
    }
    assert!(said, "her message from B reached Cy");
    assert_eq!(left, 1, "her leave announced once");
    let later = notices_within(&mut cy, GRACE * 3).await;
    assert!(later.is_empty(), "and nothing after it: {later:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_names_of_an_instance_that_stopped_renewing_are_free_after_its_ttl() {
    let redis = RedisServer::start();
    let a = TestServer::start(names_config(&redis.url())).await;
    let b = TestServer::start(names_config(&redis.url())).await;
    let (_ada, _) = a.joined("Ada", "lobby").await;
    // A goes away without giving its names back (its members are saved for a restart).
    a.shutdown().await.expect("A stops");

    // Within its TTL the name is still A's.
    let (_, reply) = try_join(&b, Hello::new("Ada", "lobby")).await;
    assert_taken(&reply, "within the TTL");
    // Past it, A counts as gone and the name is free.
    tokio::time::sleep(TTL + Duration::from_millis(500)).await;
    let (_, reply) = try_join(&b, Hello::new("Ada", "lobby")).await;
    welcome(reply);
    assert_eq!(redis.command(&["HLEN", "natter:{lobby}:n"]).as_deref(), Some(":1"), "one claim: the new Ada's");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_lost_with_a_flushed_redis_are_claimed_again_by_the_members_who_resume() {
    let redis = RedisServer::start();
    let a = TestServer::start(names_config(&redis.url())).await;
    let b = TestServer::start(names_config(&redis.url())).await;
    let (mut ada, ada_w) = a.joined("Ada", "lobby").await;
    assert_eq!(redis.command(&["FLUSHALL"]).as_deref(), Some("+OK"));
    // A's next join finds the history lost: its members are sent to resume.
    let (_bo, _) = try_join(&a, Hello::new("Bo", "lobby")).await;
    assert!(matches!(ada.closed().await, common::Ended::Close(4000, _)), "Ada is told to resume");

    let (ada, reply) = try_join(&a, resume("Ada", "lobby", ada_w.seq_head, Some(ada_w.resume_token.as_str()))).await;
    welcome(reply);
    // The instances' liveness keys went with the flush too: both are back
    // at their next renewal (a third of the TTL).
    let deadline = tokio::time::Instant::now() + TTL * 3;
    while redis.command(&["KEYS", "natter:instance:????????????????"]).as_deref() != Some("*2") {
        assert!(tokio::time::Instant::now() < deadline, "the instances renew their liveness keys");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, reply) = try_join(&b, Hello::new("Ada", "lobby")).await;
    assert_taken(&reply, "a stranger on B after her resume");
    // Her claim is recorded as hers: her leave gives it back.
    ada.close().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, reply) = try_join(&b, Hello::new("Ada", "lobby")).await;
    welcome(reply);
}

/// The member list `client` gets for `members` (its first page).
async fn member_list(client: &mut Client) -> (Vec<String>, u32) {
    client.send(&natter_shared::ClientMsg::Members(natter_shared::MembersRequest { after: None, limit: 100 })).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match client.try_recv(left).await {
            Some(ServerMsg::Members(page)) => {
                return (page.members.iter().map(|m| m.name.as_str().to_owned()).collect(), page.count);
            }
            Some(_) => {}
            None => panic!("no member list"),
        }
    }
}

/// Waits until `client`'s member list is `want` (changes reach other
/// instances through Redis's channel, a moment later).
async fn member_list_becomes(client: &mut Client, want: &[&str]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (names, count) = member_list(client).await;
        if names == want && count as usize == want.len() {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "members {names:?} ({count}), expected {want:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_lists_counts_and_typing_are_the_same_on_every_instance() {
    let redis = RedisServer::start();
    members_and_typing_on_two_instances(&redis.url()).await;
}

/// The same on a Redis Cluster of three masters: the claim scripts, the
/// member changes and typing go to the node of the room's slot, the
/// liveness keys to theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_member_lists_counts_and_typing_are_the_same_on_every_instance() {
    let cluster = RedisCluster::start();
    members_and_typing_on_two_instances(&cluster.url()).await;
}

async fn members_and_typing_on_two_instances(url: &str) {
    let a = TestServer::start(names_config(url)).await;
    let b = TestServer::start(names_config(url)).await;
    let (mut ada, _) = a.joined("Ada", "lobby").await;
    let (bo, _) = a.joined("bo", "lobby").await;
    // A welcome on B lists A's members, in the page's order, with the count of all.
    let (mut cy, reply) = try_join(&b, Hello::new("Cy", "lobby")).await;
    let cy_w = welcome(reply);
    let listed: Vec<&str> = cy_w.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!((listed, cy_w.member_count), (vec!["Ada", "bo", "Cy"], 3));
    member_list_becomes(&mut ada, &["Ada", "bo", "Cy"]).await;

    // Typing on B shows on A.
    cy.send(&natter_shared::ClientMsg::Typing(natter_shared::Typing { active: true })).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match ada.try_recv(left).await {
            Some(ServerMsg::Typing(t)) if t.name.as_str() == "Cy" => {
                assert!(t.active);
                break;
            }
            Some(_) => {}
            None => panic!("Cy's typing did not reach A"),
        }
    }

    // A leave on A is gone from B's list.
    bo.close().await;
    member_list_becomes(&mut cy, &["Ada", "Cy"]).await;
    member_list_becomes(&mut ada, &["Ada", "Cy"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_rooms_presence_batches_count_and_name_members_of_every_instance() {
    let redis = RedisServer::start();
    let big = |url: &str| {
        let mut config = names_config(url);
        config.limits.presence_threshold = 1;
        config.limits.presence_interval = Duration::from_millis(100);
        config
    };
    let a = TestServer::start(big(&redis.url())).await;
    let b = TestServer::start(big(&redis.url())).await;
    let mut ada = a.client().await;
    let _ = ada.hello("Ada", "hall").await;
    let mut bo = a.client().await;
    let _ = bo.hello("Bo", "hall").await;
    // Cy joins on B: A's members hear of it in a presence batch counting all three.
    let mut cy = b.client().await;
    let _ = cy.hello("Cy", "hall").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match ada.try_recv(left).await {
            Some(ServerMsg::Presence(p)) if p.joined.iter().any(|m| m.name.as_str() == "Cy") => {
                assert_eq!(p.count, 3, "{p:?}");
                break;
            }
            Some(_) => {}
            None => panic!("A's members did not hear of Cy"),
        }
    }
    drop(bo);
}
