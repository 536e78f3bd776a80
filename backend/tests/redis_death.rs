//! An instance killed with SIGKILL while its members send (issue 15, stage
//! 4): their pages reconnect to another instance (as through a load
//! balancer), resume with their tokens and send again what was not
//! acknowledged; every acknowledged message is then in the room exactly
//! once, for everyone, and the members who do not come back are announced
//! `timed_out` exactly once, by one of the two survivors.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::natter_binary::Natter;
use common::redis_server::RedisServer;
use common::{Client, TestServer, redis_config, resume};
use natter_backend::Config;
use natter_backend::config::HistoryKind;
use natter_shared::{Hello, NoticeKind, RoomEvent, Seq, ServerMsg};

/// The instances' liveness TTL and grace period (the killed one's are flags).
const TTL: Duration = Duration::from_secs(1);
const GRACE: Duration = Duration::from_millis(500);
/// Messages Ada sends; she waits for the acks of the first half only.
const SENT: usize = 40;

fn survivor_config(url: &str) -> Config {
    let mut config = redis_config(url);
    if let HistoryKind::Redis(redis) = &mut config.history {
        redis.instance_ttl = TTL;
    }
    config.timing.leave_grace = GRACE;
    config.rate.per_sec = 10_000;
    config.rate.burst = 10_000;
    config
}

/// What a watcher saw: every message (seq, cid) and every presence notice.
#[derive(Debug, Default)]
struct Watched {
    messages: Vec<(Seq, String)>,
    notices: Vec<(NoticeKind, String)>,
}

impl Watched {
    fn take(&mut self, msg: ServerMsg) {
        let mut event = |e: RoomEvent| match e {
            RoomEvent::Message(m) => {
                self.messages.push((m.seq, m.cid.map(|c| c.as_str().to_owned()).unwrap_or_default()))
            }
            RoomEvent::Notice(n) => self.notices.push((n.kind, n.name.as_str().to_owned())),
        };
        match msg {
            ServerMsg::Message(m) => event(RoomEvent::Message(m)),
            ServerMsg::Notice(n) => event(RoomEvent::Notice(n)),
            ServerMsg::Notices(batch) => batch.notices.into_iter().for_each(|n| event(RoomEvent::Notice(n))),
            _ => {}
        }
    }

