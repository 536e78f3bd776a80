//! Finding silent peers: ping every `interval`; if nothing at all arrives
//! within `timeout` of a ping, the peer is gone. Plain logic over instants;
//! the writer drives it with a timer.

use std::time::Duration;

use tokio::time::Instant;

/// What the writer should do when the heartbeat deadline passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// Send a ping now.
    Ping,
    /// No frame since the last ping for `timeout`: drop the connection.
    TimedOut,
    /// The deadline moved (the peer was heard from); keep waiting.
    Wait,
}

/// Heartbeat state of one connection.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    interval: Duration,
    timeout: Duration,
    /// When the outstanding ping went out, if one is outstanding.
    ping_sent: Option<Instant>,
    /// When the next ping is due.
    next_ping: Instant,
}

impl Heartbeat {
    /// Starts at `now`: the first ping is due after `interval`.
    pub fn new(interval: Duration, timeout: Duration, now: Instant) -> Self {
        Self { interval, timeout, ping_sent: None, next_ping: now + interval }
    }

    /// When [`Heartbeat::on_deadline`] should next be called.
    pub fn deadline(&self) -> Instant {
        match self.ping_sent {
            Some(sent) => sent + self.timeout,
            None => self.next_ping,
        }
    }

    /// Decides at `now`, given when the peer was last heard from.
    pub fn on_deadline(&mut self, now: Instant, last_heard: Instant) -> Beat {
        match self.ping_sent {
            Some(sent) if last_heard >= sent => {
                // Answered: schedule the next ping from the one that was answered.
                self.ping_sent = None;
                self.next_ping = sent + self.interval;
                if now >= self.next_ping { self.send(now) } else { Beat::Wait }
            }
            Some(sent) if now >= sent + self.timeout => Beat::TimedOut,
            Some(_) => Beat::Wait,
            None if now >= self.next_ping => self.send(now),
            None => Beat::Wait,
        }
    }

    fn send(&mut self, now: Instant) -> Beat {
        self.ping_sent = Some(now);
        Beat::Ping
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const I: Duration = Duration::from_secs(20);
    const T: Duration = Duration::from_secs(10);

    #[test]
    fn pings_after_the_interval_and_times_out_without_an_answer() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(I, T, t0);
        assert_eq!(hb.deadline(), t0 + I);
        assert_eq!(hb.on_deadline(t0 + I, t0), Beat::Ping);
        assert_eq!(hb.deadline(), t0 + I + T);
        assert_eq!(hb.on_deadline(t0 + I + T, t0), Beat::TimedOut);
    }

    #[test]
    fn an_answer_keeps_the_connection_and_schedules_the_next_ping() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(I, T, t0);
        assert_eq!(hb.on_deadline(t0 + I, t0), Beat::Ping);
        let pong = t0 + I + Duration::from_millis(5);
        assert_eq!(hb.on_deadline(t0 + I + T, pong), Beat::Wait);
        assert_eq!(hb.deadline(), t0 + I + I);
        assert_eq!(hb.on_deadline(t0 + I + I, pong), Beat::Ping);
    }

    #[test]
    fn an_early_wakeup_does_nothing() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(I, T, t0);
        assert_eq!(hb.on_deadline(t0 + Duration::from_secs(1), t0), Beat::Wait);
        assert_eq!(hb.on_deadline(t0 + I, t0), Beat::Ping);
        assert_eq!(hb.on_deadline(t0 + I + Duration::from_secs(1), t0), Beat::Wait);
    }
}
