//! Presence in big rooms, over real sockets: past the threshold, joins and
//! leaves go out as batched `presence` frames (not stored), a welcome lists
//! one page of members and the count, and `members` pages walk the rest.

mod common;

use std::time::Duration;

use common::{Client, TestServer, config};
use natter_shared::limits::MEMBERS_PAGE_MAX;
use natter_shared::{ClientMsg, HistoryRequest, MembersRequest, Presence, Seq, ServerMsg};

/// Every frame a client gets within `quiet` of the last one.
async fn drain(c: &mut Client, quiet: Duration) -> Vec<ServerMsg> {
    let mut got = Vec::new();
    while let Some(msg) = c.try_recv(quiet).await {
        got.push(msg);
    }
    got
}

#[tokio::test]
async fn a_big_room_batches_presence_and_stores_none_of_it() {
    let mut cfg = config();
    cfg.limits.presence_threshold = 3;
    cfg.limits.presence_interval = Duration::from_millis(300);
    let server = TestServer::start(cfg).await;
    // Three members: a small room, each join a stored notice.
    let (mut ada, _) = server.joined("Ada", "big").await;
    let (_bob, _) = server.joined("Bob", "big").await;
    let (_cy, _) = server.joined("Cy", "big").await;
    assert!(drain(&mut ada, Duration::from_millis(100)).await.iter().all(|m| matches!(m, ServerMsg::Notice(_))));
    // Twenty more, quickly: batched.
    let mut late = Vec::new();
    for i in 0..20 {
        let mut c = server.client().await;
        let w = c.hello(&format!("late{i:02}"), "big").await;
        assert_eq!(w.member_count as usize, 4 + i, "the count includes the joiner");
        late.push(c);
    }
    let got = drain(&mut ada, Duration::from_millis(800)).await;
    assert!(got.iter().all(|m| matches!(m, ServerMsg::Presence(_))), "no notice past the threshold: {got:?}");
    let batches: Vec<&Presence> = got
        .iter()
        .filter_map(|m| match m {
            ServerMsg::Presence(p) => Some(p),
            _ => None,
        })
        .collect();
    assert!((1..=3).contains(&batches.len()), "a few batches for 20 joins, not 20 frames: {}", batches.len());
    let announced: u32 = batches.iter().map(|p| p.joined.len() as u32 + p.more_joined).sum();
    assert_eq!(announced, 20, "every join counted once");
    assert_eq!(batches.last().map(|p| p.count), Some(23));
    // Nothing of it is stored: the history holds the three small-room joins.
    ada.send(&ClientMsg::History(HistoryRequest { before: Seq(u64::MAX), limit: 100 })).await;
    match ada.recv().await {
        ServerMsg::History(page) => assert_eq!(page.events.len(), 3, "{:?}", page.events),
        other => panic!("expected history, got {other:?}"),
    }
    // Five leave: one batch says so, with the new count.
    for c in late.drain(..5) {
        c.close().await;
    }
    let got = drain(&mut ada, Duration::from_millis(800)).await;
    let left: u32 = got
        .iter()
        .map(|m| match m {
            ServerMsg::Presence(p) => p.left.len() as u32 + p.more_left,
            other => panic!("expected presence, got {other:?}"),
        })
        .sum();
    assert_eq!(left, 5);
    assert!(matches!(got.last(), Some(ServerMsg::Presence(p)) if p.count == 18));
}

#[tokio::test]
async fn a_welcome_carries_one_page_and_members_pages_walk_the_rest() {
    let mut cfg = config();
    cfg.limits.presence_threshold = 1;
    cfg.rate.burst = 1_000;
    let server = TestServer::start(cfg).await;
    let total = MEMBERS_PAGE_MAX as usize + 20;
    let mut clients = Vec::new();
    for i in 0..total {
        let mut c = server.client().await;
        c.hello(&format!("m{i:03}"), "crowd").await;
        clients.push(c);
    }
    let mut last = server.client().await;
    let w = last.hello("zz", "crowd").await;
    assert_eq!(w.member_count as usize, total + 1);
    assert_eq!(w.members.len(), MEMBERS_PAGE_MAX as usize, "one page in the welcome");
    let mut names: Vec<String> = w.members.iter().map(|m| m.name.to_string()).collect();
    loop {
        let after = names.last().cloned();
        last.send(&ClientMsg::Members(MembersRequest { after, limit: 50 })).await;
        let page = loop {
            match last.recv().await {
                ServerMsg::Members(page) => break page,
                ServerMsg::Presence(_) => continue,
                other => panic!("expected members, got {other:?}"),
            }
        };
        names.extend(page.members.iter().map(|m| m.name.to_string()));
        if page.complete {
            break;
        }
    }
    let mut expected: Vec<String> = (0..total).map(|i| format!("m{i:03}")).collect();
    expected.push("zz".into());
    assert_eq!(names, expected, "every member once, in the page's order");
}
