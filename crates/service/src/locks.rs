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

    /// Waits for the lock of `key`.
    pub async fn lock(&self, key: &str) -> MutexGuard<'_, ()> {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        let slot = (h.finish() % self.slots.len() as u64) as usize;
        self.slots[slot].lock().await
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
}
