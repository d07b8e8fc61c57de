//! The EventLog contract suite on the embedded SQLite adapter, plus its own guarantees.

use std::sync::Arc;

use missive_events::Stream;
use missive_log::sqlite::{Durability, SqliteLog};
use missive_log::{EventLog, Record, contract};

fn fresh() -> (tempfile::TempDir, Arc<dyn EventLog>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = SqliteLog::open(&dir.path().join("log.db"), Durability::Full).expect("open");
    (dir, Arc::new(log))
}

macro_rules! contract_test {
    ($name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let (_dir, log) = fresh();
            contract::$name(log).await;
        }
    };
}

contract_test!(append_then_consume_in_order);
contract_test!(concurrent_appends_keep_per_key_order);
contract_test!(checkpoints_and_seek);
contract_test!(poll_times_out_then_delivers);
contract_test!(dead_letters_are_kept_until_resolved);
contract_test!(scans_read_a_bounded_stretch);

#[tokio::test]
async fn survives_reopen_and_continues_offsets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("log.db");
    let rec = |n: u8| Record {
        stream: Stream::Social,
        key: "k".into(),
        event_type: "UserRegistered",
        schema_version: 1,
        payload: vec![n],
    };
    {
        let log = SqliteLog::open(&path, Durability::Full).expect("open");
        let p = log.append(vec![rec(1), rec(2)]).await.expect("append");
        assert_eq!(p[1].offset, 1);
    }
    let log = SqliteLog::open(&path, Durability::Full).expect("reopen");
    let p = log.append(vec![rec(3)]).await.expect("append");
    assert_eq!(p[0].offset, 2, "offsets continue after a restart");
    let all = log.read(0, 10).expect("read");
    assert_eq!(
        all.iter().map(|r| r.payload[0]).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
}

#[tokio::test]
async fn events_cannot_be_updated_or_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("log.db");
    let log = SqliteLog::open(&path, Durability::Full).expect("open");
    log.append(vec![Record {
        stream: Stream::Social,
        key: "k".into(),
        event_type: "UserRegistered",
        schema_version: 1,
        payload: vec![1],
    }])
    .await
    .expect("append");
    let conn = rusqlite::Connection::open(&path).expect("open raw");
    let update = conn.execute("UPDATE events SET payload = x'00'", []);
    let delete = conn.execute("DELETE FROM events", []);
    assert!(update.unwrap_err().to_string().contains("append-only"));
    assert!(delete.unwrap_err().to_string().contains("append-only"));
}