    /// Reads for `wait`, or until `done` holds.
    async fn watch(&mut self, client: &mut Client, wait: Duration, done: impl Fn(&Self) -> bool) {
        let deadline = tokio::time::Instant::now() + wait;
        while !done(self) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match client.try_recv(left.min(Duration::from_millis(200))).await {
                Some(msg) => self.take(msg),
                None if left.is_zero() => return,
                None => {}
            }
        }
    }

    fn timed_out(&self, name: &str) -> usize {
        self.notices.iter().filter(|(k, n)| *k == NoticeKind::TimedOut && n == name).count()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instances_members_resume_elsewhere_and_those_who_do_not_time_out_once() {
    let redis = RedisServer::start();
    let a = Natter::start_with(
        &redis.url(),
        &["--leave-grace", "500ms", "--rate-per-sec", "10000", "--rate-burst", "10000"],
    );
    let b = TestServer::start(survivor_config(&redis.url())).await;
    let c = TestServer::start(survivor_config(&redis.url())).await;
    let (mut cy, _) = b.joined("Cy", "lobby").await;
    let (mut dee, _) = c.joined("Dee", "lobby").await;
    let mut ada = Client::connect(&a.url()).await;
    let ada_w = ada.hello("Ada", "lobby").await;
    let mut bo = Client::connect(&a.url()).await;
    let _ = bo.hello("Bo", "lobby").await;

    // Ada sends; A is killed while the second half is on its way.
    let mut acked: HashMap<String, Seq> = HashMap::new();
    let mut last = ada_w.seq_head;
    for i in 0..SENT / 2 {
        ada.say(&format!("a{i}"), &format!("Ada says {i}")).await;
    }
    while acked.len() < SENT / 2 {
        match ada.recv().await {
            ServerMsg::Ack(ack) => {
                last = last.max(ack.seq);
                acked.insert(ack.cid.as_str().to_owned(), ack.seq);
            }
            ServerMsg::Message(m) => last = last.max(m.seq),
            ServerMsg::Notice(n) => last = last.max(n.seq),
            _ => {}
        }
    }
    for i in SENT / 2..SENT {
        ada.say(&format!("a{i}"), &format!("Ada says {i}")).await;
    }
    a.kill();
    // What A acknowledged before it died (the page would have shown those as sent).
    for msg in ada.until_gone().await {
        if let ServerMsg::Ack(ack) = msg {
            acked.insert(ack.cid.as_str().to_owned(), ack.seq);
        }
    }
    drop(ada);
    drop(bo);

    // Ada's page comes back through the balancer, to B, and sends again what is not acknowledged.
    let mut ada = b.client().await;
    let hello = Hello {
        history_id: Some(ada_w.history_id.clone()),
        ..resume("Ada", "lobby", last, Some(ada_w.resume_token.as_str()))
    };
    let back = match ada.hello_with(hello).await {
        ServerMsg::Welcome(w) => w,
        other => panic!("Ada expected a welcome on B, got {other:?}"),
    };
    assert_eq!(back.history_id, ada_w.history_id, "the same history");
    // Her own messages in the replay count as sent, under their seqs.
    for event in &back.history {
        if let RoomEvent::Message(m) = event
            && let Some(cid) = &m.cid
        {
            acked.insert(cid.as_str().to_owned(), m.seq);
        }
    }
    let unacknowledged: Vec<usize> = (0..SENT).filter(|i| !acked.contains_key(&format!("a{i}"))).collect();
    for i in unacknowledged {
        let cid = format!("a{i}");
        ada.say(&cid, &format!("Ada says {i}")).await;
        match ada.recv().await {
            ServerMsg::Ack(ack) => {
                acked.insert(cid, ack.seq);
            }
            other => panic!("expected the ack of {cid}, got {other:?}"),
        }
    }

    // Bo never comes back: after A's TTL, the grace period and a look by
    // the survivors, he is announced timed out, once, to everyone.
    let settle = TTL * 4 + GRACE + Duration::from_secs(4);
    let (mut on_b, mut on_c) = (Watched::default(), Watched::default());
    let all_sent = |w: &Watched| w.messages.len() >= SENT && w.timed_out("Bo") >= 1;
    on_b.watch(&mut cy, settle, all_sent).await;
    on_c.watch(&mut dee, settle, all_sent).await;
    // And nothing more comes after it.
    on_b.watch(&mut cy, TTL * 2, |_| false).await;
    on_c.watch(&mut dee, Duration::from_millis(300), |_| false).await;

    for (who, seen) in [("Cy on B", &on_b), ("Dee on C", &on_c)] {
        assert_eq!(seen.timed_out("Bo"), 1, "{who}: Bo timed out exactly once: {:?}", seen.notices);
        let of_ada: Vec<NoticeKind> = seen.notices.iter().filter(|(_, n)| n == "Ada").map(|(k, _)| *k).collect();
        assert_eq!(of_ada, [NoticeKind::Joined], "{who}: Ada joined once, and her move was no news");
        let mut cids: Vec<&str> = seen.messages.iter().map(|(_, c)| c.as_str()).collect();
        cids.sort_unstable();
        let before = cids.len();
        cids.dedup();
        assert_eq!(before, cids.len(), "{who}: no message twice");
        assert_eq!(cids.len(), SENT, "{who}: all of Ada's messages");
        for (seq, cid) in &seen.messages {
            assert_eq!(acked.get(cid), Some(seq), "{who}: {cid} under the seq Ada was acknowledged with");
        }
    }
    assert_eq!(redis.command(&["HLEN", "natter:{lobby}:n"]).as_deref(), Some(":3"), "Cy, Dee and Ada hold names");
}
