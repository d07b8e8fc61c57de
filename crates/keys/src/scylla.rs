//! The key vault on ScyllaDB or Cassandra: table `user_keys` of
//! `projections/0005_user_keys.cql`, in the read store's keyspace.
//!
//! - `create` reads the row first (the common case: the key exists). Only when there is none
//!   does it insert a fresh key with a lightweight transaction, `INSERT ... IF NOT EXISTS`,
//!   at serial consistency `SERIAL`; when that does not apply, the result carries the row that
//!   won, and its key (or its tombstone) is the answer. So concurrent creates anywhere end
//!   with one key. `SERIAL` rather than `LOCAL_SERIAL`: with `LOCAL_SERIAL`, two datacenters
//!   could each create a key for the same user, one overwriting the other and shredding what
//!   was sealed with it. The cost: a user's first key cannot be created while a majority of
//!   all replicas is unreachable.
//! - `key` reads at the configured consistency (`LOCAL_QUORUM` by default). When it finds no
//!   row it reads again at `SERIAL`, which also sees a key just created in another datacenter
//!   whose replication has not arrived yet.
//! - `destroy` is a plain `UPDATE ... SET key = null, destroyed_at = ?`: it also writes a
//!   tombstone for a user who never had a key. A row with `destroyed_at` set is destroyed
//!   whatever else it holds. Should a destroy race the user's very first create and lose on
//!   the `key` cell, the next `key` or `create` that sees both nulls the key again (`KEY_WIPE`).
//!
//! # What shredding leaves behind
//! Setting `key` to null writes a tombstone; the old key bytes stay in SSTables until a
//! compaction after `gc_grace_seconds` (3600 s on this table) merges them with it. Until then
//! they are also in commit log segments not yet recycled, in memtables, in hints for replicas
//! that were down, and (from the LWT) in `system.paxos`, kept for the table's
//! `gc_grace_seconds`. Snapshots (`nodetool snapshot`, automatic snapshots before `TRUNCATE`
//! or `DROP`) and backups keep them for as long as they are kept. `destroyed_at` is never
//! deleted: should a replica that missed the destroy for longer than `gc_grace_seconds`
//! bring the key back, reads still report the key destroyed and null it again.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ::scylla::client::session::Session;
use ::scylla::errors::{ExecutionError, PrepareError};
use ::scylla::response::query_result::QueryRowsResult;
use ::scylla::serialize::row::SerializeRow;
use ::scylla::statement::prepared::PreparedStatement;
use ::scylla::statement::{Consistency, SerialConsistency};
use ::scylla::value::{CqlTimestamp, CqlValue, Row};
use async_trait::async_trait;
use missive_store::scylla::{ScyllaConfig, exec_transient, prepare_transient};
use uuid::Uuid;

use crate::{KeyState, KeyVault, Result, UserKey, VaultError};

/// The schema version (`projections/0005_user_keys.cql`) that creates the table.
pub const SCHEMA_VERSION: i32 = 5;

/// Every statement the vault prepares, with the table unqualified (as in the schema file);
/// [`ScyllaVault::new`] qualifies it with the keyspace.
pub mod cql {
    /// A user's key, or their tombstone.
    pub const KEY_GET: &str = "SELECT key, destroyed_at FROM user_keys WHERE user_id = ?";
    /// A new key, unless the user has a row (a key or a tombstone); a lightweight transaction.
    pub const KEY_CREATE: &str = "INSERT INTO user_keys (user_id, key) VALUES (?, ?) IF NOT EXISTS";
    /// Destroys a user's key (and keeps the tombstone): `destroyed_at`, then `user_id`.
    pub const KEY_DESTROY: &str =
        "UPDATE user_keys SET key = null, destroyed_at = ? WHERE user_id = ?";

    /// Nulls the key bytes of a row found destroyed that still holds them.
    pub const KEY_WIPE: &str = "UPDATE user_keys SET key = null WHERE user_id = ?";

    /// Every key and tombstone (paged), for [`super::ScyllaVault::copy_into`].
    pub const KEY_ALL: &str = "SELECT user_id, key, destroyed_at FROM user_keys";

    /// Every statement above.
    pub const ALL: &[&str] = &[KEY_GET, KEY_CREATE, KEY_DESTROY, KEY_WIPE, KEY_ALL];
}

fn exec_err(action: &'static str) -> impl FnOnce(ExecutionError) -> VaultError {
    move |e| {
        if exec_transient(&e) {
            VaultError::Unavailable(format!("{action}: {e}"))
        } else {
            VaultError::Corrupt(format!("{action} was refused: {e}"))
        }
    }
}

fn shape_err(action: &'static str) -> impl Fn(String) -> VaultError {
    move |reason| VaultError::Corrupt(format!("{action}: unexpected result: {reason}"))
}

