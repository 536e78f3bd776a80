//! Members that read every server message from the moment they connect, for
//! the scenarios whose figure is what the server sends (`bigroom`) or whether
//! a member's events survive a restart (`resume`). Each member runs in a task
//! of its own until the server ends its connection or the scenario stops it:
//! it counts every message by its `type`, answers pings, and keeps what a page
//! keeps to resume (the token, the history id, the highest seq seen) and, when
//! asked, every seq it saw, to check for losses and duplicates.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use natter_shared::{ClientMsg, Hello, Seq};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinHandle;

use crate::client::{
    JOIN_TIMEOUT, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT, READ_CHUNK, Ws, close_code, connect, frame,
    parse, read_more, source, text, write_all,
};
use crate::stats::Samples;

/// A reader's buffer above this capacity (a big welcome was in it) is
/// shrunk once it is nearly empty, so 5,000 members do not each keep one.
const KEEP_BUFFER: usize = 4 * READ_CHUNK;
/// How often [`Crowd::end`] looks whether every member has ended by itself.
const END_POLL: Duration = Duration::from_millis(20);

/// What a server message is, by its `type`; `Control` is a ping or close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Welcome,
    Message,
    Notice,
    /// Several stored notices of one commit in one frame.
    Notices,
    /// The ephemeral presence frame (no seq) of a big room.
    Presence,
    Ack,
    Error,
    Control,
    Other,
}

/// How many kinds there are.
const KINDS: usize = Kind::Other as usize + 1;

