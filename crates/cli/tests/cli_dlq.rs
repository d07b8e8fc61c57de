//! `missive dlq list` and `missive dlq retry`, run as real processes on an embedded data
//! directory holding one dead letter that now applies and one that still fails.

use std::process::Command;

use chrono::Utc;
use missive_events::{Envelope, Event, codec};
use missive_log::sqlite::{Durability, SqliteLog};
use missive_log::{DeadLetter, EventLog, Record};
use missive_store::ReadStore;
use uuid::Uuid;

fn missive(args: &[&str], data_dir: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_missive"))
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("MISSIVE_LOG")
        .output()
        .expect("runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_and_retried() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = SqliteLog::open(&dir.path().join("log.db"), Durability::Full).expect("log");
    let user = Uuid::now_v7();
    let envelope = Envelope::new(
        Event::UserRegistered {
            user_id: user,
            username: "dora".into(),
            display_name: "Dora".into(),
        },
        user,
        Uuid::now_v7(),
        Utc::now(),
    );
    let good = codec::encode(&envelope).expect("encode");
    let garbage = vec![0xC3, 0x01, 9, 9, 9, 9, 9, 9, 9, 9, 1];
    let positions = log
        .append(vec![
            Record {
                stream: envelope.stream(),
                key: envelope.partition_key(),
                event_type: "UserRegistered",
                schema_version: 1,
                payload: good.clone(),
            },
            Record {
                stream: missive_events::Stream::Social,
                key: "junk".into(),
                event_type: "UserRegistered",
                schema_version: 1,
                payload: garbage.clone(),
            },
        ])
        .await
        .expect("append");
    for (n, payload) in [(0, good), (1, garbage)] {
        log.dead_letter(DeadLetter {
            projection: "read-models".into(),
            source: positions[n],
            event_type: "UserRegistered".into(),
            key: "k".into(),
            payload,
            error: "the store was down".into(),
        })
        .await
        .expect("dead letter");
    }

    let listed = missive(&["dlq", "list"], dir.path());
    assert!(listed.status.success(), "{listed:?}");
    let lines: Vec<serde_json::Value> = String::from_utf8(listed.stdout)
        .expect("utf8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["source"], positions[0].to_string());
    assert_eq!(lines[0]["error"], "the store was down");

    let retried = missive(&["dlq", "retry"], dir.path());
    let out = String::from_utf8_lossy(&retried.stdout).into_owned();
    assert_eq!(retried.status.code(), Some(1), "one still fails: {out}");
    assert!(out.contains("1 resolved, 1 still failing"), "{out}");

    let store = missive_cli::dlq::open_store(dir.path()).expect("store");
    let dora = store
        .user(user)
        .await
        .expect("read")
        .expect("projected by the retry");
    assert_eq!(dora.username, "dora");
    let left = log.dead_letters().await.expect("list");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].source, positions[1]);
    assert!(left[0].error.contains("fingerprint"), "{}", left[0].error);
}
