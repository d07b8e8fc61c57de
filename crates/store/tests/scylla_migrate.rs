//! `migrate` against a real ScyllaDB or Cassandra node: runs when `MISSIVE_TEST_SCYLLA=host:port`
//! is set, in its own keyspace (dropped afterwards); otherwise prints that it was skipped.

#![cfg(feature = "scylla")]

use std::collections::BTreeSet;

use missive_store::StoreError;
use missive_store::scylla::{
    MIGRATIONS, Replication, ScyllaConfig, connect, drop_keyspace, migrate, statements,
};

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
