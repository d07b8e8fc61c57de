//! [`CachedVault`]: a cache in front of any [`KeyVault`], for the hot path (sealing every
//! message sent, unsealing every message of a history page).
//!
//! - Active keys are kept for a TTL (default [`CachedVault::DEFAULT_TTL`]), then asked for
//!   again.
//! - Destroyed keys are remembered for good: a destroyed key never comes back.
//! - Missing keys are not cached: another process may create the key at any moment.
//!
//! `destroy` through the cache evicts the key at once in this process. Other processes
//! (other replicas of the service, the projectors) keep using a key they cached for up to the
//! TTL after it was destroyed elsewhere: during that window they can still unseal the user's
//! data, and may seal new data with the destroyed key (which is then unreadable too). Choose
//! the TTL as the longest such window the deletion promise allows.
//!
//! The cache holds at most `capacity` users; when full, expired entries are dropped first,
//! then everything (the inner vault stays the truth, tombstones included).

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::time::Instant;
use uuid::Uuid;

use crate::{KeyState, KeyVault, Result, UserKey, VaultError};

#[derive(Clone)]
enum Entry {
    Active { key: UserKey, until: Instant },
    Destroyed,
}

/// A [`KeyVault`] that caches another's answers (see the [module docs](self)).
pub struct CachedVault<V> {
    inner: V,
    ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<Uuid, Entry>>,
}

impl<V: std::fmt::Debug> std::fmt::Debug for CachedVault<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedVault")
            .field("inner", &self.inner)
            .field("ttl", &self.ttl)
            .field("capacity", &self.capacity)
            .field("cached", &self.entries.lock().len())
            .finish()
    }
}

impl<V: KeyVault> CachedVault<V> {
    /// How long an active key is used without asking the inner vault again.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(10);
    /// How many users' entries are kept at most.
    pub const DEFAULT_CAPACITY: usize = 100_000;

