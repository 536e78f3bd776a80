//! Several natter instances on one Redis (issue 15, stage 2): every client,
//! whichever instance it is on, sees each room's events with the same seqs
//! in the same order, none missing or doubled; a client resumes on another
//! instance from its last seq; an instance whose subscription drops fills
//! what it missed from the stream.
//!
//! Two servers run in this test process over a private redis-server (see
//! `common::redis_server`).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::redis_server::{RedisCluster, RedisServer};
use common::{Client, TestServer, redis_config, resume};
use natter_backend::Config;
use natter_shared::{Hello, RoomEvent, Seq, ServerMsg, Welcome};
use tokio::task::JoinSet;

/// How long a client may wait for the rest of a test's messages.
const SETTLE: Duration = Duration::from_secs(20);

/// A shared-Redis config whose clients may send as fast as a test does.
fn fast_config(url: &str) -> Config {
    let mut config = redis_config(url);
    config.rate.per_sec = 10_000;
    config.rate.burst = 10_000;
    config
}

/// Two instances on `redis`.
async fn two_instances(redis: &RedisServer) -> (TestServer, TestServer) {
    (TestServer::start(fast_config(&redis.url())).await, TestServer::start(fast_config(&redis.url())).await)
}

/// What one client saw after its welcome: every seq (events and its own
/// acks), and the messages as (seq, text).
#[derive(Debug, Default)]
struct Seen {
    start: Seq,
    seqs: Vec<Seq>,
    messages: Vec<(Seq, String)>,
}

impl Seen {
    fn after(welcome: &Welcome) -> Self {
        Self { start: welcome.seq_head, ..Self::default() }
    }

    /// Records one event of the room (history or live).
    fn event(&mut self, event: &RoomEvent) {
        self.seqs.push(event.seq());
        if let RoomEvent::Message(m) = event {
            self.messages.push((m.seq, m.text.as_str().to_owned()));
        }
    }

    /// Reads until `want` messages were seen; `own` maps this client's cids
    /// to their texts (its own messages come back as acks).
    async fn read(&mut self, client: &mut Client, want: usize, own: &HashMap<String, String>) {
        let deadline = tokio::time::Instant::now() + SETTLE;
        while self.messages.len() < want {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(msg) = client.try_recv(left).await else {
                panic!("only {} of {want} messages within {SETTLE:?}: {:?}", self.messages.len(), self.messages);
            };
            match msg {
                ServerMsg::Message(m) => self.event(&RoomEvent::Message(m)),
                ServerMsg::Notice(n) => self.event(&RoomEvent::Notice(n)),
                ServerMsg::Notices(batch) => batch.notices.into_iter().for_each(|n| self.event(&RoomEvent::Notice(n))),
                ServerMsg::Ack(a) => {
                    self.seqs.push(a.seq);
                    self.messages.push((a.seq, own[a.cid.as_str()].clone()));
                }
                ServerMsg::Error(e) => panic!("unexpected error {e:?}"),
                _ => {}
            }
        }
    }

    /// Every seq after the start came, once, in order.
    fn assert_complete(&self, who: &str) {
        let end = self.seqs.last().copied().unwrap_or(self.start);
        let expected: Vec<Seq> = (self.start.0 + 1..=end.0).map(Seq).collect();
        assert_eq!(self.seqs, expected, "{who}: every seq after {} once, in order", self.start.0);
    }
}

/// The member list (first page) `client` gets for `members`.
async fn members_of(client: &mut Client) -> Vec<String> {
    client.send(&natter_shared::ClientMsg::Members(natter_shared::MembersRequest { after: None, limit: 100 })).await;
    loop {
        match client.recv().await {
            ServerMsg::Members(page) => return page.members.iter().map(|m| m.name.as_str().to_owned()).collect(),
            _ => continue,
        }
    }
}

