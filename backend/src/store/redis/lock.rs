//! One natter per Redis database (stage 1): names, members and each room's
//! cache live in the process, so a second instance writing the same rooms
//! would split them. A lock key with a time to live, renewed while the
//! instance runs, keeps a second one out; the writer writes only while the
//! lock is surely held. Stage 3 (names and presence in Redis) lifts this.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use ::redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::keys::LOCK;
use super::scripts::{CLAIM, RELEASE};

/// How long the lock outlives its last renewal: a natter killed with
/// `kill -9` keeps the next start waiting at most this long.
pub const LOCK_TTL: Duration = Duration::from_secs(6);
/// How often the lock is renewed (well within [`LOCK_TTL`], so a renewal or
/// two may fail, or be slow, without the lock lapsing).
pub const LOCK_RENEW: Duration = Duration::from_secs(2);
/// How often a start finds the lock held and looks again, until
/// [`LOCK_TTL`] has passed (a crashed holder's lock has lapsed by then).
pub const LOCK_RETRY: Duration = Duration::from_millis(500);

/// Until when this instance surely holds the lock: the start of the last
/// successful claim plus [`LOCK_TTL`] (Redis counts from later, when the
/// command arrives, so this errs on the safe side).
#[derive(Debug, Default)]
pub struct Lease {
    until: Mutex<Option<Instant>>,
}

impl Lease {
    /// True while the lock is surely this instance's.
    pub fn held(&self) -> bool {
        self.until.lock().unwrap_or_else(|p| p.into_inner()).is_some_and(|until| Instant::now() < until)
    }

    fn extend(&self, claimed_at: Instant) {
        *self.until.lock().unwrap_or_else(|p| p.into_inner()) = Some(claimed_at + LOCK_TTL);
    }

    fn end(&self) {
        *self.until.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// What one claim found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// It was ours and is renewed.
    Renewed,
    /// It was free and is ours now.
    Taken,
    /// Another instance holds it.
    Held,
}

impl Claim {
    fn of(reply: i64) -> Self {
        match reply {
            1 => Self::Renewed,
            2 => Self::Taken,
            _ => Self::Held,
        }
    }
}

/// Claims the lock once for `instance`, within `timeout`.
pub async fn claim(
    conn: &mut ConnectionManager,
    instance: &str,
    lease: &Lease,
    timeout: Duration,
) -> Result<Claim, ::redis::RedisError> {
    let at = Instant::now();
    let ttl_ms = u64::try_from(LOCK_TTL.as_millis()).unwrap_or(u64::MAX);
    let mut invocation = CLAIM.key(LOCK);
    invocation.arg(instance).arg(ttl_ms);
    let reply: i64 = tokio::time::timeout(timeout, invocation.invoke_async(conn))
        .await
        .map_err(|_| ::redis::RedisError::from((::redis::ErrorKind::Io, "Redis did not answer in time")))??;
    let claim = Claim::of(reply);
    match claim {
        Claim::Renewed | Claim::Taken => lease.extend(at),
        Claim::Held => lease.end(),
    }
    Ok(claim)
}

/// The instance holding the lock, for the refusal's message.
pub async fn holder(conn: &mut ConnectionManager) -> Option<String> {
    ::redis::cmd("GET").arg(LOCK).query_async::<Option<String>>(conn).await.ok().flatten()
}

/// Takes the lock at start, waiting up to [`LOCK_TTL`] (and a retry) for a
/// holder that stopped renewing it (a natter killed with `kill -9`).
/// Returns the holder's id if another instance still holds it then.
pub async fn acquire(
    conn: &mut ConnectionManager,
    instance: &str,
    lease: &Lease,
    timeout: Duration,
) -> Result<Result<(), String>, ::redis::RedisError> {
    let deadline = Instant::now() + LOCK_TTL + LOCK_RETRY;
    let mut told = false;
    loop {
        if claim(conn, instance, lease, timeout).await? != Claim::Held {
            return Ok(Ok(()));
        }
        let held_by = holder(conn).await.unwrap_or_default();
        if Instant::now() >= deadline {
            return Ok(Err(held_by));
        }
        if !told {
            info!(holder = %held_by, wait_s = LOCK_TTL.as_secs(), "another natter holds the Redis lock; waiting in case it has stopped");
            told = true;
        }
        tokio::time::sleep(LOCK_RETRY).await;
    }
}

/// Renews the lock every [`LOCK_RENEW`] until `stop`. A lock found free
/// (it lapsed while Redis was unreachable, or Redis lost it) is taken
/// again; one found held by another instance ends this instance's lease,
/// and its writes then fail until the lock is this instance's again.
pub async fn keep(
    mut conn: ConnectionManager,
    instance: String,
    lease: std::sync::Arc<Lease>,
    timeout: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(LOCK_RENEW);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut last = Claim::Renewed;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        match claim(&mut conn, &instance, &lease, timeout).await {
            Ok(claim) => {
                match (last, claim) {
                    (_, Claim::Taken) => {
                        warn!("the Redis lock had lapsed (Redis was unreachable, or lost it); taken again")
                    }
                    (Claim::Held, Claim::Renewed) => info!("the Redis lock is this natter's again"),
                    (Claim::Renewed | Claim::Taken, Claim::Held) => {
                        let other = holder(&mut conn).await.unwrap_or_default();
                        error!(holder = %other, "another natter took the Redis lock: this one stores nothing until it is free");
                    }
                    _ => {}
                }
                last = claim;
            }
            Err(e) => debug!(error = %e, "the Redis lock could not be renewed this time"),
        }
    }
}

/// Lets the lock go at a graceful stop, so the next start need not wait.
pub async fn release(conn: &mut ConnectionManager, instance: &str, lease: &Lease, timeout: Duration) {
    lease.end();
    let mut invocation = RELEASE.key(LOCK);
    invocation.arg(instance);
    match tokio::time::timeout(timeout, invocation.invoke_async::<i64>(conn)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => warn!(error = %e, "the Redis lock was not released; the next start waits for it to lapse"),
        Err(_) => warn!("the Redis lock was not released in time; the next start waits for it to lapse"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_lasts_a_ttl_from_the_claim_and_ends_when_lost() {
        let lease = Lease::default();
        assert!(!lease.held(), "nothing claimed yet");
        lease.extend(Instant::now());
        assert!(lease.held());
        lease.extend(Instant::now() - LOCK_TTL);
        assert!(!lease.held(), "a claim a TTL ago may have lapsed in Redis");
        lease.extend(Instant::now());
        lease.end();
        assert!(!lease.held());
        assert_eq!([Claim::of(1), Claim::of(2), Claim::of(0)], [Claim::Renewed, Claim::Taken, Claim::Held]);
        assert!(LOCK_RENEW * 2 < LOCK_TTL, "two renewals may fail before the lock lapses");
    }
}