fn now() -> CqlTimestamp {
    CqlTimestamp(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
    )
}

/// `user_keys` with its keyspace, in a statement of [`cql`].
fn qualified(statement: &str, keyspace: &str) -> String {
    match statement.strip_suffix(" user_keys") {
        Some(head) => format!("{head} {keyspace}.user_keys"),
        None => statement.replacen(" user_keys ", &format!(" {keyspace}.user_keys "), 1),
    }
}

fn valid_keyspace(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && name.len() <= 48
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// A stored row (`key`, `destroyed_at`), as the vault reads it.
#[derive(Debug)]
enum Stored {
    Missing,
    Active(UserKey),
    /// Destroyed; `true` when the key's bytes are still there (a destroy that lost a race
    /// with the first create, or a replica that brought them back).
    Destroyed(bool),
}

fn stored(user: Uuid, key: Option<Vec<u8>>, destroyed: bool) -> Result<Stored> {
    match (key, destroyed) {
        (key, true) => Ok(Stored::Destroyed(key.is_some())),
        (Some(bytes), false) => UserKey::from_bytes(&bytes)
            .map(Stored::Active)
            .ok_or_else(|| {
                VaultError::Corrupt(format!(
                    "the key of user {user} has {} bytes, expected {}",
                    bytes.len(),
                    crate::KEY_LEN
                ))
            }),
        (None, false) => Err(VaultError::Corrupt(format!(
            "user {user} has a key row with neither a key nor a destruction time"
        ))),
    }
}

/// The outcome of the create LWT: `None` when it applied, else the row that was there.
fn lwt_outcome(user: Uuid, result: QueryRowsResult) -> Result<Option<Stored>> {
    const ACTION: &str = "creating a key";
    let specs = result.column_specs();
    let applied_at = specs
        .get_by_name("[applied]")
        .map(|(i, _)| i)
        .ok_or_else(|| shape_err(ACTION)("no [applied] column".into()))?;
    let key_at = specs.get_by_name("key").map(|(i, _)| i);
    let destroyed_at = specs.get_by_name("destroyed_at").map(|(i, _)| i);
    let row: Row = result
        .single_row()
        .map_err(|e| e.to_string())
        .map_err(shape_err(ACTION))?;
    let column = |at: Option<usize>| at.and_then(|i| row.columns.get(i).cloned().flatten());
    match column(Some(applied_at)) {
        Some(CqlValue::Boolean(true)) => return Ok(None),
        Some(CqlValue::Boolean(false)) => {}
        other => return Err(shape_err(ACTION)(format!("[applied] is {other:?}"))),
    }
    let key = match column(key_at) {
        Some(CqlValue::Blob(bytes)) => Some(bytes),
        None => None,
        Some(other) => return Err(shape_err(ACTION)(format!("key is {other:?}"))),
    };
    let destroyed = match column(destroyed_at) {
        Some(CqlValue::Timestamp(_)) => true,
        None => false,
        Some(other) => return Err(shape_err(ACTION)(format!("destroyed_at is {other:?}"))),
    };
    stored(user, key, destroyed).map(Some)
}

struct Statements {
    get: PreparedStatement,
    get_serial: PreparedStatement,
    create: PreparedStatement,
    destroy: PreparedStatement,
    wipe: PreparedStatement,
    all: PreparedStatement,
}

async fn prepare(session: &Session, cql: String) -> Result<PreparedStatement> {
    let mut statement = session
        .prepare(cql.as_str())
        .await
        .map_err(|e: PrepareError| {
            let reason = format!("preparing {cql}: {e}");
            if prepare_transient(&e) {
                VaultError::Unavailable(reason)
            } else {
                VaultError::Corrupt(reason)
            }
        })?;
    // Reads are reads; the LWT's outcome is read back from its result (a retry that finds the
    // row its first attempt wrote returns that key); a destroy writes the same thing again.
    statement.set_is_idempotent(true);
    Ok(statement)
}

/// What [`ScyllaVault::copy_into`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Copied {
    /// Keys the target did not hold, written there.
    pub keys: usize,
    /// Keys the target held already.
    pub already: usize,
    /// Tombstones (deleted users) written, to the target or back to the source.
    pub tombstones: usize,
    /// Users with a different key on each side: not copied (an operator must decide).
    pub conflicts: Vec<Uuid>,
    /// Rows of the source that cannot be read: not copied.
    pub unreadable: Vec<Uuid>,
}

/// The Scylla [`KeyVault`].
#[derive(Clone)]
pub struct ScyllaVault {
    session: Arc<Session>,
    keyspace: String,
    st: Arc<Statements>,
}

