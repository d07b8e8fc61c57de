//! `migrate` against a real ScyllaDB or Cassandra node: runs when `MISSIVE_TEST_SCYLLA=host:port`
//! is set, in its own keyspace (dropped afterwards); otherwise prints that it was skipped.

#![cfg(feature = "scylla")]

use std::collections::BTreeSet;

use missive_store::StoreError;
use missive_store::scylla::{
    MIGRATIONS, Replication, ScyllaConfig, ScyllaStore, bootstrap_statements, connect,
    drop_keyspace, migrate, statements,
};
use sha2::{Digest, Sha256};

/// The test node's config with a fresh keyspace, or `None` (with a notice) when none is set.
fn test_config() -> Option<ScyllaConfig> {
    match std::env::var("MISSIVE_TEST_SCYLLA") {
        Ok(node) if !node.is_empty() => {
            let keyspace = format!("missive_test_{}", uuid::Uuid::now_v7().simple());
            let mut config =
                ScyllaConfig::parse(&format!("scylla://{node}/{keyspace}")).expect("test URL");
            config.replication = Replication::Simple(1);
            Some(config)
        }
        _ => {
            eprintln!(
                "SKIPPED: the Scylla suite needs a ScyllaDB or Cassandra node; set \
                 MISSIVE_TEST_SCYLLA=host:port to run it"
            );
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scylla_migrate_applies_each_version_once_and_refuses_edited_files() {
    let Some(config) = test_config() else { return };
    let session = connect(&config).await.expect("connect");
    let ks = config.keyspace.clone();

    let first = migrate(&session, &config).await.expect("first migrate");
    let all: Vec<i32> = MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(first.applied, all);
    assert!(first.already.is_empty());

    let again = migrate(&session, &config).await.expect("second migrate");
    assert!(again.applied.is_empty());
    assert_eq!(again.already, all);

    // Every table of every file exists.
    let rows = session
        .query_unpaged(
            "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ?",
            (ks.as_str(),),
        )
        .await
        .expect("list tables")
        .into_rows_result()
        .expect("rows");
    let tables: BTreeSet<String> = rows
        .rows::<(String,)>()
        .expect("typed")
        .map(|r| r.expect("row").0)
        .collect();
    let mut expected: BTreeSet<String> = MIGRATIONS
        .iter()
        .flat_map(|m| statements(m.cql))
        .filter_map(|s| {
            s.strip_prefix("CREATE TABLE IF NOT EXISTS ")
                .and_then(|rest| rest.split_whitespace().next())
                .map(str::to_owned)
        })
        .collect();
    expected.insert("schema_migrations".into());
    assert_eq!(tables, expected);

    // A released file whose text changed is refused.
    session
        .query_unpaged(
            format!("UPDATE {ks}.schema_migrations SET checksum = 'edited' WHERE version = 1"),
            &[],
        )
        .await
        .expect("tamper");
    match migrate(&session, &config).await {
        Err(error @ StoreError::Corrupt(_)) => {
            assert!(error.to_string().contains("must not change"), "{error}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    drop_keyspace(&session, &ks).await.expect("drop keyspace");
}

/// A keyspace that a build knowing only schema version 1 created: this build refuses to open it
/// until `migrate` applies the later versions. A `migrate` that stopped after applying their
/// statements, before recording them, can be run again (`ALTER TABLE ... ADD` of a column that
/// exists is skipped). Lists no system tables, so it runs on Cassandra 2.1 too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scylla_migrate_upgrades_a_keyspace_at_version_1() {
    let Some(config) = test_config() else { return };
    let session = connect(&config).await.expect("connect");
    let ks = config.keyspace.clone();
    let later: Vec<i32> = MIGRATIONS[1..].iter().map(|m| m.version).collect();
    assert!(
        !later.is_empty(),
        "only one schema version: nothing to upgrade"
    );

    // Version 1, applied and recorded as `migrate` does.
    let [create_keyspace, create_table, _, record] = bootstrap_statements(&config);
    session
        .query_unpaged(create_keyspace, &[])
        .await
        .expect("create keyspace");
    session
        .query_unpaged(create_table, &[])
        .await
        .expect("create schema_migrations");
    session
        .use_keyspace(ks.as_str(), false)
        .await
        .expect("use keyspace");
    let first = &MIGRATIONS[0];
    for statement in statements(first.cql) {
        session
            .query_unpaged(statement, &[])
            .await
            .expect("apply version 1");
    }
    let checksum: String = Sha256::digest(first.cql.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let record = session.prepare(record).await.expect("prepare the record");
    session
        .execute_unpaged(
            &record,
            (
                first.version,
                first.file,
                checksum,
                scylla::value::CqlTimestamp(0),
            ),
        )
        .await
        .expect("record version 1");

    match ScyllaStore::open(&config).await {
        Err(error @ StoreError::Schema(_)) => {
            assert!(error.to_string().contains(MIGRATIONS[1].file), "{error}");
        }
        other => panic!("expected a refusal to open a keyspace at version 1, got {other:?}"),
    }
    let upgraded = migrate(&session, &config).await.expect("upgrade");
    assert_eq!(upgraded.already, [first.version]);
    assert_eq!(upgraded.applied, later);
    ScyllaStore::open(&config)
        .await
        .expect("open the upgraded keyspace");

    // As if the upgrade had stopped before recording its versions.
    for version in &later {
        session
            .query_unpaged(
                format!("DELETE FROM {ks}.schema_migrations WHERE version = {version}"),
                &[],
            )
            .await
            .expect("forget a version");
    }
    let repeated = migrate(&session, &config)
        .await
        .expect("repeat an interrupted upgrade");
    assert_eq!(repeated.applied, later);
    ScyllaStore::open(&config)
        .await
        .expect("open after the repeated upgrade");

    drop_keyspace(&session, &ks).await.expect("drop keyspace");
}