/// `count` messages from `name`: cid and text.
fn script(name: &str, count: usize) -> Vec<(String, String)> {
    (0..count).map(|i| (format!("{name}-{i}"), format!("{name} says {i}"))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_on_two_instances_see_every_rooms_messages_in_one_order() {
    let redis = RedisServer::start();
    three_rooms_on_two_instances(&redis.url()).await;
}

/// Stage 5: the same test on a Redis Cluster of three masters. Rooms'
/// keys (hash tag `{room}`) land on different nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_clients_on_two_instances_see_every_rooms_messages_in_one_order() {
    let cluster = RedisCluster::start();
    three_rooms_on_two_instances(&cluster.url()).await;
}

/// Two instances on the Redis at `url`, a sender and a reader on each in
/// each of three rooms: every client sees every message of its room once,
/// in one order, and lists the same members.
async fn three_rooms_on_two_instances(url: &str) {
    const ROOMS: [&str; 3] = ["red", "green", "blue"];
    const EACH: usize = 40;
    let (a, b) = (TestServer::start(fast_config(url)).await, TestServer::start(fast_config(url)).await);

    // Per room: a sender and a reader on each instance, joined one by one.
    let mut clients = Vec::new();
    for room in ROOMS {
        for (server, label) in [(&a, "A"), (&b, "B")] {
            for role in ["send", "read"] {
                let name = format!("{role}{label}{room}");
                let mut client = server.client().await;
                let welcome = client.hello(&name, room).await;
                clients.push((room, name, role == "send", client, welcome));
            }
        }
    }
    let mut tasks = JoinSet::new();
    for (room, name, sends, mut client, welcome) in clients {
        tasks.spawn(async move {
            let mine = if sends { script(&name, EACH) } else { Vec::new() };
            for (cid, text) in &mine {
                client.say(cid, text).await;
            }
            let mut seen = Seen::after(&welcome);
            seen.read(&mut client, 2 * EACH, &mine.into_iter().collect()).await;
            (room, name, seen, members_of(&mut client).await)
        });
    }
    let mut by_room: HashMap<&str, Vec<(String, Seen)>> = HashMap::new();
    while let Some(done) = tasks.join_next().await {
        let (room, name, seen, members) = done.expect("a client task");
        seen.assert_complete(&name);
        // Every client lists the room's four members, whichever instance it is on.
        let mut expected: Vec<String> =
            ["sendA", "readA", "sendB", "readB"].iter().map(|p| format!("{p}{room}")).collect();
        expected.sort_by_key(|n| n.to_lowercase());
        assert_eq!(members, expected, "{name}: the members of every instance");
        by_room.entry(room).or_default().push((name, seen));
    }
    for room in ROOMS {
        let seen = &by_room[room];
        assert_eq!(seen.len(), 4);
        let (first_name, first) = &seen[0];
        let texts: std::collections::HashSet<&str> = first.messages.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(texts.len(), 2 * EACH, "{room}: no message twice");
        assert!(first.messages.windows(2).all(|w| w[0].0 < w[1].0), "{room}: messages in seq order");
        for (name, other) in &seen[1..] {
            assert_eq!(other.messages, first.messages, "{room}: {name} and {first_name} saw the same");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_moves_to_another_instance_resumes_from_its_last_seq() {
    let redis = RedisServer::start();
    let a = TestServer::start(fast_config(&redis.url())).await;
    // B keeps only the latest 2 events in memory: her replay is read from the stream.
    let mut small = fast_config(&redis.url());
    small.limits.welcome_history = 2;
    let b = TestServer::start(small).await;
    let mut cy = a.client().await;
    let _ = cy.hello("Cy", "lobby").await;
    let mut ada = a.client().await;
    let ada_w = ada.hello("Ada", "lobby").await;
    let mut ada_seen = Seen::after(&ada_w);

    let before = script("Cy", 5);
    for (cid, text) in &before {
        cy.say(cid, text).await;
    }
    let mut cy_seen = Seen::default();
    let mut cy_own: HashMap<String, String> = before.iter().cloned().collect();
    cy_seen.read(&mut cy, 5, &cy_own).await;
    ada_seen.read(&mut ada, 5, &HashMap::new()).await;
    ada_seen.assert_complete("Ada on A");
    let last = *ada_seen.seqs.last().expect("seen something");
    ada.drop_connection();

    // Sent while Ada is away; on A, which she left.
    let during: Vec<(String, String)> = (5..10).map(|i| (format!("Cy-{i}"), format!("Cy says {i}"))).collect();
    for (cid, text) in &during {
        cy.say(cid, text).await;
    }
    cy_own.extend(during.iter().cloned());
    cy_seen.read(&mut cy, 10, &cy_own).await;

    // Back on B with the last seq she had (and the history id it belongs to).
    let mut ada = b.client().await;
    let hello = Hello {
        history_id: Some(ada_w.history_id.clone()),
        ..resume("Ada", "lobby", last, Some(ada_w.resume_token.as_str()))
    };
    let back = match ada.hello_with(hello).await {
        ServerMsg::Welcome(w) => w,
        other => panic!("expected a welcome, got {other:?}"),
    };
    assert_eq!(back.history_id, ada_w.history_id, "one history on both instances");
    let mut replay = Seen { start: last, ..Seen::default() };
    back.history.iter().for_each(|e| replay.event(e));
    assert_eq!(replay.seqs.last(), Some(&back.seq_head), "the replay reaches the head");
    let texts: Vec<&str> = replay.messages.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(texts, during.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>(), "exactly what she missed");

    // And what comes next arrives live, right after the replay.
    cy.say("Cy-10", "Cy says 10").await;
    replay.read(&mut ada, 6, &HashMap::new()).await;
    replay.assert_complete("Ada on B");
    assert_eq!(replay.messages.last().map(|(_, t)| t.as_str()), Some("Cy says 10"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_whose_subscription_drops_fills_what_it_missed_from_the_stream() {
    const BURSTS: usize = 6;
    const EACH: usize = 10;
    let redis = RedisServer::start();
    let a = TestServer::start(fast_config(&redis.url())).await;
    let b = TestServer::start_with_metrics(fast_config(&redis.url())).await;
    let mut ada = a.client().await;
    let ada_w = ada.hello("Ada", "lobby").await;
    let mut bob = b.client().await;
    let bob_w = bob.hello("Bob", "lobby").await;
    let mut cy = b.client().await;
    let cy_w = cy.hello("Cy", "lobby").await;

    // Ada (on A) sends in bursts; right before each, every subscription
    // connection is killed, so B's drops while A's writes go on. The last
    // burst is the end: only B's resync after reconnecting can bring it.
    let mut mine = HashMap::new();
    for burst in 0..BURSTS {
        let killed = redis.command(&["CLIENT", "KILL", "TYPE", "pubsub"]);
        if burst == 0 {
            // Later kills may find a subscription still reconnecting.
            assert_eq!(killed.as_deref(), Some(":2"), "both instances' subscriptions were killed");
        }
        for (cid, text) in script(&format!("Ada{burst}"), EACH) {
            ada.say(&cid, &text).await;
            mine.insert(cid, text);
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let total = BURSTS * EACH;
    let mut ada_seen = Seen::after(&ada_w);
    ada_seen.read(&mut ada, total, &mine).await;
    ada_seen.assert_complete("Ada on A");
    for (client, welcome, who) in [(&mut bob, &bob_w, "Bob on B"), (&mut cy, &cy_w, "Cy on B")] {
        let mut seen = Seen::after(welcome);
        seen.read(client, total, &HashMap::new()).await;
        seen.assert_complete(who);
        let tail: Vec<_> = ada_seen.messages.iter().filter(|(seq, _)| *seq > welcome.seq_head).cloned().collect();
        assert_eq!(seen.messages, tail, "{who} saw Ada's messages as she did");
    }

    // One more drop, and a message at once: B most likely subscribes again
    // only after it was published, so only the read after subscribing brings it.
    assert_eq!(redis.command(&["CLIENT", "KILL", "TYPE", "pubsub"]).as_deref(), Some(":2"));
    ada.say("late", "after the storm").await;
    let mut seen = Seen::default();
    seen.read(&mut bob, 1, &HashMap::new()).await;
    assert_eq!(seen.messages[0].1, "after the storm");
    // B says what it went through.
    let (_, _, metrics) = common::http_get(b.metrics.expect("a metrics listener"), "/metrics").await;
    let count = |name: &str| -> u64 {
        let line = metrics.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name} in {metrics}"));
        line.rsplit(' ').next().and_then(|n| n.parse().ok()).expect("a count")
    };
    assert!(count("natter_resubscribes_total") >= 1, "{metrics}");
    assert!(count("natter_fanout_batches_total") >= 1, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_let_go_are_unsubscribed_and_held_ones_stay_subscribed() {
    let stale_max = natter_backend::store::redis::STALE_SUBSCRIPTIONS_MAX;
    let redis = RedisServer::start();
    let mut config = fast_config(&redis.url());
    config.limits.max_rooms = 4;
    config.limits.max_rooms_per_address = 4;
    let a = TestServer::start(config).await;
    let b = TestServer::start(fast_config(&redis.url())).await;
    let mut ada = a.client().await;
    let ada_w = ada.hello("Ada", "keep").await;
    let mut bob = b.client().await;
    let _ = bob.hello("Bob", "keep").await;

    // Rooms visited one after another on A: each is let go for the next.
    let visited = stale_max + 8;
    for i in 0..visited {
        // A room is let go once its last leave is stored: until then, A is full.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let mut client = a.client().await;
            match client.hello_with(common::hello("Cy", &format!("room{i}"))).await {
                ServerMsg::Welcome(_) => {
                    client.close().await;
                    break;
                }
                ServerMsg::Error(e) if e.code == natter_shared::ErrorCode::TooManyRooms => {
                    assert!(tokio::time::Instant::now() < deadline, "room{i}: A stays full");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                other => panic!("expected a welcome, got {other:?}"),
            }
        }
    }
    let channels = || {
        let reply = redis.command(&["PUBSUB", "SHARDCHANNELS"]).expect("an answer");
        reply.trim_start_matches('*').parse::<usize>().expect("an array")
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while channels() > 4 + 8 + 1 {
        assert!(tokio::time::Instant::now() < deadline, "still {} channels subscribed", channels());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The room A holds is still heard there.
    bob.say("b1", "still here").await;
    let mut seen = Seen::after(&ada_w);
    seen.read(&mut ada, 1, &HashMap::new()).await;
    seen.assert_complete("Ada on A");
    assert_eq!(seen.messages.last().map(|(_, t)| t.as_str()), Some("still here"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_of_two_instances_stopped_together_all_resume_after_the_restart() {
    let redis = RedisServer::start();
    let (a, b) = two_instances(&redis).await;
    let mut ada = a.client().await;
    let ada_w = ada.hello("Ada", "lobby").await;
    let mut bob = b.client().await;
    let bob_w = bob.hello("Bob", "hall").await;
    // Each instance saves its own members; neither replaces the other's.
    a.shutdown().await.expect("A stops cleanly");
    b.shutdown().await.expect("B stops cleanly");
    drop((ada, bob));

    let c = TestServer::start(fast_config(&redis.url())).await;
    for (name, room, w) in [("Ada", "lobby", &ada_w), ("Bob", "hall", &bob_w)] {
        let mut client = c.client().await;
        let hello = Hello {
            history_id: Some(w.history_id.clone()),
            ..resume(name, room, Seq(w.seq_head.0 + 1), Some(w.resume_token.as_str()))
        };
        let back = match client.hello_with(hello).await {
            ServerMsg::Welcome(w) => w,
            other => panic!("expected a welcome, got {other:?}"),
        };
        assert!(back.history.is_empty(), "{name}: a silent resume, no join of its own: {:?}", back.history);
        client.expect_quiet().await;
    }
}

/// On a cluster, the persistence settings of every master are read: one
/// node without `appendfsync always` is refused, and named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_a_master_that_would_lose_acks_is_named_and_refused() {
    let cluster = RedisCluster::start();
    let lax = &cluster.nodes[2];
    assert_eq!(lax.command(&["CONFIG", "SET", "appendfsync", "everysec"]).as_deref(), Some("+OK"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let run = natter_backend::run(fast_config(&cluster.url()), listener, std::future::pending::<()>());
    let refused = match tokio::time::timeout(SETTLE, run).await {
        Ok(Err(e)) => e.to_string(),
        Ok(Ok(())) => panic!("the server ran and stopped instead of refusing"),
        Err(_) => panic!("the server did not refuse"),
    };
    assert!(refused.contains(&format!("127.0.0.1:{}", lax.port)), "names the node: {refused}");
    assert!(refused.contains(r#"appendfsync is "everysec" (needs "always")"#), "{refused}");
    // Node 0 is in the --redis URL the message starts with; node 1 is fine.
    let fine = format!("cluster node 127.0.0.1:{}", cluster.nodes[1].port);
    assert!(!refused.contains(&fine), "only the lax node: {refused}");
}