    pub fn new(inner: V) -> Self {
        CachedVault {
            inner,
            ttl: Self::DEFAULT_TTL,
            capacity: Self::DEFAULT_CAPACITY,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Sets how long an active key is cached: the longest a key destroyed by another process
    /// stays usable here.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets how many users' entries are kept at most.
    pub fn with_capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity.max(1);
        self
    }

    pub fn inner(&self) -> &V {
        &self.inner
    }

    /// The cached state, if fresh.
    fn cached(&self, user: Uuid) -> Option<KeyState> {
        let mut entries = self.entries.lock();
        match entries.get(&user)? {
            Entry::Destroyed => Some(KeyState::Destroyed),
            Entry::Active { key, until } if *until > Instant::now() => {
                Some(KeyState::Active(key.clone()))
            }
            Entry::Active { .. } => {
                entries.remove(&user);
                None
            }
        }
    }

    fn remember(&self, user: Uuid, state: &KeyState) {
        let entry = match state {
            KeyState::Active(key) => Entry::Active {
                key: key.clone(),
                until: Instant::now() + self.ttl,
            },
            KeyState::Destroyed => Entry::Destroyed,
            KeyState::Missing => return,
        };
        let mut entries = self.entries.lock();
        if entries.len() >= self.capacity && !entries.contains_key(&user) {
            let now = Instant::now();
            entries.retain(|_, e| !matches!(e, Entry::Active { until, .. } if *until <= now));
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        // A destruction seen meanwhile (by this process) wins over an older answer.
        if !matches!(entries.get(&user), Some(Entry::Destroyed)) {
            entries.insert(user, entry);
        }
    }
}

#[async_trait]
impl<V: KeyVault> KeyVault for CachedVault<V> {
    async fn create(&self, user: Uuid) -> Result<UserKey> {
        match self.cached(user) {
            Some(KeyState::Active(key)) => return Ok(key),
            Some(KeyState::Destroyed) => return Err(VaultError::Destroyed),
            _ => {}
        }
        match self.inner.create(user).await {
            Ok(key) => {
                self.remember(user, &KeyState::Active(key.clone()));
                Ok(key)
            }
            Err(VaultError::Destroyed) => {
                self.remember(user, &KeyState::Destroyed);
                Err(VaultError::Destroyed)
            }
            Err(other) => Err(other),
        }
    }

    async fn key(&self, user: Uuid) -> Result<KeyState> {
        if let Some(state) = self.cached(user) {
            return Ok(state);
        }
        let state = self.inner.key(user).await?;
        self.remember(user, &state);
        Ok(state)
    }

    async fn destroy(&self, user: Uuid) -> Result<()> {
        // Evict first: even if the inner destroy fails part-way, this process stops using it.
        self.entries.lock().remove(&user);
        self.inner.destroy(user).await?;
        self.entries.lock().insert(user, Entry::Destroyed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// An in-memory vault that counts the calls that reach it.
    #[derive(Debug, Default)]
    struct Counting {
        keys: Mutex<HashMap<Uuid, Option<UserKey>>>,
        calls: AtomicUsize,
    }

    #[async_trait]
    impl KeyVault for Counting {
        async fn create(&self, user: Uuid) -> Result<UserKey> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let mut keys = self.keys.lock();
            match keys
                .entry(user)
                .or_insert_with(|| Some(UserKey::generate().expect("key")))
            {
                Some(key) => Ok(key.clone()),
                None => Err(VaultError::Destroyed),
            }
        }
        async fn key(&self, user: Uuid) -> Result<KeyState> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Ok(match self.keys.lock().get(&user) {
                None => KeyState::Missing,
                Some(None) => KeyState::Destroyed,
                Some(Some(key)) => KeyState::Active(key.clone()),
            })
        }
        async fn destroy(&self, user: Uuid) -> Result<()> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.keys.lock().insert(user, None);
            Ok(())
        }
    }

    fn calls(vault: &CachedVault<std::sync::Arc<Counting>>) -> usize {
        vault.inner().calls.load(Ordering::SeqCst)
    }

    #[tokio::test(start_paused = true)]
    async fn active_keys_are_cached_for_the_ttl() {
        let inner = std::sync::Arc::new(Counting::default());
        let vault = CachedVault::new(inner.clone()).with_ttl(Duration::from_secs(10));
        let user = Uuid::now_v7();
        assert_eq!(vault.key(user).await, Ok(KeyState::Missing));
        assert_eq!(vault.key(user).await, Ok(KeyState::Missing));
        assert_eq!(calls(&vault), 2, "missing keys are not cached");
        let key = vault.create(user).await.expect("create");
        for _ in 0..100 {
            assert_eq!(vault.key(user).await, Ok(KeyState::Active(key.clone())));
            assert_eq!(vault.create(user).await.as_ref(), Ok(&key));
        }
        assert_eq!(calls(&vault), 3);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(vault.key(user).await, Ok(KeyState::Active(key.clone())));
        assert_eq!(calls(&vault), 4, "asked again after the TTL");

        // Destroyed elsewhere (straight on the inner vault): seen once the TTL ran out.
        inner.destroy(user).await.expect("destroy");
        assert_eq!(vault.key(user).await, Ok(KeyState::Active(key)));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(vault.key(user).await, Ok(KeyState::Destroyed));
        let before = calls(&vault);
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(vault.key(user).await, Ok(KeyState::Destroyed));
        assert_eq!(vault.create(user).await, Err(VaultError::Destroyed));
        assert_eq!(calls(&vault), before, "destroyed keys are cached for good");
    }

    #[tokio::test(start_paused = true)]
    async fn destroy_through_the_cache_evicts_at_once() {
        let inner = std::sync::Arc::new(Counting::default());
        let vault = CachedVault::new(inner);
        let (user, other) = (Uuid::now_v7(), Uuid::now_v7());
        let key = vault.create(user).await.expect("create");
        let other_key = vault.create(other).await.expect("create");
        assert_eq!(vault.key(user).await, Ok(KeyState::Active(key)));
        vault.destroy(user).await.expect("destroy");
        assert_eq!(vault.key(user).await, Ok(KeyState::Destroyed));
        assert_eq!(vault.create(user).await, Err(VaultError::Destroyed));
        assert_eq!(vault.key(other).await, Ok(KeyState::Active(other_key)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_cache_drops_entries_and_stays_correct() {
        let inner = std::sync::Arc::new(Counting::default());
        let vault = CachedVault::new(inner).with_capacity(4);
        let users: Vec<Uuid> = (0..10).map(|_| Uuid::now_v7()).collect();
        let mut keys = Vec::new();
        for user in &users {
            keys.push(vault.create(*user).await.expect("create"));
        }
        vault.destroy(users[0]).await.expect("destroy");
        assert!(vault.entries.lock().len() <= 4);
        assert_eq!(vault.key(users[0]).await, Ok(KeyState::Destroyed));
        for (user, key) in users.iter().zip(keys).skip(1) {
            assert_eq!(vault.key(*user).await, Ok(KeyState::Active(key)));
        }
        assert!(vault.entries.lock().len() <= 4);
    }
}