impl std::fmt::Debug for ScyllaVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScyllaVault")
            .field("keyspace", &self.keyspace)
            .finish()
    }
}

impl ScyllaVault {
    /// Connects (as the read store does), uses the configured keyspace, checks that schema
    /// version 5 is applied (`missive store migrate`), and prepares every statement. Reads
    /// and writes use the configured consistency.
    pub async fn open(config: &ScyllaConfig) -> Result<Self> {
        let session = missive_store::scylla::open_keyspace(config, &[SCHEMA_VERSION])
            .await
            .map_err(|e| match e {
                missive_store::StoreError::Schema(why) => VaultError::Corrupt(why),
                other => VaultError::Unavailable(other.to_string()),
            })?;
        Self::new(session, &config.keyspace).await
    }

    /// The vault on an open session (e.g. one shared with the read store), in `keyspace`
    /// (where `projections/0005_user_keys.cql` is applied; statements name it, so the
    /// session's current keyspace does not matter). Reads and writes use the session's
    /// default consistency.
    pub async fn new(session: Arc<Session>, keyspace: &str) -> Result<Self> {
        if !valid_keyspace(keyspace) {
            return Err(VaultError::Corrupt(format!(
                "not a keyspace name: {keyspace:?}"
            )));
        }
        let s = &session;
        let get = prepare(s, qualified(cql::KEY_GET, keyspace)).await?;
        let mut get_serial = get.clone();
        get_serial.set_consistency(Consistency::Serial);
        let mut create = prepare(s, qualified(cql::KEY_CREATE, keyspace)).await?;
        create.set_serial_consistency(Some(SerialConsistency::Serial));
        let destroy = prepare(s, qualified(cql::KEY_DESTROY, keyspace)).await?;
        let wipe = prepare(s, qualified(cql::KEY_WIPE, keyspace)).await?;
        let all = prepare(s, qualified(cql::KEY_ALL, keyspace)).await?;
        Ok(ScyllaVault {
            session,
            keyspace: keyspace.to_owned(),
            st: Arc::new(Statements {
                get,
                get_serial,
                create,
                destroy,
                wipe,
                all,
            }),
        })
    }

    async fn execute(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
        action: &'static str,
    ) -> Result<::scylla::response::query_result::QueryResult> {
        self.session
            .execute_unpaged(statement, values)
            .await
            .map_err(exec_err(action))
    }

    async fn read(&self, user: Uuid, statement: &PreparedStatement) -> Result<Stored> {
        const ACTION: &str = "reading a key";
        let result = self
            .execute(statement, (user,), ACTION)
            .await?
            .into_rows_result()
            .map_err(|e| e.to_string())
            .map_err(shape_err(ACTION))?;
        let row = result
            .maybe_first_row::<(Option<Vec<u8>>, Option<CqlTimestamp>)>()
            .map_err(|e| e.to_string())
            .map_err(shape_err(ACTION))?;
        match row {
            None => Ok(Stored::Missing),
            Some((key, destroyed_at)) => stored(user, key, destroyed_at.is_some()),
        }
    }

    /// Copies every key and every tombstone into `target`, a vault in another keyspace (one
    /// that `missive replay` rebuilt the read models into), so that servers switched to it
    /// still open every user's data and never give a deleted user a key again.
    ///
    /// Safe to repeat: a key `target` holds already is left alone, a tombstone on either side
    /// wins (it is written to the other), and a key is written with the same lightweight
    /// transaction as a first key. Two different keys for one user (each side sealed with its
    /// own, so neither can replace the other) and rows that cannot be read are not copied:
    /// they are listed in [`Copied`] while every other row is copied. `Err` only when a
    /// keyspace could not be reached: the copy can then simply be run again.
    pub async fn copy_into(&self, target: &ScyllaVault) -> Result<Copied> {
        use futures::TryStreamExt;
        const ACTION: &str = "reading every key";
        let mut rows = self
            .session
            .execute_iter(self.st.all.clone(), ())
            .await
            .map_err(|e| VaultError::Unavailable(format!("{ACTION}: {e}")))?
            .rows_stream::<(Uuid, Option<Vec<u8>>, Option<CqlTimestamp>)>()
            .map_err(|e| e.to_string())
            .map_err(shape_err(ACTION))?;
        let mut copied = Copied::default();
        while let Some((user, key, destroyed_at)) = rows
            .try_next()
            .await
            .map_err(|e| VaultError::Unavailable(format!("{ACTION}: {e}")))?
        {
            match stored(user, key, destroyed_at.is_some()) {
                Ok(source) => self.copy_one(target, user, source, &mut copied).await?,
                Err(VaultError::Corrupt(why)) => {
                    tracing::warn!(%user, %why, "a key row cannot be read; not copied");
                    copied.unreadable.push(user);
                }
                Err(other) => return Err(other),
            }
        }
        Ok(copied)
    }

