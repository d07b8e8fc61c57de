//! The KeyVault contract suite on the embedded SQLite vault (bare and behind the cache), and
//! what only a file can show: keys survive reopening, two handles on one file (as two
//! processes) agree, and destroyed key bytes are gone from `keys.db` and its WAL.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use missive_keys::sqlite::SqliteVault;
use missive_keys::{CachedVault, KeyState, KeyVault, UserKey, VaultError, seal, unseal_with};
use uuid::Uuid;

fn vault_in(dir: &tempfile::TempDir) -> SqliteVault {
    SqliteVault::open(&dir.path().join(SqliteVault::FILE_NAME)).expect("open")
}

macro_rules! contract_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite_contract {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let dir = tempfile::tempdir().expect("tempdir");
                    missive_keys::contract::$name(Arc::new(vault_in(&dir))).await;
                }
            )*
        }

        mod cached_sqlite_contract {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let dir = tempfile::tempdir().expect("tempdir");
                    missive_keys::contract::$name(Arc::new(CachedVault::new(vault_in(&dir))))
                        .await;
                }
            )*
        }
    };
}

contract_tests!(
    create_is_idempotent,
    concurrent_creates_yield_one_key,
    destroy_is_final,
    destroy_is_idempotent_and_needs_no_key,
    other_users_are_unaffected,
    sealed_values_open_only_with_their_key_and_owner,
    shredded_values_read_as_none,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_tombstones_survive_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (alice, bob) = (Uuid::now_v7(), Uuid::now_v7());
    let (key, sealed) = {
        let vault = vault_in(&dir);
        let key = vault.create(alice).await.expect("create");
        vault.create(bob).await.expect("create");
        vault.destroy(bob).await.expect("destroy");
        let sealed = seal(&key, alice, "alice");
        (key, sealed)
    };
    let vault = vault_in(&dir);
    assert_eq!(vault.key(alice).await, Ok(KeyState::Active(key.clone())));
    assert_eq!(vault.create(alice).await, Ok(key));
    assert_eq!(
        unseal_with(&vault, alice, &sealed).await,
        Ok(Some("alice".into()))
    );
    assert_eq!(vault.key(bob).await, Ok(KeyState::Destroyed));
    assert_eq!(vault.create(bob).await, Err(VaultError::Destroyed));
}

/// Two handles on one file, each with its own connections (as two processes have), racing
/// to create the same users' keys: every caller gets the one stored key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_handles_on_one_file_agree_on_each_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a: Arc<dyn KeyVault> = Arc::new(vault_in(&dir));
    let b: Arc<dyn KeyVault> = Arc::new(vault_in(&dir));
    for _ in 0..20 {
        let user = Uuid::now_v7();
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let vault = if i % 2 == 0 { a.clone() } else { b.clone() };
                tokio::spawn(async move { vault.create(user).await })
            })
            .collect();
        let mut keys = Vec::new();
        for task in tasks {
            keys.push(task.await.expect("join").expect("create"));
        }
        assert!(keys.windows(2).all(|w| w[0] == w[1]), "one key per user");
        assert_eq!(b.key(user).await, Ok(KeyState::Active(keys[0].clone())));
    }
    // A destroy through one handle is seen by the other at once.
    let user = Uuid::now_v7();
    a.create(user).await.expect("create");
    b.destroy(user).await.expect("destroy");
    assert_eq!(a.key(user).await, Ok(KeyState::Destroyed));
    assert_eq!(a.create(user).await, Err(VaultError::Destroyed));
}

/// The bytes of the vault's files: the database, its WAL and shared-memory index.
fn files_of(db: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    ["", "-wal", "-shm", "-journal"]
        .iter()
        .map(|suffix| PathBuf::from(format!("{}{suffix}", db.display())))
        .filter_map(|path| std::fs::read(&path).ok().map(|bytes| (path, bytes)))
        .collect()
}

/// Where `key`'s bytes (or its first half: a page boundary cannot split it so that neither
/// half shows) occur in the vault's files.
fn traces(db: &Path, key: &UserKey) -> Vec<String> {
    let bytes = key.expose_bytes();
    let needles: [&[u8]; 3] = [&bytes[..], &bytes[..16], &bytes[16..]];
    let mut found = Vec::new();
    for (path, content) in files_of(db) {
        for needle in needles {
            if let Some(at) = content.windows(needle.len()).position(|w| w == needle) {
                found.push(format!(
                    "{} bytes of the key at offset {at} of {}",
                    needle.len(),
                    path.display()
                ));
            }
        }
    }
    found
}

/// The shredding proof: a destroyed key's bytes are nowhere in `keys.db` or its WAL, while
/// the keys of users not deleted still are (so the search does find keys). Many users, so
/// that keys share pages, pages split, and some are checkpointed before the destroys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroyed_key_bytes_are_gone_from_the_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(SqliteVault::FILE_NAME);
    let vault = SqliteVault::open(&path).expect("open");
    let mut users = Vec::new();
    for _ in 0..300 {
        let user = Uuid::now_v7();
        let key = vault.create(user).await.expect("create");
        users.push((user, key));
    }
    // A single user first: created, found in the files, destroyed, gone.
    let lone = Uuid::now_v7();
    let key = vault.create(lone).await.expect("create");
    assert!(
        !traces(&path, &key).is_empty(),
        "a live key is in the files (else this test proves nothing)"
    );
    vault.destroy(lone).await.expect("destroy");
    assert_eq!(traces(&path, &key), Vec::<String>::new());

    // Every third user deleted, one by one.
    for (user, _) in users.iter().step_by(3) {
        vault.destroy(*user).await.expect("destroy");
    }
    drop(vault);
    // Also after a reopen (and whatever SQLite does on close).
    let vault = SqliteVault::open(&path).expect("reopen");
    for (i, (user, key)) in users.iter().enumerate() {
        if i % 3 == 0 {
            assert_eq!(traces(&path, key), Vec::<String>::new(), "user {i}");
            assert_eq!(vault.key(*user).await, Ok(KeyState::Destroyed));
        } else {
            assert!(!traces(&path, key).is_empty(), "user {i}'s live key");
        }
    }
}

#[test]
fn a_vault_of_another_schema_version_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(SqliteVault::FILE_NAME);
    drop(SqliteVault::open(&path).expect("create"));
    SqliteVault::open(&path).expect("reopen");
    rusqlite::Connection::open(&path)
        .and_then(|c| c.pragma_update(None, "user_version", 7))
        .expect("set version");
    let error = SqliteVault::open(&path).expect_err("refused");
    assert!(error.to_string().contains("schema version 7"), "{error}");
    assert!(!error.is_transient());
}

#[test]
fn debug_output_shows_no_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = vault_in(&dir);
    let key = UserKey::generate().expect("key");
    let shown = format!(
        "{vault:?} {:?} {:?}",
        KeyState::Active(key.clone()),
        CachedVault::new(vault.clone())
    );
    assert!(shown.contains("<redacted>"), "{shown}");
    let hex: String = key.expose_bytes()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(!shown.contains(&hex), "{shown}");
    assert!(!shown.contains(&format!("{:?}", &key.expose_bytes()[..4])));
}
