//! The writer half of a session: drains the connection's queue into the
//! socket as WebSocket frames (several messages per write when the
//! connection is busy), pings, and sends the close frame when kicked or on
//! shutdown. A write buffer exists only while a write is under way.

use std::io;
use std::pin::Pin;
use std::time::Duration;

use natter_shared::close;
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until, timeout};
use tracing::debug;

use super::heartbeat::{Beat, Heartbeat};
use super::{LastHeard, WriterEnd};
use crate::app::App;
use crate::ws::frame;
use crate::ws::outbound::{Batch, CloseReason, ConnReceiver, Started};

/// The largest write buffer a worker thread keeps between writes (a larger
/// one, grown for a big batch, is freed after it).
const SCRATCH_KEEP_BYTES: usize = 256 * 1024;

thread_local! {
    /// Where a worker thread gathers a connection's frames for one write.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Bytes on their way to the socket, as WebSocket frames. Empty (no
/// allocation) between writes;
/// whatever a cancelled write left is written before anything else, so a
/// close frame never lands inside another frame.
#[derive(Debug, Default)]
pub(super) struct WriteBuf {
    buf: Vec<u8>,
    written: usize,
    /// Messages taken from the queue for a write the socket did not take
    /// whole, not yet gathered into `buf`: kept here (boxed: only slow writes
    /// get one) so an interrupted write loses none of them before the close.
    pending: Option<Box<Batch>>,
}

impl WriteBuf {
    fn push(&mut self, opcode: u8, payload: &[u8]) {
        frame::encode(opcode, payload, &mut self.buf);
    }

    /// Drops the frames not yet begun, keeping the rest of the one being
    /// written (a frame cut short would break the stream).
    fn drop_unstarted(&mut self) {
        self.pending = None;
        let mut at = 0;
        while at < self.buf.len() {
            let Some(len) = frame::encoded_frame_len(&self.buf[at..]) else { break };
            if at + len > self.written {
                let keep = if at < self.written { at + len } else { at };
                self.buf.truncate(keep);
                break;
            }
            at += len;
        }
    }

    /// Takes over a write the coalescer's tick started: its unwritten bytes
    /// go before anything this buffer has not begun (a ping).
    pub(super) fn absorb(&mut self, started: Option<Box<Started>>) {
        let Some(started) = started else { return };
        let mine = self.buf.split_off(self.written);
        let Started { buf, written } = *started;
        self.buf = buf;
        self.written = written;
        self.buf.extend_from_slice(&mine);
    }

    /// Bytes not yet written (a frame the socket has not taken, a ping).
    fn has_unwritten(&self) -> bool {
        self.written < self.buf.len()
    }

    /// Writes as much of `batch` as the socket takes now, without waiting:
    /// frames are gathered (at most `max_bytes` per write call) in a buffer
    /// shared by the thread's connections, so a write that completes
    /// allocates nothing. Returns what is left if the socket is full: the
    /// bytes it did not take are then this connection's own (`buf`, with
    /// `written` marking how far it got), and the frames not yet gathered.
    fn try_write_batch(&mut self, stream: &TcpStream, mut batch: Batch, max_bytes: usize) -> io::Result<Option<Batch>> {
        if self.has_unwritten() {
            // Something is already waiting (a ping): keep the order.
            return Ok(Some(batch));
        }
        SCRATCH.with_borrow_mut(|scratch| {
            let result = loop {
                scratch.clear();
                batch.gather(scratch, max_bytes);
                if scratch.is_empty() {
                    break Ok(None);
                }
                let taken = match stream.try_write(scratch) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                    Err(e) => break Err(e),
                };
                if taken < scratch.len() {
                    self.buf = scratch.clone();
                    self.written = taken;
                    break Ok(Some(batch));
                }
            };
            if scratch.capacity() > SCRATCH_KEEP_BYTES {
                *scratch = Vec::new();
            }
            result
        })
    }

    /// Writes everything buffered, failing when the socket takes nothing
    /// for `stall`: the deadline measures progress, so a client that reads
    /// slowly but steadily is never cut off in the middle of a long write.
    /// Safe to cancel: progress is kept.
    async fn flush(&mut self, stream: &TcpStream, stall: Duration) -> io::Result<()> {
        let mut progress_by = Instant::now() + stall;
        while self.written < self.buf.len() {
            match tokio::time::timeout_at(progress_by, stream.writable()).await {
                Ok(ready) => ready?,
                Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "write stalled")),
            }
            match stream.try_write(&self.buf[self.written..]) {
                Ok(n) => {
                    self.written += n;
                    progress_by = Instant::now() + stall;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        // Done: give the memory back.
        self.buf = Vec::new();
        self.written = 0;
        Ok(())
    }

    /// Writes a batch after whatever is still unwritten, waiting for the
    /// socket as needed (the path of a write the socket did not take whole).
    async fn write_batch(
        &mut self,
        stream: &TcpStream,
        batch: Batch,
        max_bytes: usize,
        stall: Duration,
    ) -> io::Result<()> {
        let pending = self.pending.get_or_insert_with(Box::default);
        pending.encoded.extend(batch.encoded);
        if batch.pong.is_some() {
            pending.pong = batch.pong;
        }
        loop {
            if let Some(pending) = self.pending.as_mut() {
                pending.gather(&mut self.buf, max_bytes);
                if pending.encoded.is_empty() && pending.pong.is_none() {
                    self.pending = None;
                }
            }
            if !self.has_unwritten() {
                return Ok(());
            }
            self.flush(stream, stall).await?;
        }
    }
}

/// What cut a delivery short.
enum Interrupt {
    Kicked(CloseReason),
    Shutdown,
    Failed(WriterEnd),
}

/// Drains the queue into the socket in batches, pings, and sends the close
/// frame when kicked or on shutdown.
///
/// Coalescing is decided where messages are queued ([`crate::ws::coalesce`]):
/// the writer is woken only when there is something to write now, and
/// writes everything queued by then.
///
/// The writer waits on one wake-up for its kick and its queue, and on the
/// shutdown and the heartbeat's timer, which live across the loop instead
/// of being made anew for each wait; a write that the socket takes whole
/// is done without waiting; only a write that blocks is boxed (with its
/// timeout). An idle connection's task holds only what waiting needs.
pub(super) async fn write_loop(stream: &TcpStream, receiver: &ConnReceiver, app: &App, heard: &LastHeard) -> WriterEnd {
    let timing = &app.config.timing;
    let mut heartbeat = Heartbeat::new(timing.ping_interval, timing.pong_timeout, Instant::now());
    let mut out = WriteBuf::default();
    let cancelled = app.shutdown.cancelled();
    let timer = sleep_until(heartbeat.deadline());
    tokio::pin!(cancelled, timer);
    let interrupt = loop {
        let write = tokio::select! {
            biased;
            // A kick that came with the shutdown keeps its own reason.
            () = &mut cancelled => break receiver.kick().reason().map_or(Interrupt::Shutdown, Interrupt::Kicked),
            next = receiver.next() => match next {
                Some(reason) => break Interrupt::Kicked(reason),
                None => true,
            },
            () = &mut timer => {
                let now = Instant::now();
                match heartbeat.on_deadline(now, heard.get()) {
                    Beat::Ping => out.push(frame::OP_PING, &[]),
                    Beat::TimedOut => return WriterEnd::TimedOut,
                    Beat::Wait => {}
                }
                timer.as_mut().reset(heartbeat.deadline());
                out.has_unwritten()
            }
        };
        if write {
            if let Err(interrupt) = deliver(stream, &mut out, receiver, app, cancelled.as_mut()).await {
                break interrupt;
            }
            // A write the socket takes at once never waits: a busy queue
            // must still let other tasks run.
            tokio::task::consume_budget().await;
        }
    };
    match interrupt {
        Interrupt::Kicked(reason) => Box::pin(close_for(stream, out, receiver, reason, timing.close_timeout)).await,
        Interrupt::Shutdown => {
            Box::pin(send_close(stream, &mut out, receiver, CloseReason::Shutdown, timing.close_timeout)).await
        }
        Interrupt::Failed(end) => end,
    }
}

/// Writes everything queued (and a ping `out` may hold): at once if the
/// socket takes it, otherwise waiting for the socket as long as it keeps
/// taking bytes (the write timeout bounds a wait without progress).
async fn deliver(
    stream: &TcpStream,
    out: &mut WriteBuf,
    receiver: &ConnReceiver,
    app: &App,
    cancelled: Pin<&mut impl Future<Output = ()>>,
) -> Result<(), Interrupt> {
    let ws = &app.config.ws;
    let mut batch = receiver.take();
    out.absorb(batch.started.take());
    let rest = match out.try_write_batch(stream, batch, ws.write_batch_bytes) {
        Ok(None) => {
            receiver.written();
            return Ok(());
        }
        Ok(Some(rest)) => rest,
        Err(e) => return Err(Interrupt::Failed(WriterEnd::WriteFailed(e.to_string()))),
    };
    // The socket is full: wait for it, boxed, since few writes get here.
    let stall = app.config.timing.write_timeout;
    Box::pin(async {
        tokio::select! {
            r = out.write_batch(stream, rest, ws.write_batch_bytes, stall) => match r {
                Ok(()) => {
                    receiver.written();
                    Ok(())
                }
                Err(e) => Err(Interrupt::Failed(WriterEnd::WriteFailed(e.to_string()))),
            },
            reason = receiver.kick().kicked() => Err(Interrupt::Kicked(reason)),
            () = cancelled => Err(Interrupt::Shutdown),
        }
    })
    .await
}

/// Ends the writer for a kick: a lagged connection's close frame is sent
/// by the caller after the membership is settled; any other goes out now.
async fn close_for(
    stream: &TcpStream,
    mut out: WriteBuf,
    receiver: &ConnReceiver,
    reason: CloseReason,
    limit: Duration,
) -> WriterEnd {
    if reason == CloseReason::Lagged {
        return WriterEnd::Lagged(out);
    }
    send_close(stream, &mut out, receiver, reason, limit).await
}

/// Sends a lagged connection's close frame right after the frame it was in
/// the middle of (everything after that is dropped: the client resumes from
/// the last seq it got). A client that reads nothing gets the lagged close
/// timeout to get there. Returns whether the close frame went out.
pub(super) async fn send_lagged_close(stream: &TcpStream, mut out: WriteBuf, app: &App) -> bool {
    out.drop_unstarted();
    let reason = CloseReason::Lagged;
    let (code, text) = reason.frame().unwrap_or((close::LAGGED, close::LAGGED_REASON));
    out.push(frame::OP_CLOSE, &frame::close_payload(code, text));
    let limit = app.config.timing.lagged_close_timeout;
    tokio::select! {
        r = timeout(limit, out.flush(stream, limit)) => {
            let sent = matches!(r, Ok(Ok(())));
            if !sent {
                debug!("lagged close frame not sent");
            }
            sent
        }
        () = app.shutdown.cancelled() => false,
    }
}

/// Sends our close frame (or the reply to the peer's) within `limit`, after
/// whatever an interrupted write left and everything still queued: a client
/// closed for a violation hears first what was already said to it (the acks
/// of its stored messages, the `rate_limited` errors). The queue is within
/// the output budget, so this is bounded.
async fn send_close(
    stream: &TcpStream,
    out: &mut WriteBuf,
    receiver: &ConnReceiver,
    reason: CloseReason,
    limit: Duration,
) -> WriterEnd {
    let mut queued = receiver.take();
    out.absorb(queued.started.take());
    if let Some(mut pending) = out.pending.take() {
        pending.gather(&mut out.buf, usize::MAX);
    }
    queued.gather(&mut out.buf, usize::MAX);
    let payload = match reason.frame() {
        Some((code, text)) => frame::close_payload(code, text),
        None => Vec::new(),
    };
    out.push(frame::OP_CLOSE, &payload);
    match timeout(limit, out.flush(stream, limit)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(error = %e, "close frame not sent"),
        Err(_) => debug!("close frame not sent in time"),
    }
    WriterEnd::Closed(reason)
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::Utf8Bytes;

    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::config::{Config, HistoryKind};
    use crate::ws::outbound;

    #[tokio::test]
    async fn a_batch_is_written_as_frames_in_order_and_the_buffer_is_freed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr")).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let frames: VecDeque<Utf8Bytes> = ["a", &"b".repeat(300), "c"].into_iter().map(Utf8Bytes::from).collect();
        let mut out = WriteBuf::default();
        // A tiny batch limit: one write call per frame.
        out.write_batch(
            &server,
            Batch { encoded: frames, pong: Some(b"p".to_vec()), ..Batch::default() },
            16,
            Duration::from_secs(10),
        )
        .await
        .expect("written");
        assert_eq!(out.buf.capacity(), 0);
        let mut expected = Vec::new();
        frame::encode(frame::OP_PONG, b"p", &mut expected);
        frame::encode(frame::OP_TEXT, b"a", &mut expected);
        frame::encode(frame::OP_TEXT, "b".repeat(300).as_bytes(), &mut expected);
        frame::encode(frame::OP_TEXT, b"c", &mut expected);
        let mut got = vec![0u8; expected.len()];
        let mut client = client;
        client.read_exact(&mut got).await.expect("read");
        assert_eq!(got, expected);
    }

    async fn socket_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr")).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (server, client)
    }

    /// A server with a write window of `window`, and a socket pair whose
    /// server end the window's tick may write to.
    async fn app_with_window(window: Duration) -> (std::sync::Arc<App>, std::sync::Arc<TcpStream>, TcpStream) {
        let mut config = Config { history: HistoryKind::Memory, ..Config::default() };
        config.ws.write_coalesce = window;
        let app = App::new(config).await.expect("app");
        let (server, client) = socket_pair().await;
        (app, std::sync::Arc::new(server), client)
    }

    /// A queue of `capacity` messages on `server`, under `app`'s window.
    fn coalesced_queue(
        app: &App,
        server: &std::sync::Arc<TcpStream>,
        capacity: usize,
    ) -> (outbound::ConnHandle, outbound::ConnReceiver) {
        let coalescer = app.coalescer.clone().expect("a window");
        outbound::coalesced(1, capacity, usize::MAX, coalescer, Some(server.clone()))
    }

    fn utf8(text: &'static str) -> Utf8Bytes {
        Utf8Bytes::from_static(text)
    }

    /// Reads exactly the frames of `texts` from `client`.
    async fn expect_frames(client: &mut TcpStream, texts: &[&str]) {
        let expected = text_frames(texts);
        let mut got = vec![0u8; expected.len()];
        client.read_exact(&mut got).await.expect("read");
        assert_eq!(got, expected);
    }

    fn text_frames(texts: &[&str]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for text in texts {
            frame::encode(frame::OP_TEXT, text.as_bytes(), &mut bytes);
        }
        bytes
    }

    #[tokio::test]
    async fn a_write_the_socket_cannot_take_whole_continues_where_it_stopped() {
        let (server, mut client) = socket_pair().await;
        socket2::SockRef::from(&server).set_send_buffer_size(4096).expect("small send buffer");
        let texts: Vec<String> = (0..300).map(|i| format!("{i:04}{}", "x".repeat(996))).collect();
        let frames: VecDeque<Utf8Bytes> = texts.iter().map(|t| Utf8Bytes::from(t.clone())).collect();
        let mut out = WriteBuf::default();
        // The client reads nothing yet: the socket fills.
        let rest = out
            .try_write_batch(&server, Batch { encoded: frames, ..Batch::default() }, 16 * 1024)
            .expect("no error")
            .expect("the socket could not take 300 KB");
        assert!(out.has_unwritten(), "the bytes the socket did not take are the connection's own");
        let expected = text_frames(&texts.iter().map(String::as_str).collect::<Vec<_>>());
        let mut got = vec![0u8; expected.len()];
        let stall = Duration::from_secs(10);
        let (written, read) =
            tokio::join!(out.write_batch(&server, rest, 16 * 1024, stall), client.read_exact(&mut got));
        written.expect("written");
        read.expect("read");
        assert!(got == expected, "every frame arrives once, whole and in order");
        assert!(!out.has_unwritten());
    }

    #[tokio::test(start_paused = true)]
    async fn frames_queued_soon_after_a_write_go_out_together_at_the_next_tick() {
        const WINDOW: Duration = Duration::from_millis(500);
        let (app, server, mut client) = app_with_window(WINDOW).await;
        let (handle, receiver) = coalesced_queue(&app, &server, 16);
        let heard = LastHeard::new();
        let test = async {
            let mut buf = vec![0u8; 1024];
            // Quiet so far: the first frame goes out at once.
            let start = Instant::now();
            handle.send(&utf8("a"));
            expect_frames(&mut client, &["a"]).await;
            assert!(start.elapsed() < WINDOW);
            // Within the window: held back until the next tick, then one write.
            let queued = Instant::now();
            handle.send(&utf8("b"));
            tokio::time::sleep(WINDOW / 10).await;
            handle.send(&utf8("c"));
            let early = timeout(WINDOW / 10, client.read(&mut buf)).await;
            assert!(early.is_err(), "nothing is written before the tick");
            expect_frames(&mut client, &["b", "c"]).await;
            assert!(queued.elapsed() <= WINDOW, "held at most one window");
            // Quiet again for longer than the window: at once.
            tokio::time::sleep(WINDOW * 2).await;
            let again = Instant::now();
            handle.send(&utf8("d"));
            expect_frames(&mut client, &["d"]).await;
            assert!(again.elapsed() < WINDOW);
        };
        tokio::select! {
            end = write_loop(&server, &receiver, &app, &heard) => panic!("the writer ended: {end:?}"),
            () = test => {}
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_reply_goes_out_at_once_with_the_held_frames_and_what_comes_after_waits_for_the_tick() {
        const WINDOW: Duration = Duration::from_millis(500);
        let (app, server, mut client) = app_with_window(WINDOW).await;
        let (handle, receiver) = coalesced_queue(&app, &server, 16);
        let heard = LastHeard::new();
        let test = async {
            let mut buf = vec![0u8; 1024];
            handle.send(&utf8("a"));
            expect_frames(&mut client, &["a"]).await;
            // Within the window: a message is held, a reply is not, and
            // takes the held one along, in order.
            let queued = Instant::now();
            handle.send(&utf8("b"));
            assert!(timeout(WINDOW / 10, client.read(&mut buf)).await.is_err(), "held for the tick");
            handle.send_now(&utf8("ack 1"));
            expect_frames(&mut client, &["b", "ack 1"]).await;
            assert!(queued.elapsed() < WINDOW / 2, "before the tick");
            // The connection is still listed for the tick: another reply
            // goes out at once too.
            let again = Instant::now();
            handle.send_now(&utf8("ack 2"));
            expect_frames(&mut client, &["ack 2"]).await;
            assert!(again.elapsed() < WINDOW / 10, "at once");
            // A message after them waits for that tick, and goes with it.
            handle.send(&utf8("c"));
            assert!(timeout(WINDOW / 10, client.read(&mut buf)).await.is_err(), "held for the tick");
            expect_frames(&mut client, &["c"]).await;
            assert!(queued.elapsed() <= WINDOW, "at the tick b was listed for");
        };
        tokio::select! {
            end = write_loop(&server, &receiver, &app, &heard) => panic!("the writer ended: {end:?}"),
            () = test => {}
        }
    }

    #[tokio::test]
    async fn a_write_the_tick_could_not_finish_is_finished_by_the_writer_in_order() {
        const WINDOW: Duration = Duration::from_millis(20);
        let (app, server, mut client) = app_with_window(WINDOW).await;
        socket2::SockRef::from(&*server).set_send_buffer_size(4096).expect("small send buffer");
        let (handle, receiver) = coalesced_queue(&app, &server, 1024);
        let heard = LastHeard::new();
        // The first goes out at once (the writer); the rest, queued right
        // after, wait for the tick, which writes what the small socket
        // buffer takes and leaves the rest (mid-frame) to the writer.
        let texts: Vec<String> = (0..300).map(|i| format!("{i:04}{}", "y".repeat(996))).collect();
        let expected = text_frames(&texts.iter().map(String::as_str).collect::<Vec<_>>());
        let test = async {
            handle.send(&Utf8Bytes::from(texts[0].clone()));
            let mut first = vec![0u8; frame::encoded_len(texts[0].len())];
            client.read_exact(&mut first).await.expect("read");
            for text in &texts[1..] {
                assert_eq!(handle.send(&Utf8Bytes::from(text.clone())), outbound::Delivery::Queued);
            }
            let mut got = first;
            got.resize(expected.len(), 0);
            let at = frame::encoded_len(texts[0].len());
            client.read_exact(&mut got[at..]).await.expect("read");
            assert!(got == expected, "every frame arrives once, whole and in order");
            assert_eq!(handle.pending_bytes(), 0, "the budget is released");
        };
        tokio::select! {
            end = write_loop(&server, &receiver, &app, &heard) => panic!("the writer ended: {end:?}"),
            done = tokio::time::timeout(Duration::from_secs(10), test) => done.expect("in time"),
        }
    }

    #[tokio::test]
    async fn a_slow_but_steady_reader_is_not_dropped_in_the_middle_of_a_long_write() {
        const STALL: Duration = Duration::from_millis(300);
        let mut config = Config { history: HistoryKind::Memory, ..Config::default() };
        config.timing.write_timeout = STALL;
        config.ws.write_coalesce = Duration::ZERO;
        let app = App::new(config).await.expect("app");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("small receive buffer");
        let mut client = socket.connect(listener.local_addr().expect("addr")).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        socket2::SockRef::from(&server).set_send_buffer_size(4096).expect("small send buffer");
        let (handle, receiver) = outbound::channel(1, 4096);
        let heard = LastHeard::new();
        // 1 MB, read 16 KiB every 20 ms: about 1.3 s in all, far beyond the
        // write timeout, but never a wait of more than 20 ms for progress.
        let text = Utf8Bytes::from("x".repeat(1000));
        for _ in 0..1000 {
            handle.send(&text);
        }
        let expected = 1000 * frame::encoded_len(1000);
        let read = async {
            let mut buf = vec![0u8; 16 * 1024];
            let mut got = 0;
            while got < expected {
                got += client.read(&mut buf).await.expect("read");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            got
        };
        tokio::select! {
            end = write_loop(&server, &receiver, &app, &heard) => panic!("the writer ended: {end:?}"),
            got = read => assert_eq!(got, expected),
        }
    }

    /// The texts of the server frames in `bytes`, and the close code.
    fn texts_and_close(bytes: &[u8]) -> (Vec<String>, Option<u16>) {
        let mut decoder = crate::ws::frame::Decoder::new(usize::MAX);
        // The decoder reads client (masked) frames: mask ours with zeros.
        let mut masked = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let len = frame::encoded_frame_len(&bytes[at..]).expect("whole frames");
            let header = if bytes[at + 1] & 0x7f == 126 {
                4
            } else if bytes[at + 1] & 0x7f == 127 {
                10
            } else {
                2
            };
            masked.push(bytes[at]);
            masked.push(bytes[at + 1] | 0x80);
            masked.extend_from_slice(&bytes[at + 2..at + header]);
            masked.extend_from_slice(&[0, 0, 0, 0]);
            masked.extend_from_slice(&bytes[at + header..at + len]);
            at += len;
        }
        let mut events = Vec::new();
        decoder.feed(&masked, &mut events).expect("valid frames");
        let mut texts = Vec::new();
        let mut code = None;
        for event in events {
            match event {
                crate::ws::frame::Event::Text(t) => texts.push(t),
                crate::ws::frame::Event::Close(c) => code = c,
                _ => {}
            }
        }
        (texts, code)
    }

    #[tokio::test]
    async fn a_close_during_a_slow_write_sends_everything_taken_first_in_order() {
        let app = App::new(Config { history: HistoryKind::Memory, ..Config::default() }).await.expect("app");
        let (server, mut client) = socket_pair().await;
        socket2::SockRef::from(&server).set_send_buffer_size(4096).expect("small send buffer");
        let (handle, receiver) = outbound::channel(1, 1024);
        let heard = LastHeard::new();
        let texts: Vec<String> = (0..300).map(|i| format!("{i:04}{}", "x".repeat(996))).collect();
        for text in &texts {
            handle.send(&Utf8Bytes::from(text.clone()));
        }
        let test = async {
            // The client reads nothing yet: the writer is in its slow path.
            tokio::time::sleep(Duration::from_millis(200)).await;
            handle.send(&Utf8Bytes::from_static("LATE"));
            handle.kick(CloseReason::Flooding);
            let mut got = Vec::new();
            let _ = timeout(Duration::from_secs(2), client.read_to_end(&mut got)).await;
            got
        };
        let (end, got) = tokio::join!(write_loop(&server, &receiver, &app, &heard), test);
        assert!(matches!(end, WriterEnd::Closed(CloseReason::Flooding)), "ended with {end:?}");
        let (received, code) = texts_and_close(&got);
        let mut expected = texts.clone();
        expected.push("LATE".into());
        assert!(received == expected, "got {} texts, not the 300 taken then LATE", received.len());
        assert_eq!(code, Some(close::POLICY_VIOLATION));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_a_write_the_socket_is_not_taking() {
        let app = App::new(Config { history: HistoryKind::Memory, ..Config::default() }).await.expect("app");
        let (server, _client) = socket_pair().await;
        socket2::SockRef::from(&server).set_send_buffer_size(4096).expect("small send buffer");
        let (handle, receiver) = outbound::channel(1, 1024);
        let heard = LastHeard::new();
        let text = Utf8Bytes::from("x".repeat(1000));
        for _ in 0..1000 {
            handle.send(&text);
        }
        let started = Instant::now();
        // The client reads nothing: the writer is stuck in its slow path.
        let shutdown = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            app.shutdown.cancel();
        };
        let (end, ()) = tokio::join!(write_loop(&server, &receiver, &app, &heard), shutdown);
        assert!(matches!(end, WriterEnd::Closed(CloseReason::Shutdown)), "ended with {end:?}");
        assert!(started.elapsed() < app.config.timing.write_timeout, "shutdown did not wait for the write timeout");
    }

    #[test]
    fn a_lagged_close_comes_right_after_the_frame_being_written() {
        let mut out = WriteBuf::default();
        out.push(frame::OP_TEXT, b"first");
        out.push(frame::OP_TEXT, &[b'x'; 300]);
        out.push(frame::OP_TEXT, b"never started");
        let second_end = frame::encoded_len(5) + frame::encoded_len(300);
        out.written = frame::encoded_len(5) + 3; // inside the second frame
        out.drop_unstarted();
        assert_eq!(out.buf.len(), second_end);
        out.written = second_end; // exactly between frames
        out.push(frame::OP_TEXT, b"later");
        out.drop_unstarted();
        assert_eq!(out.buf.len(), second_end);
    }
}
