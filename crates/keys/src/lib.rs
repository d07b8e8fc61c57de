//! Per-user encryption keys, so that an account can be deleted from an immutable event log
//! (crypto-shredding).
//!
//! Personal fields (username, display name, message text) are sealed with their owner's key
//! before their event is appended, and unsealed with it when projected or read. The keys live
//! outside the log, in a [`KeyVault`]; deleting an account destroys its key, after which every
//! copy of those fields (in the log, its replicas and backups, and any replay of it) is
//! ciphertext that nothing can open. The vault keeps a tombstone: a destroyed user never gets a
//! new key, so nothing sealed afterwards could be mistaken for the user's again.
//!
//! Values written before sealing existed have no [`SEALED_PREFIX`] and pass through
//! unchanged ([`unseal`], [`unseal_with`]).
//!
//! # Layout
//! - [`seal`](mod@seal): [`UserKey`], [`seal()`], [`unseal`], [`is_sealed`]: AES-256-GCM
//!   (`ring`), no I/O.
//! - [`KeyVault`]: the port; [`KeyState`], [`VaultError`]; [`seal_with`], [`unseal_with`] and
//!   [`KeyRing`] for callers.
//! - [`sqlite`]: the embedded vault (`keys.db`, its own file beside the read models).
//! - `scylla` (feature `scylla`, on by default): the vault on the read store's keyspace
//!   (`projections/0005_user_keys.cql`).
//! - [`cached`]: [`CachedVault`], a TTL cache in front of any vault for the hot path.
//! - [`personal`]: which fields are personal data; [`seal_event`] (the service, before
//!   appending) and [`OpenedStore`] (the read store as the application sees it).
//! - [`contract`]: the vault contract suite, generic over any [`KeyVault`].

pub mod cached;
pub mod contract;
pub mod personal;
#[cfg(feature = "scylla")]
pub mod scylla;
pub mod seal;
pub mod sqlite;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use uuid::Uuid;

pub use cached::CachedVault;
pub use personal::{OpenedStore, seal_event};
pub use seal::{KEY_LEN, SEALED_PREFIX, SealError, UserKey, is_sealed, seal, unseal};

/// What can go wrong with a key vault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VaultError {
    /// The user's key was destroyed (the account was deleted): nothing can be sealed for them.
    #[error("the user's key was destroyed (the account was deleted)")]
    Destroyed,
    /// The vault could not be reached or did not answer in time: retry later.
    #[error("the key vault is unavailable: {0}")]
    Unavailable(String),
    /// The vault holds something it cannot read (a key of the wrong length, a schema it does
    /// not know): an operator must look.
    #[error("the key vault is corrupt: {0}")]
    Corrupt(String),
}

impl VaultError {
    /// Whether the same call may succeed later.
    pub fn is_transient(&self) -> bool {
        matches!(self, VaultError::Unavailable(_))
    }
}

pub type Result<T, E = VaultError> = std::result::Result<T, E>;

/// A user's key, as the vault knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyState {
    Active(UserKey),
    /// Destroyed: the account was deleted, its sealed data is unreadable for good.
    Destroyed,
    /// The user never had a key (nothing was sealed for them).
    Missing,
}

/// Where users' keys live: outside the log, so that destroying one shreds the user's data.
#[async_trait]
pub trait KeyVault: Send + Sync + std::fmt::Debug {
    /// The user's key, created on first call; `Err(VaultError::Destroyed)` once destroyed
    /// (never resurrected). Concurrent first calls, in any processes, all get the same key.
    async fn create(&self, user: Uuid) -> Result<UserKey>;
    /// The user's key, if any.
    async fn key(&self, user: Uuid) -> Result<KeyState>;
    /// Destroys the user's key. Idempotent; keeps a tombstone so that [`KeyVault::create`]
    /// never makes a new key for the user (also for a user who never had one).
    async fn destroy(&self, user: Uuid) -> Result<()>;
}

#[async_trait]
impl<T: KeyVault + ?Sized> KeyVault for Arc<T> {
    async fn create(&self, user: Uuid) -> Result<UserKey> {
        (**self).create(user).await
    }
    async fn key(&self, user: Uuid) -> Result<KeyState> {
        (**self).key(user).await
    }
    async fn destroy(&self, user: Uuid) -> Result<()> {
        (**self).destroy(user).await
    }
}

/// Seals `plaintext` for `owner` with their key, creating it on first use.
/// `Err(VaultError::Destroyed)` once the owner's account was deleted.
pub async fn seal_with(vault: &dyn KeyVault, owner: Uuid, plaintext: &str) -> Result<String> {
    let key = vault.create(owner).await?;
    Ok(seal(&key, owner, plaintext))
}

/// Opens one value of `owner`'s: `Ok(Some(plain))` for plaintext (not sealed; the vault is not
/// asked) or a value that opens; `Ok(None)` when it is shredded: the owner's key is destroyed,
/// or the value does not open with it (logged). `Err` when the vault failed, and
/// `Err(VaultError::Unavailable)` when it has no key at all for the owner of a sealed value:
/// the key was made before the value was sealed, so this process is not using the vault that
/// sealed it (or the vault was lost), and reading everyone's data as shredded would hide that.
///
/// For many values (a history page), [`KeyRing`] asks the vault once per owner.
pub async fn unseal_with(vault: &dyn KeyVault, owner: Uuid, value: &str) -> Result<Option<String>> {
    KeyRing::new(vault).unseal(owner, value).await
}

fn open(key: &UserKey, owner: Uuid, value: &str) -> Option<String> {
    match unseal(key, owner, value) {
        Ok(plain) => Some(plain),
        Err(error) => {
            tracing::warn!(%owner, %error, "a sealed value does not open with its owner's key: treated as shredded");
            None
        }
    }
}

/// Opens many values, asking the vault once per owner: build one per request (a history
/// page, a conversation list) and drop it after, so keys are not held longer than that.
#[derive(Debug)]
pub struct KeyRing<'a> {
    vault: &'a dyn KeyVault,
    keys: HashMap<Uuid, Option<UserKey>>,
}

impl<'a> KeyRing<'a> {
    pub fn new(vault: &'a dyn KeyVault) -> Self {
        KeyRing {
            vault,
            keys: HashMap::new(),
        }
    }

    /// The key of `owner`, who has sealed data: `None` when destroyed; a missing key is an
    /// error, as in [`unseal_with`].
    pub async fn key(&mut self, owner: Uuid) -> Result<Option<UserKey>> {
        if let Some(key) = self.keys.get(&owner) {
            return Ok(key.clone());
        }
        let key = match self.vault.key(owner).await? {
            KeyState::Active(key) => Some(key),
            KeyState::Destroyed => None,
            KeyState::Missing => {
                return Err(VaultError::Unavailable(format!(
                    "no key for user {owner}, whose data is sealed: this process must use the \
                     vault the API sealed with"
                )));
            }
        };
        self.keys.insert(owner, key.clone());
        Ok(key)
    }

    /// As [`unseal_with`], with each owner's key looked up once.
    pub async fn unseal(&mut self, owner: Uuid, value: &str) -> Result<Option<String>> {
        if !is_sealed(value) {
            return Ok(Some(value.to_owned()));
        }
        Ok(self
            .key(owner)
            .await?
            .and_then(|key| open(&key, owner, value)))
    }
}