    /// Copies one user's row (see [`ScyllaVault::copy_into`]).
    async fn copy_one(
        &self,
        target: &ScyllaVault,
        user: Uuid,
        source: Stored,
        copied: &mut Copied,
    ) -> Result<()> {
        let key = match source {
            Stored::Missing => return Ok(()),
            Stored::Destroyed(leftover) => {
                if leftover {
                    self.settle(user, Stored::Destroyed(true)).await?;
                }
                if target.key(user).await? != KeyState::Destroyed {
                    target.destroy(user).await?;
                    copied.tombstones += 1;
                }
                return Ok(());
            }
            Stored::Active(key) => key,
        };
        let there = match target.key(user).await? {
            KeyState::Missing => {
                const COPY: &str = "copying a key";
                let bytes: &[u8] = key.expose_bytes();
                let result = target
                    .execute(&target.st.create, (user, bytes), COPY)
                    .await?
                    .into_rows_result()
                    .map_err(|e| e.to_string())
                    .map_err(shape_err(COPY))?;
                match lwt_outcome(user, result)? {
                    None => {
                        copied.keys += 1;
                        return Ok(());
                    }
                    Some(Stored::Active(there)) => KeyState::Active(there),
                    Some(Stored::Destroyed(_)) => KeyState::Destroyed,
                    Some(Stored::Missing) => KeyState::Missing,
                }
            }
            there => there,
        };
        match there {
            KeyState::Active(there) if there == key => copied.already += 1,
            // Deleted through the target meanwhile: the tombstone wins, in the source too.
            KeyState::Destroyed => {
                self.destroy(user).await?;
                copied.tombstones += 1;
            }
            KeyState::Active(_) | KeyState::Missing => {
                tracing::warn!(
                    %user,
                    from = %self.keyspace,
                    into = %target.keyspace,
                    "two different keys for one user; not copied"
                );
                copied.conflicts.push(user);
            }
        }
        Ok(())
    }

    /// The state to report for a stored row; a destroyed row that still holds key bytes is
    /// destroyed again.
    async fn settle(&self, user: Uuid, stored: Stored) -> Result<KeyState> {
        Ok(match stored {
            Stored::Missing => KeyState::Missing,
            Stored::Active(key) => KeyState::Active(key),
            Stored::Destroyed(leftover) => {
                if leftover {
                    tracing::warn!(%user, "a destroyed key's bytes are back: wiping them again");
                    self.execute(&self.st.wipe, (user,), "wiping a destroyed key")
                        .await?;
                }
                KeyState::Destroyed
            }
        })
    }
}

#[async_trait]
impl KeyVault for ScyllaVault {
    async fn create(&self, user: Uuid) -> Result<UserKey> {
        let found = match self.read(user, &self.st.get).await? {
            Stored::Missing => {
                let fresh = UserKey::generate()?;
                let bytes: &[u8] = fresh.expose_bytes();
                let result = self
                    .execute(&self.st.create, (user, bytes), "creating a key")
                    .await?
                    .into_rows_result()
                    .map_err(|e| e.to_string())
                    .map_err(shape_err("creating a key"))?;
                match lwt_outcome(user, result)? {
                    None => return Ok(fresh),
                    Some(existing) => existing,
                }
            }
            found => found,
        };
        match self.settle(user, found).await? {
            KeyState::Active(key) => Ok(key),
            KeyState::Destroyed => Err(VaultError::Destroyed),
            KeyState::Missing => Err(VaultError::Corrupt(format!(
                "the key of user {user} was neither created nor found"
            ))),
        }
    }

    async fn key(&self, user: Uuid) -> Result<KeyState> {
        let found = match self.read(user, &self.st.get).await? {
            Stored::Missing => self.read(user, &self.st.get_serial).await?,
            found => found,
        };
        self.settle(user, found).await
    }

    async fn destroy(&self, user: Uuid) -> Result<()> {
        self.execute(&self.st.destroy, (now(), user), "destroying a key")
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_statement_names_the_table_once_and_is_qualified() {
        for statement in cql::ALL {
            assert_eq!(statement.matches(" user_keys").count(), 1, "{statement}");
            let q = qualified(statement, "missive_test");
            assert_eq!(q.matches(" missive_test.user_keys").count(), 1, "{q}");
            assert_eq!(q.matches("user_keys").count(), 1, "{q}");
        }
        assert!(!valid_keyspace("Missive"));
        assert!(!valid_keyspace("a; DROP"));
        assert!(valid_keyspace("missive_1"));
    }
}
