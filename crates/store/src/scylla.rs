//! The production read store's connection and schema: ScyllaDB or Apache Cassandra 3.11+,
//! through the `scylla` driver, over CQL native protocol v4.
//!
//! This module holds what the adapter and `missive store migrate` share: parsing
//! `scylla://host:port[,host:port...]/keyspace`, opening a session (prepared statements only,
//! configurable consistency, token-aware and datacenter-aware load balancing), and applying
//! the versioned schema files of `projections/` exactly once each.
//!
//! Only portable CQL is used: nothing here or in `projections/` is Scylla-only, so the same
//! store runs on Cassandra.

use std::sync::Arc;
use std::time::Duration;

use ::scylla::client::execution_profile::ExecutionProfile;
use ::scylla::client::session::Session;
use ::scylla::client::session_builder::SessionBuilder;
use ::scylla::policies::load_balancing::DefaultPolicy;
use ::scylla::statement::{Consistency, SerialConsistency};
use sha2::{Digest, Sha256};

use crate::{Result, StoreError};

mod communities;
mod store;

pub use store::{
    ScyllaStore, attempt_transient, cql, exec_transient, next_page_transient, open_keyspace,
    prepare_transient, request_transient,
};

/// One schema version: a file of `projections/`, compiled in.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i32,
    pub file: &'static str,
    pub cql: &'static str,
}

macro_rules! migration {
    ($version:literal, $file:literal) => {
        Migration {
            version: $version,
            file: $file,
            cql: include_str!(concat!("../../../projections/", $file)),
        }
    };
}

/// Every schema version, in order. Files are only ever added, never edited once released:
/// `migrate` refuses a file whose text changed after it was applied.
pub const MIGRATIONS: &[Migration] = &[
    migration!(1, "0001_read_models.cql"),
    migration!(2, "0002_delivery.cql"),
    migration!(3, "0003_communities.cql"),
    migration!(4, "0004_analytics.cql"),
    migration!(5, "0005_user_keys.cql"),
    migration!(6, "0006_accounts.cql"),
    migration!(7, "0007_retention.cql"),
];

/// How the keyspace is replicated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replication {
    /// `SimpleStrategy` with a replication factor: single-datacenter test clusters.
    Simple(u32),
    /// `NetworkTopologyStrategy`: replicas per datacenter.
    NetworkTopology(Vec<(String, u32)>),
}

impl Replication {
    /// Parses `simple:N` or `dc1:3[,dc2:3...]` (NetworkTopologyStrategy).
    pub fn parse(value: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "replication {value:?}: expected `simple:N` or `<datacenter>:<replicas>[,...]` \
                 (NetworkTopologyStrategy), e.g. `dc1:3,dc2:3`"
            )
        };
        let factor = |n: &str| n.parse::<u32>().ok().filter(|n| *n > 0);
        if let Some(n) = value.strip_prefix("simple:") {
            return factor(n).map(Replication::Simple).ok_or_else(bad);
        }
        let mut dcs = Vec::new();
        for part in value.split(',') {
            let (dc, n) = part.split_once(':').ok_or_else(bad)?;
            let valid_name = !dc.is_empty()
                && dc
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
            if !valid_name {
                return Err(bad());
            }
            dcs.push((dc.to_owned(), factor(n).ok_or_else(bad)?));
        }
        Ok(Replication::NetworkTopology(dcs))
    }

    /// The `replication` map of `CREATE KEYSPACE`.
    pub fn cql_map(&self) -> String {
        match self {
            Replication::Simple(n) => {
                format!("{{'class': 'SimpleStrategy', 'replication_factor': {n}}}")
            }
            Replication::NetworkTopology(dcs) => {
                let mut out = String::from("{'class': 'NetworkTopologyStrategy'");
                for (dc, n) in dcs {
                    out.push_str(&format!(", '{dc}': {n}"));
                }
                out.push('}');
                out
            }
        }
    }
}

/// Where the store lives and how it talks to it.
#[derive(Debug, Clone)]
pub struct ScyllaConfig {
    /// `host:port` of the contact points.
    pub nodes: Vec<String>,
    /// Lower-case CQL identifier.
    pub keyspace: String,
    /// Consistency of reads and writes (default `LOCAL_QUORUM`).
    pub consistency: Consistency,
    /// Prefer (and keep to) this datacenter's replicas; `None` uses every node.
    pub local_dc: Option<String>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// Used when `migrate` creates the keyspace.
    pub replication: Replication,
}

