//! Keyed async locks: a fixed set of mutexes chosen by the key's hash. Two keys may share a
//! mutex (and then wait for each other briefly); one key always maps to the same mutex.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use tokio::sync::{Mutex, MutexGuard};

#[derive(Debug)]
pub struct KeyedLocks {
    slots: Vec<Mutex<()>>,
}

impl KeyedLocks {
    pub fn new(slots: usize) -> Self {
        KeyedLocks {
            slots: (0..slots.max(1)).map(|_| Mutex::new(())).collect(),
        }
    }

    fn slot(&self, key: &str) -> usize {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        (h.finish() % self.slots.len() as u64) as usize
    }

    /// Waits for the lock of `key`.
    pub async fn lock(&self, key: &str) -> MutexGuard<'_, ()> {
        self.slots[self.slot(key)].lock().await
    }

    /// Waits for the locks of every key (a command that touches a user and a server, say).
    /// Their mutexes are taken once each, in one global order, so two callers never deadlock
    /// and two keys sharing a mutex do not wait for themselves. Do not hold a [`Self::lock`]
    /// guard while calling it.
    pub async fn lock_many(&self, keys: &[&str]) -> Vec<MutexGuard<'_, ()>> {
        let mut slots: Vec<usize> = keys.iter().map(|k| self.slot(k)).collect();
        slots.sort_unstable();
        slots.dedup();
        let mut guards = Vec::with_capacity(slots.len());
        for slot in slots {
            guards.push(self.slots[slot].lock().await);
        }
        guards
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_key_is_exclusive_other_keys_are_free() {
        let locks = KeyedLocks::new(1024);
        let held = locks.lock("a").await;
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(20), locks.lock("a"))
                .await
                .is_err(),
            "the same key must wait"
        );
        // With 1024 slots, some other key maps elsewhere.
        let free = ["b", "c", "d", "e"];
        let mut any_free = false;
        for k in free {
            if tokio::time::timeout(std::time::Duration::from_millis(20), locks.lock(k))
                .await
                .is_ok()
            {
                any_free = true;
            }
        }
        assert!(any_free);
        drop(held);
        let _again = locks.lock("a").await;
    }

    #[tokio::test]
    async fn many_keys_lock_together_without_waiting_for_themselves() {
        // One slot: every key shares the mutex, and the same key may be named twice.
        let locks = KeyedLocks::new(1);
        let held = locks.lock_many(&["user:a", "server:b", "user:a"]).await;
        assert_eq!(held.len(), 1);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(20), locks.lock("other"))
                .await
                .is_err(),
            "the keys are held"
        );
        drop(held);
        assert_eq!(locks.lock_many(&[]).await.len(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn opposite_orders_do_not_deadlock() {
        let locks = std::sync::Arc::new(KeyedLocks::new(64));
        let a = "k0".to_owned();
        let b = (1..)
            .map(|i| format!("k{i}"))
            .find(|k| locks.slot(k) != locks.slot(&a))
            .expect("two keys in different slots");
        let mut tasks = Vec::new();
        for i in 0..200 {
            let (locks, a, b) = (locks.clone(), a.clone(), b.clone());
            tasks.push(tokio::spawn(async move {
                let keys = if i % 2 == 0 { [&a, &b] } else { [&b, &a] };
                let _held = locks.lock_many(&[keys[0].as_str(), keys[1].as_str()]).await;
                tokio::task::yield_now().await;
            }));
        }
        // A deadlock would hang here; the bound only turns a hang into a failure.
        tokio::time::timeout(std::time::Duration::from_secs(30), async {
            for task in tasks {
                task.await.expect("task");
            }
        })
        .await
        .expect("no deadlock");
    }
}
