//! What every connection of one running server shares.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::address::{PerAddress, RatePerAddress};
use crate::chat::hub::Hub;
use crate::chat::reaper;
use crate::chat::room::{Announce, End, Membership, Room};
use crate::config::{Config, HistoryKind};
use crate::metrics::Metrics;
use crate::store::memory::MemoryStore;
use crate::store::redis::RedisStore;
use crate::store::sqlite::SqliteStore;
use crate::store::{self, Draft, HistoryError, HistoryStore, StartError, WriteQueue};
use crate::ws::coalesce::Coalescer;

/// Shared server state.
#[derive(Debug)]
pub struct App {
    pub config: Config,
    pub hub: Hub,
    /// The way to the history writer.
    pub writes: WriteQueue,
    /// Cancelled when the server shuts down.
    pub shutdown: CancellationToken,
    /// Every task the server spawns, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Open WebSocket sessions (for `/healthz`).
    pub sessions: AtomicUsize,
    /// Open connections per client address.
    pub connections_per_address: Arc<PerAddress>,
    /// Joined sessions per client address.
    pub joins_per_address: Arc<PerAddress>,
    /// Re-sends looked up per client address (`config.rate.resend_checks_*`).
    pub resend_checks: RatePerAddress,
    /// What the server counts, for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The write window every connection shares (`None` when it is zero).
    pub coalescer: Option<Arc<Coalescer>>,
}

impl App {
    /// The state for `config`: opens the history store and starts its writer.
    pub async fn new(config: Config) -> Result<Arc<Self>, StartError> {
        let metrics = Arc::new(Metrics::new());
        let (store, writes): (Arc<dyn HistoryStore>, WriteQueue) = match &config.history {
            HistoryKind::Memory => {
                let (store, writes) =
                    MemoryStore::start(config.limits.history_per_room, config.storage.write_queue, metrics.clone());
                (store, writes)
            }
            HistoryKind::Sqlite => {
                let (store, writes) = SqliteStore::start(&config.storage, metrics.clone())?;
                (store, writes)
            }
            HistoryKind::Redis(redis) => {
                let (store, writes) =
                    RedisStore::start(redis, &config.storage, config.limits.welcome_history, metrics.clone()).await?;
                (store, writes)
            }
        };
        let hub = Hub::new(store, config.limits.clone(), metrics.clone());
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let window = config.ws.write_coalesce;
        let coalescer = (!window.is_zero()).then(|| Coalescer::new(window, config.ws.write_batch_bytes));
        if let Some(coalescer) = &coalescer {
            tasks.spawn(coalescer.clone().run(shutdown.clone()));
        }
        Ok(Arc::new(Self {
            hub,
            writes,
            shutdown,
            tasks,
            sessions: AtomicUsize::new(0),
            connections_per_address: PerAddress::new(config.conn.max_connections_per_address),
            joins_per_address: PerAddress::new(config.conn.max_joins_per_address),
            resend_checks: RatePerAddress::new(config.rate.resend_checks_per_sec, config.rate.resend_checks_burst),
            metrics,
            coalescer,
            config,
        }))
    }

    /// Hands a draft to the history writer for `room`.
    pub async fn submit(&self, room: Arc<Room>, draft: Draft) -> Result<(), HistoryError> {
        self.writes.submit(room, draft).await
    }

    /// Announces a presence change: a small room's notice goes to the
    /// history writer; the first change of a big room's batch starts the
    /// timer that sends it (dropped at shutdown: presence is ephemeral).
    pub async fn announce(&self, room: Arc<Room>, announce: Announce) -> Result<(), HistoryError> {
        match announce {
            Announce::Notice(draft) => self.submit(room, draft).await,
            Announce::Batched(Some(delay)) => {
                let shutdown = self.shutdown.clone();
                self.tasks.spawn(async move {
                    let mut wait = Some(delay);
                    while let Some(delay) = wait {
                        tokio::select! {
                            () = tokio::time::sleep(delay) => wait = room.flush_presence(),
                            () = shutdown.cancelled() => return,
                        }
                    }
                });
                Ok(())
            }
            Announce::Batched(None) => Ok(()),
        }
    }

    /// Starts `me`'s grace period in `room` (detached at `epoch`): after
    /// `grace`, unless the member resumed, it times out and is announced so.
    pub fn expire_after(self: &Arc<Self>, room: Arc<Room>, me: Membership, epoch: u64, grace: std::time::Duration) {
        let app = self.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(grace) => {
                    if let Some(announce) = room.depart(&me, End::Expire(epoch)).await {
                        info!(room = %room.name, member = me.member_id, "timed out");
                        if let Err(e) = app.announce(room, announce).await {
                            warn!(member = me.member_id, error = %e, "notice not stored");
                        }
                    }
                }
                () = app.shutdown.cancelled() => {}
            }
        });
    }

    /// With names shared across instances: every `every`, looks for
    /// instances that died and cleans up after those this one takes on
    /// ([`reaper`]), until shutdown.
    pub async fn reap_dead_instances(self: Arc<Self>, every: std::time::Duration) {
        let grace = self.config.timing.leave_grace;
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = self.shutdown.cancelled() => return,
            }
            let store = self.hub.store().clone();
            let reader = store.clone();
            let dead = match store::blocking(&store, move || reader.dead_instances(grace)).await {
                Ok(dead) => dead,
                Err(e) => {
                    debug!(error = %e, "cannot look for instances that died");
                    continue;
                }
            };
            for (instance, rooms) in dead {
                let threshold = self.config.limits.presence_threshold;
                match reaper::bury(&self.hub, &self.writes, &instance, rooms, threshold).await {
                    Ok(announced) => info!(instance = %instance, announced, "cleaned up after an instance that died"),
                    Err(e) => warn!(
                        instance = %instance,
                        error = %e,
                        "the clean-up after an instance that died stopped; it is tried again"
                    ),
                }
            }
        }
    }

    /// Open WebSocket sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.load(Ordering::Relaxed)
    }
}

/// Counts a session while it lives.
#[derive(Debug)]
pub struct SessionCount(Arc<App>);

impl SessionCount {
    /// Counts one more session until dropped.
    pub fn new(app: Arc<App>) -> Self {
        app.sessions.fetch_add(1, Ordering::Relaxed);
        app.metrics.connections_open.inc();
        Self(app)
    }
}

impl Drop for SessionCount {
    fn drop(&mut self) {
        self.0.sessions.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics.connections_open.dec();
    }
}