impl ScyllaConfig {
    /// Parses `scylla://host:port[,host:port...]/keyspace` (keyspace `missive` when absent).
    pub fn parse(url: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!("--store {url:?}: {why}; expected scylla://host:port[,host:port...]/keyspace")
        };
        let rest = url
            .strip_prefix("scylla://")
            .ok_or_else(|| bad("not a scylla:// URL"))?;
        let (hosts, keyspace) = rest.split_once('/').unwrap_or((rest, "missive"));
        let nodes: Vec<String> = hosts.split(',').map(str::to_owned).collect();
        if nodes
            .iter()
            .any(|n| n.is_empty() || n.contains(char::is_whitespace))
        {
            return Err(bad("a node address is empty"));
        }
        let keyspace = if keyspace.is_empty() {
            "missive"
        } else {
            keyspace
        };
        if !valid_keyspace(keyspace) {
            return Err(bad(
                "the keyspace must be a lower-case identifier: a letter, then up to 47 letters, \
                 digits or underscores",
            ));
        }
        Ok(ScyllaConfig {
            nodes,
            keyspace: keyspace.to_owned(),
            consistency: Consistency::LocalQuorum,
            local_dc: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            replication: Replication::NetworkTopology(vec![("datacenter1".into(), 3)]),
        })
    }
}

fn valid_keyspace(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && name.len() <= 48
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Parses a consistency level name (`LOCAL_QUORUM`, `QUORUM`, `ONE`, ...), ignoring case.
pub fn parse_consistency(value: &str) -> Result<Consistency, String> {
    Ok(match value.to_ascii_uppercase().as_str() {
        "ANY" => Consistency::Any,
        "ONE" => Consistency::One,
        "TWO" => Consistency::Two,
        "THREE" => Consistency::Three,
        "QUORUM" => Consistency::Quorum,
        "ALL" => Consistency::All,
        "LOCAL_QUORUM" => Consistency::LocalQuorum,
        "EACH_QUORUM" => Consistency::EachQuorum,
        "LOCAL_ONE" => Consistency::LocalOne,
        _ => {
            return Err(format!(
                "consistency {value:?}: expected one of ONE, TWO, THREE, QUORUM, ALL, \
                 LOCAL_QUORUM, EACH_QUORUM, LOCAL_ONE, ANY"
            ));
        }
    })
}

fn unavailable(action: &str) -> impl FnOnce(String) -> StoreError + '_ {
    move |reason| StoreError::Unavailable(format!("{action}: {reason}"))
}

/// Opens a session: token-aware load balancing (datacenter-aware when `local_dc` is set),
/// the configured consistency (serial consistency `LOCAL_SERIAL`), and request timeouts.
pub async fn connect(config: &ScyllaConfig) -> Result<Arc<Session>> {
    let mut policy = DefaultPolicy::builder().token_aware(true);
    if let Some(dc) = &config.local_dc {
        policy = policy
            .prefer_datacenter(dc.clone())
            .permit_dc_failover(false);
    }
    let profile = ExecutionProfile::builder()
        .consistency(config.consistency)
        .serial_consistency(Some(SerialConsistency::LocalSerial))
        .request_timeout(Some(config.request_timeout))
        .load_balancing_policy(policy.build())
        .build();
    let session = SessionBuilder::new()
        .known_nodes(&config.nodes)
        .connection_timeout(config.connect_timeout)
        .default_execution_profile_handle(profile.into_handle())
        .build()
        .await
        .map_err(|e| e.to_string())
        .map_err(unavailable("connecting to the read store"))?;
    Ok(Arc::new(session))
}

