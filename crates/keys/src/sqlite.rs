//! The embedded key vault: its own SQLite database, `keys.db` in the data directory.
//!
//! It is a file of its own, apart from the read models, so that rebuilding or swapping the
//! read store never touches keys: keys are not derived from the log and cannot be rebuilt.
//! For the same reason every commit is durable (`synchronous = FULL`): a key lost in a power
//! cut after its user's data was sealed with it would shred that data.
//!
//! One table, `user_keys (user_id, key, destroyed_at)`: a row with a key is an active key, a
//! row with `destroyed_at` (Unix milliseconds) a tombstone. `create` inserts the key if no
//! row exists (`INSERT OR IGNORE`) and reads the row back in the same `IMMEDIATE`
//! transaction, so concurrent creates, in this process or others sharing the file, end with
//! one key.
//!
//! # Shredding
//! - `PRAGMA secure_delete = ON` (on every connection: it is not stored in the file) makes
//!   SQLite overwrite deleted content, here the key's old bytes, with zeros.
//! - WAL mode keeps copies of written pages in `keys.db-wal`; after a destroy,
//!   `PRAGMA wal_checkpoint(TRUNCATE)` moves every page into `keys.db` and truncates the WAL to
//!   zero bytes. If another process's reader holds an old snapshot past the busy timeout, the
//!   destroy reports [`VaultError::Unavailable`]: the key is destroyed, and calling `destroy`
//!   again finishes the wipe.
//!
//! What this cannot reach: backups and copies of the file, filesystem or volume snapshots,
//! blocks the filesystem or the SSD's flash translation layer moved or freed without erasing
//! (including the truncated WAL's old blocks), swap, and the memory of processes that read
//! the key. Keep `keys.db` out of long-lived backups, or keep backups no longer than the
//! deletion promise allows.
//!
//! Calls run on tokio's blocking pool: one writer connection and one reader connection.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};
use uuid::Uuid;

use crate::{KeyState, KeyVault, Result, UserKey, VaultError};

/// The schema's version (`PRAGMA user_version`). A file of another version is refused.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS user_keys (
    user_id      BLOB PRIMARY KEY,
    key          BLOB,
    destroyed_at INTEGER
);
";

/// How long a connection waits for another's lock (another process's transaction, or a
/// reader that holds an old snapshot during a checkpoint).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

fn sql(action: &'static str) -> impl FnOnce(rusqlite::Error) -> VaultError {
    move |e| {
        let transient = matches!(
            e.sqlite_error_code(),
            Some(
                ErrorCode::DatabaseBusy
                    | ErrorCode::DatabaseLocked
                    | ErrorCode::DiskFull
                    | ErrorCode::SystemIoFailure
                    | ErrorCode::CannotOpen
                    | ErrorCode::OutOfMemory
            )
        );
        let reason = format!("{action}: {e}");
        if transient {
            VaultError::Unavailable(reason)
        } else {
            VaultError::Corrupt(reason)
        }
    }
}

fn open_connection(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path).map_err(sql("opening the key vault"))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(sql("setting the busy timeout"))?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(sql("enabling WAL mode"))?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(sql("setting synchronous mode"))?;
    conn.pragma_update(None, "secure_delete", "ON")
        .map_err(sql("enabling secure delete"))?;
    let secure: i64 = conn
        .pragma_query_value(None, "secure_delete", |r| r.get(0))
        .map_err(sql("reading secure delete"))?;
    if secure != 1 {
        return Err(VaultError::Corrupt(format!(
            "this SQLite build does not overwrite deleted content (secure_delete = {secure}); \
             destroyed keys would stay in {}",
            path.display()
        )));
    }
    Ok(conn)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A row of `user_keys` as a state.
fn state_of(user: Uuid, row: Option<(Option<Vec<u8>>, Option<i64>)>) -> Result<KeyState> {
    Ok(match row {
        None => KeyState::Missing,
        Some((_, Some(_))) => KeyState::Destroyed,
        Some((Some(bytes), None)) => {
            KeyState::Active(UserKey::from_bytes(&bytes).ok_or_else(|| {
                VaultError::Corrupt(format!(
                    "the key of user {user} has {} bytes, expected {}",
                    bytes.len(),
                    crate::KEY_LEN
                ))
            })?)
        }
        Some((None, None)) => {
            return Err(VaultError::Corrupt(format!(
                "user {user} has a key row with neither a key nor a destruction time"
            )));
        }
    })
}

