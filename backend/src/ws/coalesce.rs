//! The write window shared by every connection: a message for a connection
//! whose frames were taken for writing less than a window ago is not
//! written at once; the connection joins this list, and at the next tick
//! everything queued for it by then goes out in one write. The answer to
//! the connection's own `say` (its ack) does not wait: it goes out at once
//! and takes what waits along ([`super::outbound::ConnHandle::send_now`]);
//! the connection stays listed, once.
//!
//! The tick writes to the socket itself, one connection after another, as
//! long as the connection's writer is not writing (a write the socket does
//! not take whole is left to the writer, see [`super::outbound`]). A busy
//! connection's writer task is then not woken at all for its writes, and no
//! per-connection timer is set per write: one timer for the whole server.
//! A message waits at most one window, as before.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior, interval};
use tokio_util::sync::CancellationToken;

use super::outbound::ConnHandle;

/// Connections with frames held for the next tick.
///
/// Bound: a connection is listed at most once until its tick (its queue
/// marks it scheduled), so the list holds at most one entry per open
/// connection, which the connection limits bound.
#[derive(Debug)]
pub struct Coalescer {
    window: Duration,
    /// The most bytes per write call.
    max_bytes: usize,
    due: Mutex<Vec<ConnHandle>>,
}

/// Connections a tick writes before it lets other tasks run.
const WRITES_PER_YIELD: usize = 128;
/// The largest buffer the tick keeps between ticks (a larger one, grown for
/// a big batch, is freed after it).
const SCRATCH_KEEP_BYTES: usize = 256 * 1024;

impl Coalescer {
    /// A window of `window` (not zero: with no window every write goes out
    /// at once), writing at most `max_bytes` per write call.
    pub fn new(window: Duration, max_bytes: usize) -> Arc<Self> {
        Arc::new(Self { window, max_bytes, due: Mutex::default() })
    }

    /// The window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Whether frames taken at `taken` still hold back a message queued now.
    pub fn holds(&self, taken: Option<Instant>) -> bool {
        taken.is_some_and(|at| at.elapsed() < self.window)
    }

    /// Lists `conn` for the next tick.
    pub(super) fn schedule(&self, conn: ConnHandle) {
        self.due.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
    }

    /// Every window until `shutdown`, writes the listed connections'
    /// frames (or wakes their writers, see [`ConnHandle::tick`]).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut ticks = interval(self.window);
        // A late tick (a busy core) does not cause a burst of ticks after it.
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut due = Vec::new();
        let mut scratch = Vec::new();
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = shutdown.cancelled() => return,
            }
            std::mem::swap(&mut due, &mut *self.due.lock().unwrap_or_else(|p| p.into_inner()));
            for (i, conn) in due.drain(..).enumerate() {
                if i > 0 && i % WRITES_PER_YIELD == 0 {
                    tokio::task::yield_now().await;
                }
                conn.tick(&mut scratch, self.max_bytes);
            }
            if scratch.capacity() > SCRATCH_KEEP_BYTES {
                scratch = Vec::new();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio_tungstenite::tungstenite::Utf8Bytes;

    use super::*;
    use crate::ws::outbound;

    const WINDOW: Duration = Duration::from_millis(100);

    /// A running coalescer with a window of [`WINDOW`], and one connection's
    /// queue under it (no socket: the tick wakes its writer).
    struct Ticking {
        coalescer: Arc<Coalescer>,
        shutdown: CancellationToken,
        ticker: tokio::task::JoinHandle<()>,
    }

    impl Ticking {
        async fn start() -> (Self, outbound::ConnHandle, outbound::ConnReceiver) {
            let coalescer = Coalescer::new(WINDOW, 64 * 1024);
            let shutdown = CancellationToken::new();
            let ticker = tokio::spawn(coalescer.clone().run(shutdown.clone()));
            // Past the interval's first tick, which comes at once.
            tokio::time::sleep(Duration::from_millis(1)).await;
            let (handle, receiver) = outbound::coalesced(1, 16, usize::MAX, coalescer.clone(), None);
            (Self { coalescer, shutdown, ticker }, handle, receiver)
        }

        /// Connections listed for the next tick.
        fn listed(&self) -> usize {
            self.coalescer.due.lock().expect("lock").len()
        }

        async fn stop(self) {
            self.shutdown.cancel();
            self.ticker.await.expect("the ticker ends at shutdown");
        }
    }

    fn text(t: &'static str) -> Utf8Bytes {
        Utf8Bytes::from_static(t)
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_soon_after_a_take_waits_for_the_tick_and_a_quiet_one_does_not() {
        let (ticking, handle, receiver) = Ticking::start().await;

        // Nothing taken yet: at once.
        handle.send(&text("a"));
        assert_eq!(tokio::time::timeout(Duration::from_millis(1), receiver.next()).await, Ok(None), "ready at once");
        assert_eq!(receiver.take().encoded.len(), 1);

        // Taken just now: held for the tick, and the next message joins it.
        let queued = Instant::now();
        handle.send(&text("b"));
        handle.send(&text("c"));
        assert_eq!(ticking.listed(), 1, "listed once");
        let early = tokio::time::timeout(Duration::from_millis(1), receiver.next()).await;
        assert!(early.is_err(), "held for the tick");
        assert_eq!(receiver.next().await, None, "the tick wakes the writer");
        assert!(queued.elapsed() <= WINDOW, "waits at most one window");
        assert_eq!(receiver.take().encoded.len(), 2, "b and c go out together");

        // Quiet for longer than the window: at once again.
        tokio::time::sleep(WINDOW * 2).await;
        handle.send(&text("d"));
        assert_eq!(tokio::time::timeout(Duration::from_millis(1), receiver.next()).await, Ok(None), "ready at once");
        ticking.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_reply_goes_out_at_once_with_what_waits_and_the_connection_stays_listed_once() {
        let (ticking, handle, receiver) = Ticking::start().await;
        let at_once = || tokio::time::timeout(Duration::from_millis(1), receiver.next());
        let texts = |batch: outbound::Batch| batch.encoded.iter().map(|e| e.as_str().to_owned()).collect::<Vec<_>>();

        handle.send(&text("a"));
        assert_eq!(at_once().await, Ok(None));
        assert_eq!(texts(receiver.take()), ["a"]);
        receiver.written();

        // Taken just now: a message waits for the tick, a reply does not,
        // and takes it along, in order.
        let queued = Instant::now();
        handle.send(&text("b"));
        assert!(at_once().await.is_err(), "held for the tick");
        handle.send_now(&text("ack"));
        assert_eq!(at_once().await, Ok(None), "the reply wakes the writer at once");
        assert_eq!(texts(receiver.take()), ["b", "ack"]);
        assert!(queued.elapsed() < WINDOW, "before the tick");
        receiver.written();

        // Still listed once for the tick; what comes next waits for it.
        handle.send(&text("c"));
        assert_eq!(ticking.listed(), 1, "listed once");
        assert!(at_once().await.is_err(), "held for the tick again");
        assert_eq!(receiver.next().await, None, "the tick wakes the writer");
        assert_eq!(texts(receiver.take()), ["c"]);
        ticking.stop().await;
    }
}