impl Kind {
    /// The kind of a server message from the start of its JSON (natter
    /// writes `type` first).
    pub fn of(payload: &[u8]) -> Self {
        let Some(rest) = payload.strip_prefix(br#"{"type":""#) else { return Self::Other };
        let name = rest.iter().position(|&b| b == b'"').map_or(rest, |end| &rest[..end]);
        match name {
            b"welcome" => Self::Welcome,
            b"message" => Self::Message,
            b"notice" => Self::Notice,
            b"notices" => Self::Notices,
            b"presence" => Self::Presence,
            b"ack" => Self::Ack,
            b"error" => Self::Error,
            _ => Self::Other,
        }
    }
}

/// The first `"seq":` number in a message: an event's own seq (natter
/// writes it right after `type`) or an ack's (after the `cid`, whose
/// characters cannot include a quote).
pub fn seq_of(payload: &[u8]) -> Option<u64> {
    const KEY: &[u8] = br#""seq":"#;
    let at = payload.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits = &payload[at..];
    let end = digits.iter().position(|c| !c.is_ascii_digit()).unwrap_or(digits.len());
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

/// Every `"seq":` number in a message, in order (the notices of a `notices` frame).
pub fn seqs_of(payload: &[u8]) -> Vec<u64> {
    let mut seqs = Vec::new();
    let mut rest = payload;
    while let Some(seq) = seq_of(rest) {
        seqs.push(seq);
        const KEY: &[u8] = br#""seq":"#;
        let Some(at) = rest.windows(KEY.len()).position(|w| w == KEY) else { break };
        rest = &rest[at + KEY.len()..];
    }
    seqs
}

/// Server messages a crowd received, by kind.
#[derive(Debug, Default)]
pub struct Tally([AtomicU64; KINDS]);

impl Tally {
    pub fn get(&self, kind: Kind) -> u64 {
        self.0[kind as usize].load(Ordering::Relaxed)
    }

    /// Every message and control frame.
    pub fn total(&self) -> u64 {
        self.0.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    fn add(&self, local: &mut [u64; KINDS]) {
        for (count, n) in self.0.iter().zip(local.iter_mut()) {
            if *n > 0 {
                count.fetch_add(std::mem::take(n), Ordering::Relaxed);
            }
        }
    }
}

/// What one member knows and saw, over all its connections.
#[derive(Debug, Default, Clone)]
pub struct Track {
    /// Whether a hello of this member was ever welcomed.
    pub welcomed: bool,
    pub resume_token: Option<String>,
    pub history_id: Option<String>,
    /// The `seq_head` of the first welcome.
    pub first_head: Option<u64>,
    /// The highest seq seen: a welcome's head, an event's or an ack's.
    pub last_seq: u64,
    /// Every seq seen after the first welcome (live events, replayed events
    /// and acks of its own messages), in arrival order; only when kept.
    pub seqs: Vec<u64>,
    /// The `last_seq` of the resuming hello, once one was sent.
    pub resumed_from: Option<u64>,
    /// Events in the resume's `welcome.history`, and the notices among them.
    pub replayed: u64,
    pub replayed_notices: u64,
    /// The resume welcome's `missed`.
    pub missed: u64,
    /// Whether the resume welcome named another history than the first.
    pub history_changed: bool,
    /// The code of the close frame that ended the last connection, if any.
    pub close: Option<u16>,
    /// Whether the last hello was refused with an `error`.
    pub refused: bool,
}

/// A client of a scenario: which room it joins as whom, and its track.
#[derive(Debug, Clone)]
pub struct Member {
    pub index: usize,
    pub room: String,
    pub name: String,
    pub track: Track,
}

impl Member {
    pub fn new(index: usize, room: String, name: String) -> Self {
        Self { index, room, name, track: Track::default() }
    }

    /// The hello to send: a fresh join the first time; after a welcome, a
    /// resume with the last seq, the token and the history id, as the page
    /// sends after a dropped connection.
    fn hello(&mut self) -> String {
        let mut hello = Hello::new(&self.name, &self.room);
        if self.track.welcomed {
            hello.last_seq = Some(Seq(self.track.last_seq));
            hello.resume_token = self.track.resume_token.clone();
            hello.history_id = self.track.history_id.clone();
            self.track.resumed_from = Some(self.track.last_seq);
        }
        serde_json::to_string(&ClientMsg::Hello(hello)).unwrap_or_default()
    }
}

/// What a scenario watches while its members read, by member index.
#[derive(Debug)]
pub struct Progress {
    last_seq: Vec<AtomicU64>,
    acks: Vec<AtomicU64>,
    last_ack: Vec<AtomicU64>,
}

impl Progress {
    fn new(members: usize) -> Self {
        let zeros = || (0..members).map(|_| AtomicU64::new(0)).collect();
        Self { last_seq: zeros(), acks: zeros(), last_ack: zeros() }
    }

    /// The highest seq member `i` has seen.
    pub fn last_seq(&self, i: usize) -> u64 {
        self.last_seq.get(i).map_or(0, |a| a.load(Ordering::Relaxed))
    }

    /// Acks member `i` has received on this connection.
    pub fn acks(&self, i: usize) -> u64 {
        self.acks.get(i).map_or(0, |a| a.load(Ordering::Relaxed))
    }

    /// The seq of the last ack member `i` received.
    pub fn last_ack(&self, i: usize) -> u64 {
        self.last_ack.get(i).map_or(0, |a| a.load(Ordering::Relaxed))
    }
}

/// How a crowd connects.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub addr: SocketAddr,
    /// Handshakes in flight (connect to welcome).
    pub parallel: usize,
    /// Whether members keep every seq they see.
    pub keep_seqs: bool,
    /// Members with an index below this keep their socket for sending.
    pub senders: usize,
    /// No member is started, and no welcome waited for, after this.
    pub deadline: Instant,
}

/// How one member's hello went.
#[derive(Debug)]
enum Joined {
    Welcomed { index: usize, took: Duration, at: Instant, stream: Option<Arc<TcpStream>> },
    Refused,
    Failed { error: String },
}

/// Members connected by [`open`], reading in their tasks.
#[derive(Debug)]
pub struct Crowd {
    /// Connect-to-welcome times.
    pub welcome: Samples,
    /// Indices of the members welcomed.
    pub welcomed: Vec<usize>,
    pub refused: usize,
    pub failed: usize,
    /// Members started whose hello had no answer by the deadline.
    pub pending: usize,
    /// Members not started before the deadline.
    pub not_started: usize,
    pub first_error: Option<String>,
    /// From the first connect to the last welcome.
    pub took: Duration,
    pub last_welcome: Instant,
    /// The sockets of the welcomed senders, by index.
    pub streams: BTreeMap<usize, Arc<TcpStream>>,
    pub tally: Arc<Tally>,
    pub progress: Arc<Progress>,
    handles: Vec<JoinHandle<Member>>,
    unstarted: Vec<Member>,
    stop: watch::Sender<bool>,
}

/// Connects `members`, `plan.parallel` handshakes at a time, each sending its
/// hello (fresh or resuming, see [`Member`]) and reading from then on, and
/// returns once every started member's hello was answered (or failed) or the
/// deadline passed.
pub async fn open(plan: &Plan, members: Vec<Member>) -> Crowd {
    let size = members.iter().map(|m| m.index + 1).max().unwrap_or(0);
    let tally = Arc::new(Tally::default());
    let progress = Arc::new(Progress::new(size));
    let (stop, stop_rx) = watch::channel(false);
    // Every member reports once, so a channel as long as the crowd never fills.
    let (joined_tx, mut joined_rx) = mpsc::channel(members.len().max(1));
    let gate = Arc::new(Semaphore::new(plan.parallel));
    let deadline = tokio::time::Instant::from_std(plan.deadline);
    let started = Instant::now();
    let mut handles = Vec::with_capacity(members.len());
    let mut unstarted = Vec::new();
    let mut members = members.into_iter();
    for mut member in members.by_ref() {
        let Ok(Ok(permit)) = tokio::time::timeout_at(deadline, gate.clone().acquire_owned()).await else {
            unstarted.push(member);
            break;
        };
        let hello = member.hello();
        let ctx = Ctx {
            addr: plan.addr,
            tally: tally.clone(),
            progress: progress.clone(),
            stop: stop_rx.clone(),
            joined: joined_tx.clone(),
            keep_seqs: plan.keep_seqs,
            keep_stream: member.index < plan.senders,
        };
        handles.push(tokio::spawn(run(ctx, member, hello, permit)));
    }
    unstarted.extend(members);
    drop(joined_tx);
    let mut crowd = Crowd {
        welcome: Samples::default(),
        welcomed: Vec::new(),
        refused: 0,
        failed: 0,
        pending: handles.len(),
        not_started: unstarted.len(),
        first_error: None,
        took: Duration::ZERO,
        last_welcome: started,
        streams: BTreeMap::new(),
        tally,
        progress,
        handles,
        unstarted,
        stop,
    };
    while crowd.pending > 0 {
        let Ok(Some(joined)) = tokio::time::timeout_at(deadline, joined_rx.recv()).await else { break };
        crowd.pending -= 1;
        match joined {
            Joined::Welcomed { index, took, at, stream } => {
                crowd.welcome.push(took);
                crowd.welcomed.push(index);
                crowd.last_welcome = crowd.last_welcome.max(at);
                if let Some(stream) = stream {
                    crowd.streams.insert(index, stream);
                }
            }
            Joined::Refused => crowd.refused += 1,
            Joined::Failed { error } => {
                crowd.failed += 1;
                crowd.first_error.get_or_insert(error);
            }
        }
    }
    crowd.took = crowd.last_welcome - started;
    crowd
}

impl Crowd {
    /// Welcomed members per second, from the first connect to the last welcome.
    pub fn connects_per_sec(&self) -> f64 {
        self.welcomed.len() as f64 / self.took.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    /// Ends the crowd: waits up to `grace` for every member to end by itself
    /// (its connection closed), stops the others, and returns every member
    /// with its track, in index order, and how many tasks were lost (none
    /// unless one panicked).
    pub async fn end(mut self, grace: Duration) -> (Vec<Member>, usize) {
        self.streams.clear();
        let until = Instant::now() + grace;
        while Instant::now() < until && !self.handles.iter().all(JoinHandle::is_finished) {
            tokio::time::sleep(END_POLL).await;
        }
        // Fails only when every member has ended already.
        let _ = self.stop.send(true);
        let mut members = self.unstarted;
        let mut lost = 0;
        for handle in self.handles {
            match handle.await {
                Ok(member) => members.push(member),
                Err(_) => lost += 1,
            }
        }
        members.sort_by_key(|m| m.index);
        (members, lost)
    }
}

/// What a member's task shares with the scenario.
#[derive(Debug)]
struct Ctx {
    addr: SocketAddr,
    tally: Arc<Tally>,
    progress: Arc<Progress>,
    stop: watch::Receiver<bool>,
    joined: mpsc::Sender<Joined>,
    keep_seqs: bool,
    keep_stream: bool,
}

/// A member's reading state.
#[derive(Debug)]
struct Reader {
    ctx: Ctx,
    member: Member,
    began: Instant,
    /// The handshake slot, given back at the welcome.
    permit: Option<OwnedSemaphorePermit>,
    /// Whether the hello was answered (welcome, refusal or failure reported).
    answered: bool,
    joined: bool,
    /// Whether the connection is over (close frame, refusal).
    done: bool,
    counts: [u64; KINDS],
}

impl Reader {
    fn report(&mut self, joined: Joined) {
        if !self.answered {
            self.answered = true;
            self.permit = None;
            // The scenario may have stopped listening (its deadline passed).
            let _ = self.ctx.joined.try_send(joined);
        }
    }

    fn fail(&mut self, error: String) {
        self.report(Joined::Failed { error });
    }

    fn saw(&mut self, seq: u64) {
        if self.ctx.keep_seqs {
            self.member.track.seqs.push(seq);
        }
        self.member.track.last_seq = self.member.track.last_seq.max(seq);
    }

    fn message(&mut self, payload: &[u8], stream: &Arc<TcpStream>) {
        let kind = Kind::of(payload);
        self.counts[kind as usize] += 1;
        if !self.joined {
            match kind {
                Kind::Welcome => self.welcome(payload, stream),
                Kind::Error => {
                    self.member.track.refused = true;
                    self.report(Joined::Refused);
                    self.done = true;
                }
                _ => {}
            }
            return;
        }
        match kind {
            Kind::Message | Kind::Notice => {
                if let Some(seq) = seq_of(payload) {
                    self.saw(seq);
                }
            }
            Kind::Notices => {
                for seq in seqs_of(payload) {
                    self.saw(seq);
                }
            }
            Kind::Ack => {
                if let Some(seq) = seq_of(payload) {
                    self.saw(seq);
                    let i = self.member.index;
                    self.ctx.progress.acks[i].fetch_add(1, Ordering::Relaxed);
                    self.ctx.progress.last_ack[i].fetch_max(seq, Ordering::Relaxed);
                }
            }
            _ => {}
        }
    }

    fn welcome(&mut self, payload: &[u8], stream: &Arc<TcpStream>) {
        let welcome: Value = serde_json::from_slice(payload).unwrap_or(Value::Null);
        let head = welcome["seq_head"].as_u64();
        let history_id = welcome["history_id"].as_str().map(str::to_owned);
        if self.member.track.resumed_from.is_some() {
            let track = &mut self.member.track;
            track.history_changed = history_id != track.history_id;
            track.missed = welcome["missed"].as_u64().unwrap_or(0);
            let events = welcome["history"].as_array().map(Vec::as_slice).unwrap_or_default();
            for event in events {
                self.member.track.replayed += 1;
                if event["type"] == "notice" {
                    self.member.track.replayed_notices += 1;
                }
                if let Some(seq) = event["seq"].as_u64() {
                    self.saw(seq);
                }
            }
        } else {
            self.member.track.first_head = head;
        }
        let track = &mut self.member.track;
        track.welcomed = true;
        track.last_seq = track.last_seq.max(head.unwrap_or(0));
        track.resume_token = welcome["resume_token"].as_str().map(str::to_owned);
        track.history_id = history_id;
        self.joined = true;
        let at = Instant::now();
        let stream = self.ctx.keep_stream.then(|| stream.clone());
        self.report(Joined::Welcomed { index: self.member.index, took: at - self.began, at, stream });
    }

    /// Adds this batch's counts to the crowd's and publishes the progress.
    fn flush(&mut self) {
        self.ctx.tally.add(&mut self.counts);
        self.ctx.progress.last_seq[self.member.index].store(self.member.track.last_seq, Ordering::Relaxed);
    }
}

/// Reassembles fragmented text messages (natter sends none today; a
/// message split over frames still counts once).
#[derive(Debug, Default)]
struct Assembler {
    partial: Option<Vec<u8>>,
}

impl Assembler {
    /// Takes one text or continuation frame; returns the message it completes.
    fn push<'a>(&'a mut self, opcode: u8, fin: bool, payload: &'a [u8]) -> Option<Cow<'a, [u8]>> {
        match (opcode, fin, self.partial.as_mut()) {
            (OP_TEXT, true, _) => Some(Cow::Borrowed(payload)),
            (OP_TEXT, false, _) => {
                self.partial = Some(payload.to_vec());
                None
            }
            (_, _, Some(partial)) => {
                partial.extend_from_slice(payload);
                if fin { self.partial.take().map(Cow::Owned) } else { None }
            }
            // A continuation without a start: not a message.
            (_, _, None) => None,
        }
    }
}

/// One member's task: connect, hello, then read until the connection ends
/// or the scenario stops it. Returns the member with its track.
async fn run(ctx: Ctx, member: Member, hello: String, permit: OwnedSemaphorePermit) -> Member {
    let began = Instant::now();
    let join_deadline = tokio::time::Instant::from_std(began + JOIN_TIMEOUT);
    let mut stop = ctx.stop.clone();
    let (addr, from) = (ctx.addr, source(member.index));
    let mut reader = Reader {
        ctx,
        member,
        began,
        permit: Some(permit),
        answered: false,
        joined: false,
        done: false,
        counts: [0; KINDS],
    };
    let opening = async {
        let ws = connect(addr, from).await?;
        write_all(&ws.stream, &text(&hello)).await?;
        anyhow::Ok(ws)
    };
    let ws = tokio::select! {
        opened = tokio::time::timeout_at(join_deadline, opening) => match opened {
            Ok(Ok(ws)) => ws,
            Ok(Err(e)) => {
                reader.fail(format!("{e:#}"));
                return reader.member;
            }
            Err(_) => {
                reader.fail("no connection in time".to_owned());
                return reader.member;
            }
        },
        _ = stop.changed() => {
            reader.fail("stopped before connecting".to_owned());
            return reader.member;
        }
    };
    let Ws { stream, mut buf } = ws;
    let mut assembler = Assembler::default();
    loop {
        let mut at = 0;
        while let Some(f) = parse(&buf[at..]) {
            let payload = &buf[at + f.payload.0..at + f.payload.1];
            match f.opcode {
                OP_TEXT | OP_CONTINUATION => {
                    if let Some(message) = assembler.push(f.opcode, f.fin, payload) {
                        reader.message(&message, &stream);
                    }
                }
                OP_PING => {
                    reader.counts[Kind::Control as usize] += 1;
                    let mut pong = Vec::with_capacity(payload.len() + 6);
                    frame(OP_PONG, payload, &mut pong);
                    // Best effort: a pong that does not fit now is not owed.
                    let _ = stream.try_write(&pong);
                }
                OP_CLOSE => {
                    reader.counts[Kind::Control as usize] += 1;
                    reader.member.track.close = Some(close_code(payload));
                    reader.done = true;
                }
                _ => reader.counts[Kind::Control as usize] += 1,
            }
            at += f.len;
            if reader.done {
                break;
            }
        }
        buf.drain(..at);
        if buf.capacity() > KEEP_BUFFER && buf.len() < READ_CHUNK {
            buf.shrink_to(READ_CHUNK);
        }
        reader.flush();
        if reader.done {
            break;
        }
        tokio::select! {
            read = read_more(&stream, &mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            },
            _ = stop.changed() => break,
            () = tokio::time::sleep_until(join_deadline), if !reader.joined => {
                reader.fail("no welcome in time".to_owned());
                break;
            }
        }
    }
    if !reader.answered {
        reader.fail("the connection ended before the welcome".to_owned());
    }
    reader.member
}

/// How many members' connections ended with each close code.
pub fn close_codes(members: &[Member]) -> BTreeMap<u16, usize> {
    let mut codes = BTreeMap::new();
    for code in members.iter().filter_map(|m| m.track.close) {
        *codes.entry(code).or_insert(0) += 1;
    }
    codes
}

/// Seqs a member should have seen and did not, and seqs it saw twice.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Check {
    /// Seqs after its resume's `last_seq`, up to `last`, never seen.
    pub lost: u64,
    /// Seqs after its first welcome's head, up to its resume's `last_seq`, never seen.
    pub lost_before: u64,
    /// Seqs seen more than once (each extra sighting counts).
    pub duplicated: u64,
}

impl Track {
    /// Checks the seqs seen against every seq of the room up to `last`.
    pub fn check(&self, last: u64) -> Check {
        let mut seen = self.seqs.clone();
        seen.sort_unstable();
        let all = seen.len();
        seen.dedup();
        let missing = |from: u64, to: u64| {
            (from.saturating_add(1)..=to).filter(|s| seen.binary_search(s).is_err()).count() as u64
        };
        let resumed_from = self.resumed_from.unwrap_or(last);
        Check {
            lost: missing(resumed_from, last),
            lost_before: self.first_head.map_or(0, |head| missing(head, resumed_from)),
            duplicated: (all - seen.len()) as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_seqs_are_read_from_the_start_of_the_json() {
        let notice = br##"{"type":"notice","seq":42,"ts":1,"kind":"joined","name":"a","color":"#000000"}"##;
        assert_eq!(Kind::of(notice), Kind::Notice);
        assert_eq!(seq_of(notice), Some(42));
        let ack = br#"{"type":"ack","cid":"b1-0","seq":7,"ts":1}"#;
        assert_eq!((Kind::of(ack), seq_of(ack)), (Kind::Ack, Some(7)));
        assert_eq!(Kind::of(br#"{"type":"presence","joined":[]}"#), Kind::Presence);
        assert_eq!(Kind::of(br#"{"type":"welcome"}"#), Kind::Welcome);
        assert_eq!(Kind::of(br#"{"type":"messages"}"#), Kind::Other);
        assert_eq!(Kind::of(b"[]"), Kind::Other);
        assert_eq!(seq_of(br#"{"type":"pong"}"#), None);
        let batch = br##"{"type":"notices","notices":[{"type":"notice","seq":4},{"type":"notice","seq":5}]}"##;
        assert_eq!(Kind::of(batch), Kind::Notices);
        assert_eq!(seqs_of(batch), [4, 5]);
    }

    #[test]
    fn a_fragmented_message_is_one_message() {
        let mut a = Assembler::default();
        assert_eq!(a.push(OP_TEXT, true, b"whole").as_deref(), Some(&b"whole"[..]));
        assert_eq!(a.push(OP_TEXT, false, b"ab").as_deref(), None);
        assert_eq!(a.push(OP_CONTINUATION, false, b"cd").as_deref(), None);
        assert_eq!(a.push(OP_CONTINUATION, true, b"ef").as_deref(), Some(&b"abcdef"[..]));
        assert_eq!(a.push(OP_CONTINUATION, true, b"stray").as_deref(), None);
    }

    #[test]
    fn a_check_counts_gaps_on_each_side_of_the_resume_and_repeats() {
        let track = Track {
            first_head: Some(10),
            resumed_from: Some(15),
            // 13 never came before the restart; 16 came twice; 18 never came.
            seqs: vec![11, 12, 14, 15, 16, 16, 17, 19, 20],
            ..Track::default()
        };
        assert_eq!(track.check(20), Check { lost: 1, lost_before: 1, duplicated: 1 });
        let whole = Track { first_head: Some(0), resumed_from: Some(2), seqs: vec![1, 2, 3], ..Track::default() };
        assert_eq!(whole.check(3), Check::default());
    }
}