fn read_state(conn: &Connection, user: Uuid) -> Result<KeyState> {
    let row = conn
        .prepare_cached("SELECT key, destroyed_at FROM user_keys WHERE user_id = ?1")
        .map_err(sql("preparing a key read"))?
        .query_row(params![user], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
        .map_err(sql("reading a key"))?;
    state_of(user, row)
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
}

/// The embedded [`KeyVault`].
#[derive(Clone)]
pub struct SqliteVault {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SqliteVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteVault")
            .field("path", &self.inner.path)
            .finish()
    }
}

impl SqliteVault {
    /// The vault's usual file name, in the data directory.
    pub const FILE_NAME: &'static str = "keys.db";

    /// Opens (creating if needed) the vault at `path` (`<data dir>/keys.db`).
    pub fn open(path: &Path) -> Result<Self> {
        let writer = open_connection(path)?;
        let version: i64 = writer
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(sql("reading the schema version"))?;
        match version {
            0 => writer
                .execute_batch(&format!(
                    "BEGIN IMMEDIATE; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
                ))
                .map_err(sql("creating the key vault schema"))?,
            SCHEMA_VERSION => {}
            other => {
                return Err(VaultError::Corrupt(format!(
                    "{} has key vault schema version {other}, this build reads {SCHEMA_VERSION}",
                    path.display()
                )));
            }
        }
        let reader = open_connection(path)?;
        Ok(SqliteVault {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                writer: Mutex::new(writer),
                reader: Mutex::new(reader),
            }),
        })
    }

    /// Where the vault's file is.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| VaultError::Unavailable(format!("key vault task: {e}")))?
    }
}

impl Inner {
    fn create(&self, user: Uuid, fresh: &UserKey) -> Result<KeyState> {
        let mut conn = self.writer.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql("starting a key transaction"))?;
        tx.prepare_cached("INSERT OR IGNORE INTO user_keys (user_id, key) VALUES (?1, ?2)")
            .map_err(sql("preparing a key insert"))?
            .execute(params![user, &fresh.expose_bytes()[..]])
            .map_err(sql("storing a key"))?;
        let state = read_state(&tx, user)?;
        tx.commit().map_err(sql("committing a key"))?;
        Ok(state)
    }

    fn destroy(&self, user: Uuid) -> Result<()> {
        let conn = self.writer.lock();
        conn.prepare_cached(
            "INSERT INTO user_keys (user_id, key, destroyed_at) VALUES (?1, NULL, ?2)
             ON CONFLICT (user_id) DO UPDATE
             SET key = NULL, destroyed_at = COALESCE(user_keys.destroyed_at, excluded.destroyed_at)",
        )
        .map_err(sql("preparing a key destruction"))?
        .execute(params![user, now_ms()])
        .map_err(sql("destroying a key"))?;
        // Our reader must not hold a snapshot while the WAL is reset.
        let _reader = self.reader.lock();
        let (busy, _, _): (i64, i64, i64) = conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .map_err(sql("wiping the write-ahead log"))?;
        if busy != 0 {
            return Err(VaultError::Unavailable(format!(
                "the key of user {user} is destroyed, but another connection to {} kept the \
                 write-ahead log from being wiped; destroy it again to finish",
                self.path.display()
            )));
        }
        Ok(())
    }
}

#[async_trait]
impl KeyVault for SqliteVault {
    async fn create(&self, user: Uuid) -> Result<UserKey> {
        let state = match self.key(user).await? {
            KeyState::Missing => {
                let fresh = UserKey::generate()?;
                self.blocking(move |inner| inner.create(user, &fresh))
                    .await?
            }
            known => known,
        };
        match state {
            KeyState::Active(key) => Ok(key),
            KeyState::Destroyed => Err(VaultError::Destroyed),
            KeyState::Missing => Err(VaultError::Corrupt(format!(
                "the key of user {user} was stored but cannot be read back"
            ))),
        }
    }

    async fn key(&self, user: Uuid) -> Result<KeyState> {
        self.blocking(move |inner| read_state(&inner.reader.lock(), user))
            .await
    }

    async fn destroy(&self, user: Uuid) -> Result<()> {
        self.blocking(move |inner| inner.destroy(user)).await
    }
}