/// Splits a `.cql` file into statements: `;`-separated, comments (`--`, `//`, `/* */`)
/// dropped, quoted strings and identifiers kept whole.
pub fn statements(cql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut chars = cql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                current.push(c);
                // A doubled quote inside is an escaped quote: the loop just continues.
                for d in chars.by_ref() {
                    current.push(d);
                    if d == c {
                        break;
                    }
                }
            }
            '-' if chars.peek() == Some(&'-') => {
                for d in chars.by_ref() {
                    if d == '\n' {
                        current.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'/') => {
                for d in chars.by_ref() {
                    if d == '\n' {
                        current.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut last = ' ';
                for d in chars.by_ref() {
                    if last == '*' && d == '/' {
                        break;
                    }
                    last = d;
                }
                current.push(' ');
            }
            ';' => {
                let statement = current.trim();
                if !statement.is_empty() {
                    out.push(statement.to_owned());
                }
                current.clear();
            }
            _ => current.push(c),
        }
    }
    let statement = current.trim();
    if !statement.is_empty() {
        out.push(statement.to_owned());
    }
    out
}

fn checksum(cql: &str) -> String {
    Sha256::digest(cql.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The statements [`migrate`] runs around the schema files, in order: create the keyspace,
/// create its `schema_migrations` table, read it, record a version.
pub fn bootstrap_statements(config: &ScyllaConfig) -> [String; 4] {
    let ks = &config.keyspace;
    [
        format!(
            "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {}",
            config.replication.cql_map()
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.schema_migrations (version int PRIMARY KEY, \
             file text, checksum text, applied_at timestamp)"
        ),
        format!("SELECT version, checksum FROM {ks}.schema_migrations"),
        format!(
            "INSERT INTO {ks}.schema_migrations (version, file, checksum, applied_at) \
             VALUES (?, ?, ?, ?)"
        ),
    ]
}

/// What [`migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    /// Versions applied by this run.
    pub applied: Vec<i32>,
    /// Versions found applied already.
    pub already: Vec<i32>,
}

/// Creates the keyspace (with the configured replication) if it does not exist, then applies
/// every schema version not yet recorded in its `schema_migrations` table, in order, recording
/// each with its file's checksum. Running it again changes nothing; a file edited after it
/// was applied is refused (add a new version instead). A run that stopped part-way through a
/// file can be repeated: `CREATE` statements say `IF NOT EXISTS`, and an `ALTER TABLE ... ADD`
/// of a column that exists is skipped.
pub async fn migrate(session: &Session, config: &ScyllaConfig) -> Result<Migrated> {
    let ks = &config.keyspace;
    let ddl = |action: &'static str| unavailable(action);
    let [create_keyspace, create_table, read_applied, record_applied] =
        bootstrap_statements(config);
    session
        .query_unpaged(create_keyspace, &[])
        .await
        .map_err(|e| e.to_string())
        .map_err(ddl("creating the keyspace"))?;
    session
        .query_unpaged(create_table, &[])
        .await
        .map_err(|e| e.to_string())
        .map_err(ddl("creating the migrations table"))?;
    session
        .use_keyspace(ks.as_str(), false)
        .await
        .map_err(|e| e.to_string())
        .map_err(ddl("using the keyspace"))?;
    let recorded = session
        .query_unpaged(read_applied, &[])
        .await
        .map_err(|e| e.to_string())
        .map_err(ddl("reading applied migrations"))?
        .into_rows_result()
        .map_err(|e| e.to_string())
        .map_err(ddl("reading applied migrations"))?;
    let mut applied_before = std::collections::HashMap::new();
    for row in recorded
        .rows::<(i32, Option<String>)>()
        .map_err(|e| StoreError::Corrupt(format!("schema_migrations: {e}")))?
    {
        let (version, sum) =
            row.map_err(|e| StoreError::Corrupt(format!("schema_migrations: {e}")))?;
        applied_before.insert(version, sum.unwrap_or_default());
    }
    let record = session
        .prepare(record_applied)
        .await
        .map_err(|e| e.to_string())
        .map_err(ddl("preparing the migration record"))?;
    let mut migrated = Migrated {
        applied: Vec::new(),
        already: Vec::new(),
    };
    for m in MIGRATIONS {
        let sum = checksum(m.cql);
        if let Some(recorded) = applied_before.get(&m.version) {
            if *recorded != sum {
                return Err(StoreError::Corrupt(format!(
                    "schema version {} ({}) was applied with different contents (checksum {}, \
                     the file now {}): released migration files must not change; add a new \
                     version instead",
                    m.version, m.file, recorded, sum
                )));
            }
            migrated.already.push(m.version);
            continue;
        }
        for statement in statements(m.cql) {
            // `ALTER TABLE ... ADD` has no IF NOT EXISTS: a run that stopped after adding the
            // column, before recording its version, must not fail on it now. Preparing a
            // read of the column tells whether it exists, without reading anything.
            if let Some((table, column)) = added_column(&statement)
                && session
                    .prepare(format!("SELECT {column} FROM {table}"))
                    .await
                    .is_ok()
            {
                tracing::info!(
                    file = m.file,
                    table,
                    column,
                    "column exists already; not added again"
                );
                continue;
            }
            session
                .query_unpaged(statement, &[])
                .await
                .map_err(|e| format!("{}: {e}", m.file))
                .map_err(ddl("applying a schema version"))?;
        }
        session
            .execute_unpaged(
                &record,
                (
                    m.version,
                    m.file,
                    sum,
                    ::scylla::value::CqlTimestamp(chrono::Utc::now().timestamp_millis()),
                ),
            )
            .await
            .map_err(|e| e.to_string())
            .map_err(ddl("recording a schema version"))?;
        tracing::info!(version = m.version, file = m.file, keyspace = %ks, "schema version applied");
        migrated.applied.push(m.version);
    }
    Ok(migrated)
}

/// The table and column of `ALTER TABLE <table> ADD <column> <type>`, if `statement` is one
/// (a single unquoted column: what the schema files use).
fn added_column(statement: &str) -> Option<(&str, &str)> {
    let mut words = statement.split_whitespace();
    let mut next_is = |keyword: &str| {
        words
            .next()
            .is_some_and(|w| w.eq_ignore_ascii_case(keyword))
    };
    if !(next_is("alter") && next_is("table")) {
        return None;
    }
    let table = words.next()?;
    if !words.next()?.eq_ignore_ascii_case("add") {
        return None;
    }
    let column = words.next()?;
    let plain = |name: &str| {
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    (plain(table) && plain(column) && words.next().is_some()).then_some((table, column))
}

/// Drops a keyspace (tests use one per run).
pub async fn drop_keyspace(session: &Session, keyspace: &str) -> Result<()> {
    if !valid_keyspace(keyspace) {
        return Err(StoreError::Corrupt(format!(
            "not a keyspace name: {keyspace:?}"
        )));
    }
    session
        .query_unpaged(format!("DROP KEYSPACE IF EXISTS {keyspace}"), &[])
        .await
        .map_err(|e| e.to_string())
        .map_err(unavailable("dropping a keyspace"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_parse_or_say_what_is_wrong() {
        let c = ScyllaConfig::parse("scylla://a:9042,b:9042/chat").expect("valid");
        assert_eq!(c.nodes, ["a:9042", "b:9042"]);
        assert_eq!(c.keyspace, "chat");
        assert_eq!(c.consistency, Consistency::LocalQuorum);
        assert_eq!(
            ScyllaConfig::parse("scylla://a:9042")
                .expect("valid")
                .keyspace,
            "missive"
        );
        for bad in [
            "cassandra://a",
            "scylla:///ks",
            "scylla://a:1/Chat",
            "scylla://a:1/9ks",
            "scylla://a,,b/ks",
        ] {
            let err = ScyllaConfig::parse(bad).expect_err(bad);
            assert!(err.contains("scylla://host:port"), "{err}");
        }
    }

    #[test]
    fn replication_parses_both_strategies() {
        assert_eq!(Replication::parse("simple:1"), Ok(Replication::Simple(1)));
        let nts = Replication::parse("dc1:3,dc-2:2").expect("valid");
        assert_eq!(
            nts.cql_map(),
            "{'class': 'NetworkTopologyStrategy', 'dc1': 3, 'dc-2': 2}"
        );
        assert_eq!(
            Replication::Simple(2).cql_map(),
            "{'class': 'SimpleStrategy', 'replication_factor': 2}"
        );
        for bad in ["simple:0", "dc1", "dc1:x", "d'c:3", ":3"] {
            assert!(Replication::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn consistency_names_parse() {
        assert_eq!(
            parse_consistency("local_quorum"),
            Ok(Consistency::LocalQuorum)
        );
        assert_eq!(parse_consistency("ONE"), Ok(Consistency::One));
        assert!(parse_consistency("SERIAL").is_err());
    }

    #[test]
    fn statements_split_on_semicolons_outside_comments_and_strings() {
        let cql = "-- a comment; with a semicolon\nCREATE TABLE t (a int PRIMARY KEY);\n\
                   /* block; comment */ INSERT INTO t (a) VALUES (1) -- trailing; note\n;\n\
                   UPDATE t SET s = 'x;y' WHERE a = 1;  // end; note\n";
        assert_eq!(
            statements(cql),
            [
                "CREATE TABLE t (a int PRIMARY KEY)",
                "INSERT INTO t (a) VALUES (1)",
                "UPDATE t SET s = 'x;y' WHERE a = 1",
            ]
        );
    }

    #[test]
    fn added_columns_are_recognised() {
        assert_eq!(
            added_column("ALTER TABLE messages ADD delivered boolean"),
            Some(("messages", "delivered"))
        );
        assert_eq!(
            added_column("alter table t\n    add c map<text, int>"),
            Some(("t", "c"))
        );
        for other in [
            "ALTER TABLE t DROP c",
            "ALTER TABLE t ADD c",
            "ALTER TABLE t ADD (c int, d int)",
            "ALTER TABLE ks.t ADD c int",
            "ALTER TABLE t WITH comment = 'x'",
            "CREATE TABLE IF NOT EXISTS t (c int PRIMARY KEY)",
            "ALTER TYPE t ADD c int",
        ] {
            assert_eq!(added_column(other), None, "{other}");
        }
    }

    #[test]
    fn every_migration_is_listed_in_order_and_every_file_is_listed() {
        let versions: Vec<i32> = MIGRATIONS.iter().map(|m| m.version).collect();
        let expected: Vec<i32> = (1..=MIGRATIONS.len() as i32).collect();
        assert_eq!(versions, expected);
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../projections");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .expect("projections/")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .filter(|name| name.ends_with(".cql"))
            .collect();
        on_disk.sort();
        let listed: Vec<&str> = MIGRATIONS.iter().map(|m| m.file).collect();
        assert_eq!(on_disk, listed);
        for m in MIGRATIONS {
            assert!(
                m.file.starts_with(&format!("{:04}_", m.version)),
                "{} does not start with its version",
                m.file
            );
            assert!(!statements(m.cql).is_empty());
        }
    }
}
