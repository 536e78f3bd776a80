//! One name's changes at a time: with names shared across instances, a
//! join claims its name in the store and then takes it in the room, and a
//! member's end takes it out of the room and then gives it back. Each runs
//! under its name's lock, so what the store holds for a name always
//! matches what this room holds once the lock is let go (a join never finds
//! a claim its own room is about to give back).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

/// Per-name async locks; a name nobody waits for has no entry, so the map
/// holds at most one entry per join or end in progress.
#[derive(Debug, Default)]
pub struct NameLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Holds one name's lock until dropped.
#[derive(Debug)]
pub struct NameGuard<'a> {
    locks: &'a NameLocks,
    key: String,
    mutex: Arc<tokio::sync::Mutex<()>>,
    guard: Option<OwnedMutexGuard<()>>,
}

impl NameLocks {
    /// Waits for the lock of the name under `key`.
    pub async fn lock(&self, key: &str) -> NameGuard<'_> {
        let mutex = self.map().entry(key.to_owned()).or_default().clone();
        let guard = mutex.clone().lock_owned().await;
        NameGuard { locks: self, key: key.to_owned(), mutex, guard: Some(guard) }
    }

    /// How many names have a lock now (held or waited for).
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// Whether no name has a lock now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<tokio::sync::Mutex<()>>>> {
        self.locks.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for NameGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self.locks.map();
        // The map's reference and this guard's: nobody else waits for it.
        if Arc::strong_count(&self.mutex) == 2 {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_change_of_a_name_at_a_time_and_no_entry_left_behind() {
        let locks = Arc::new(NameLocks::default());
        // Per name: how many hold it now, and the most that ever did.
        let counts: Arc<[(AtomicUsize, AtomicUsize); 2]> = Arc::new(Default::default());
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let (locks, counts) = (locks.clone(), counts.clone());
                tokio::spawn(async move {
                    let _guard = locks.lock(["ada", "bo"][i % 2]).await;
                    let (inside, most) = &counts[i % 2];
                    most.fetch_max(inside.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    inside.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("task");
        }
        for (_, most) in counts.iter() {
            assert_eq!(most.load(Ordering::SeqCst), 1, "one holder of a name at a time");
        }
        assert!(locks.is_empty(), "every entry went with its last holder");
    }
}
