//! `missive events dump` and `missive replay` run as real processes against a data directory a
//! running server writes: on the embedded log and on Kafka (the mock cluster, or the broker of
//! `MISSIVE_TEST_KAFKA`), with the embedded read store.

mod common;

use std::path::Path;
use std::process::Output;

use common::{Backend, Client, Harness};
use missive_cli::server::{LogBackend, StoreBackend};
use missive_keys::OpenedStore;
use missive_keys::sqlite::SqliteVault;
use missive_store::ReadStore;
use missive_store::sqlite::SqliteStore;
use serde_json::{Value, json};

/// Runs `missive <args>` on the harness's data directory and log.
async fn missive(h: &Harness, args: &[&str]) -> Output {
    let mut all: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    all.push("--data-dir".into());
    all.push(h.config.data_dir.display().to_string());
    if let LogBackend::Kafka(kafka) = &h.config.log {
        all.push("--log".into());
        all.push(format!("kafka://{}", kafka.brokers));
        all.push("--kafka-topic-prefix".into());
        all.push(kafka.topic_prefix.clone());
    }
    missive_with(all).await
}

/// Runs `missive <args>`, as they are.
async fn missive_with(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_missive"))
            .args(&args)
            .env_remove("MISSIVE_LOG")
            .env_remove("MISSIVE_STORE")
            .env("RUST_LOG", "warn")
            .output()
            .expect("runs")
    })
    .await
    .expect("joined")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn lines(out: &Output) -> Vec<Value> {
    assert!(out.status.success(), "{out:?}");
    stdout(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?} in {out:?}")))
        .collect()
}

/// alice and bob, friends, and `texts` from alice to bob; returns the send answers.
async fn conversation(h: &Harness, texts: &[&str]) -> (Client, Client, Vec<Value>) {
    let alice = h.register("alice").await;
    let bob = h.register("bob").await;
    h.befriend(&alice, &bob).await;
    let mut sent = Vec::new();
    for text in texts {
        sent.push(h.send(&alice, &bob, text).await);
    }
    (alice, bob, sent)
}

async fn dump_prints_the_log_as_json_lines() {
    let h = Harness::start().await;
    let (alice, bob, sent) = conversation(&h, &["one", "two", "three"]).await;

    let all = lines(&missive(&h, &["events", "dump"]).await);
    let types: Vec<&str> = all
        .iter()
        .map(|l| l["event_type"].as_str().expect("type"))
        .collect();
    for (t, n) in [
        ("UserRegistered", 2),
        ("FriendRequested", 1),
        ("FriendRequestAccepted", 1),
        ("MessageSent", 3),
    ] {
        assert_eq!(types.iter().filter(|x| **x == t).count(), n, "{t}: {all:?}");
    }
    // The log as stored: personal fields sealed with their owner's key.
    let registered = all
        .iter()
        .find(|l| l["event_type"] == "UserRegistered" && l["actor_id"] == alice.id.to_string())
        .expect("alice registered");
    let username = registered["event"]["username"].as_str().expect("username");
    assert!(
        username.starts_with(missive_keys::SEALED_PREFIX),
        "{username}"
    );
    assert!(!username.contains("alice"), "{username}");
    assert_eq!(registered["event"]["user_id"], alice.id.to_string());
    assert_eq!(registered["actor_id"], alice.id.to_string());
    assert!(
        registered["occurred_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );

    let messages = lines(&missive(&h, &["events", "dump", "--type", "MessageSent"]).await);
    assert_eq!(messages.len(), 3, "{messages:?}");
    assert!(
        messages.iter().all(|l| l["event"]["text"]
            .as_str()
            .is_some_and(|t| t.starts_with(missive_keys::SEALED_PREFIX))),
        "message texts are sealed in the log: {messages:?}"
    );
    for (line, answer) in messages.iter().zip(&sent) {
        assert_eq!(line["position"], answer["position"]);
        assert_eq!(line["event"]["message_id"], answer["message_id"]);
        assert_eq!(line["event"]["recipient_id"], bob.id.to_string());
    }

    // By key: the conversation's records only (its messages).
    let key = messages[0]["key"].as_str().expect("key");
    let keyed = lines(&missive(&h, &["events", "dump", "--key", key]).await);
    assert!(
        keyed.len() >= 3 && keyed.iter().all(|l| l["key"] == key),
        "{keyed:?}"
    );

    // Up to the second message's position (inclusive): its partition only, not the third.
    let second = sent[1]["position"].as_str().expect("position");
    let until = lines(&missive(&h, &["events", "dump", "--until", second]).await);
    assert_eq!(until.last().map(|l| &l["position"]), Some(&json!(second)));
    assert!(
        !until
            .iter()
            .any(|l| l["event"]["message_id"] == sent[2]["message_id"])
    );

    // From the second message's time on: the second and third.
    let from = messages[1]["occurred_at"].as_str().expect("time");
    let later = lines(
        &missive(
            &h,
            &["events", "dump", "--from", from, "--type", "MessageSent"],
        )
        .await,
    );
    assert_eq!(
        later
            .iter()
            .map(|l| l["event"]["message_id"].clone())
            .collect::<Vec<_>>(),
        [sent[1]["message_id"].clone(), sent[2]["message_id"].clone()]
    );

    let bad = missive(&h, &["events", "dump", "--type", "MessageSend"]).await;
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("no such event type"),
        "{bad:?}"
    );
    let bad = missive(&h, &["events", "dump", "--until", "yesterday"]).await;
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("expected a time"),
        "{bad:?}"
    );
    h.shutdown().await;
}

/// `events tail` prints what is appended after it started, as it arrives.
async fn tail_follows_the_log() {
    let h = Harness::start().await;
    let (alice, bob, _) = conversation(&h, &["before"]).await;
    let mut args: Vec<String> = vec![
        "events".into(),
        "tail".into(),
        "--type".into(),
        "MessageSent".into(),
    ];
    args.push("--data-dir".into());
    args.push(h.config.data_dir.display().to_string());
    if let LogBackend::Kafka(kafka) = &h.config.log {
        args.extend([
            "--log".into(),
            format!("kafka://{}", kafka.brokers),
            "--kafka-topic-prefix".into(),
            kafka.topic_prefix.clone(),
        ]);
    }
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_missive"))
        .args(&args)
        .env_remove("MISSIVE_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("tail starts");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Until the tail is up, what is sent may come before its start: send until a line arrives.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut n = 0;
    let mut after = Vec::new();
    let line = loop {
        n += 1;
        after.push(h.send(&alice, &bob, &format!("after {n}")).await["message_id"].clone());
        if let Ok(Some(line)) =
            tokio::time::timeout(std::time::Duration::from_millis(500), rx.recv()).await
        {
            break line;
        }
        assert!(std::time::Instant::now() < deadline, "tail printed nothing");
    };
    let _ = child.kill();
    let _ = child.wait();
    let line: Value = serde_json::from_str(&line).expect("a JSON line");
    assert_eq!(line["event_type"], "MessageSent");
    assert!(
        after.contains(&line["event"]["message_id"]),
        "not the message sent before it started: {line}"
    );
    h.shutdown().await;
}

async fn unread(h: &Harness, who: &Client, position: &Value) -> i64 {
    let list = h.get_at("/v1/conversations", who, position).await;
    list.items()[0]["unread_count"].as_i64().expect("unread")
}

async fn replay_verifies_rebuilds_and_swaps() {
    let mut h = Harness::start().await;
    let (alice, bob, sent) = conversation(&h, &["one", "two", "three", "four"]).await;
    let conv = sent[0]["conversation_id"]
        .as_str()
        .expect("conv")
        .to_owned();
    let read = h
        .post(
            &format!("/v1/conversations/{conv}/read"),
            &bob,
            json!({ "up_to": sent[1]["message_id"] }),
        )
        .await;
    assert!(read.status.is_success(), "{read:?}");
    let deleted = h
        .call(
            reqwest::Method::DELETE,
            &format!(
                "/v1/messages/{}?scope=everyone",
                sent[3]["message_id"].as_str().expect("id")
            ),
            Some(&alice.token),
            None,
        )
        .await;
    assert!(deleted.status.is_success(), "{deleted:?}");
    let last = deleted.body["position"].clone();
    assert_eq!(
        unread(&h, &bob, &last).await,
        1,
        "three unread, one deleted"
    );

    // Verify while the server serves.
    let verified = missive(&h, &["replay", "--verify"]).await;
    assert!(verified.status.success(), "{verified:?}");
    let text = stdout(&verified);
    assert!(
        text.contains("verified: the live read models match"),
        "{text}"
    );
    assert!(text.contains("events/s"), "{text}");

    // Point in time: as it was once the second message was sent. Positions must name every
    // partition: on the embedded log (one partition) the second message's position does.
    let times: Vec<String> =
        lines(&missive(&h, &["events", "dump", "--type", "MessageSent"]).await)
            .iter()
            .map(|l| l["occurred_at"].as_str().expect("time").to_owned())
            .collect();
    let pit = h.dir.path().join("pit.db");
    let pit_arg = pit.display().to_string();
    if h.kafka.is_none() {
        let second = sent[1]["position"].as_str().expect("position");
        let out = missive(&h, &["replay", "--until", second, "--into", &pit_arg]).await;
        assert!(out.status.success(), "{out:?}");
        assert_eq!(history(&h, &pit, &bob, &conv).await, ["one", "two"]);
    } else {
        // Every partition holding events, at its last event; the second message's partition
        // at the second message.
        let second = sent[1]["position"].as_str().expect("position");
        let (conv_partition, _) = second.split_once(':').expect("p:o");
        let mut until: Vec<String> = log_end(&h)
            .await
            .into_iter()
            .filter(|(p, _)| p.to_string() != conv_partition)
            .map(|(p, end)| format!("{p}:{}", end - 1))
            .collect();
        let only_one = missive(
            &h,
            &["replay", "--until", &until.join(","), "--into", &pit_arg],
        )
        .await;
        assert!(
            !only_one.status.success(),
            "the conversation's partition is missing"
        );
        assert!(
            String::from_utf8_lossy(&only_one.stderr).contains("name one for every partition"),
            "{only_one:?}"
        );
        until.push(second.to_owned());
        let out = missive(
            &h,
            &["replay", "--until", &until.join(","), "--into", &pit_arg],
        )
        .await;
        assert!(out.status.success(), "{out:?}");
        assert_eq!(history(&h, &pit, &bob, &conv).await, ["one", "two"]);
    }
    // By time: once the third was sent (its time, from the log).
    let third = times[2].clone();
    let pit_time = h.dir.path().join("pit-time.db");
    let pit_time_arg = pit_time.display().to_string();
    let out = missive(&h, &["replay", "--until", &third, "--into", &pit_time_arg]).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        history(&h, &pit_time, &bob, &conv).await,
        ["one", "two", "three"]
    );
    // A point in time needs an empty target.
    let out = missive(
        &h,
        &["replay", "--until", "2000-01-01", "--into", &pit_time_arg],
    )
    .await;
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs an empty"),
        "{out:?}"
    );

    // Rebuild into read.rebuild.db while the server serves; then more traffic.
    let out = missive(&h, &["replay"]).await;
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains("read.rebuild.db"), "{out:?}");
    let after = h.send(&alice, &bob, "five").await;
    h.send(&bob, &alice, "six").await;
    assert_eq!(unread(&h, &bob, &after["position"]).await, 2);

    // No swap under a running server.
    let refused = missive(&h, &["replay", "--swap"]).await;
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("is using the data directory"),
        "{refused:?}"
    );

    // Stop, swap (catching up "five" and "six"), start: nothing lost, counts exact.
    if let Some(server) = h.server.take() {
        server.shutdown().await.expect("clean shutdown");
    }
    let swapped = missive(&h, &["replay", "--swap"]).await;
    assert!(swapped.status.success(), "{swapped:?}");
    assert!(stdout(&swapped).contains("swapped"), "{swapped:?}");
    // The swapped-in store itself, before any server runs on it: at the log's end, with what
    // was sent after the rebuild.
    {
        let path = h.config.data_dir.join("read.db");
        let swapped = SqliteStore::open_existing(&path).expect("read.db");
        assert_eq!(
            missive_cli::replay::checkpoints(&swapped)
                .await
                .expect("checkpoints"),
            log_end(&h).await
        );
        let texts = history(&h, &path, &bob, &conv).await;
        assert!(texts.contains(&"five".to_owned()), "{texts:?}");
        assert!(texts.contains(&"six".to_owned()), "{texts:?}");
    }
    h.restart().await;
    let page = h
        .get_at(
            &format!("/v1/conversations/{conv}/messages"),
            &bob,
            &after["position"],
        )
        .await;
    let mut texts: Vec<&str> = page
        .items()
        .iter()
        .filter_map(|m| m["text"].as_str())
        .collect();
    texts.sort();
    assert_eq!(texts, ["five", "one", "six", "three", "two"], "{page:?}");
    assert_eq!(
        page.items().len(),
        6,
        "the deleted one as a tombstone: {page:?}"
    );
    assert_eq!(unread(&h, &bob, &after["position"]).await, 2);
    let verified = missive(&h, &["replay", "--verify"]).await;
    assert!(verified.status.success(), "{verified:?}");

    // A live store that differs from the log is caught, row by row.
    let live = h.config.data_dir.join("read.db");
    let conn = rusqlite::Connection::open(&live).expect("open the live store");
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .expect("timeout");
    let changed = conn
        .execute(
            "UPDATE users SET display_name = 'Mallory' WHERE username = 'bob'",
            [],
        )
        .expect("tamper");
    assert_eq!(changed, 1);
    drop(conn);
    let caught = missive(&h, &["replay", "--verify"]).await;
    assert_eq!(caught.status.code(), Some(1), "{caught:?}");
    let text = stdout(&caught);
    assert!(text.contains("table users"), "{text}");
    assert!(text.contains("Mallory"), "{text}");
    assert!(text.contains("DIFFERENT"), "{text}");
    h.shutdown().await;
}

/// The analytics report of the last day, once it counts `messages` messages.
async fn analytics_report(h: &Harness, messages: u64) -> Value {
    let admin = h.server.as_ref().expect("running").secret.issue_admin(
        uuid::Uuid::nil(),
        chrono::Utc::now().timestamp(),
        600,
    );
    let now = chrono::Utc::now();
    let path = format!(
        "/v1/admin/analytics?from={}&to={}&granularity=day",
        (now - chrono::Duration::days(1)).format("%Y-%m-%dT%H:%M:%SZ"),
        (now + chrono::Duration::days(1)).format("%Y-%m-%dT%H:%M:%SZ")
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let a = h
            .call(reqwest::Method::GET, &path, Some(&admin), None)
            .await;
        assert_eq!(a.status, reqwest::StatusCode::OK, "{a:?}");
        if a.body["totals"]["messages"] == messages {
            return a.body;
        }
        assert!(std::time::Instant::now() < deadline, "never: {}", a.body);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn analytics_are_rebuilt_and_swapped() {
    let mut h = Harness::start().await;
    let (_alice, _bob, _sent) = conversation(&h, &["one", "two", "three"]).await;
    let before = analytics_report(&h, 3).await;

    let refused = missive(&h, &["replay", "--projection", "analytics", "--verify"]).await;
    assert!(!refused.status.success(), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("apply to --projection read-models"),
        "{refused:?}"
    );
    let out = missive(&h, &["replay", "--projection", "analytics"]).await;
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(
        text.contains("analytics.rebuild.db") && text.contains("events/s"),
        "{text}"
    );

    if let Some(server) = h.server.take() {
        server.shutdown().await.expect("clean shutdown");
    }
    let swapped = missive(&h, &["replay", "--projection", "analytics", "--swap"]).await;
    assert!(swapped.status.success(), "{swapped:?}");
    assert!(
        stdout(&swapped).contains("analytics.db now holds"),
        "{swapped:?}"
    );
    {
        use missive_analytics::AnalyticsStore;
        let path = h.config.data_dir.join("analytics.db");
        let swapped =
            missive_analytics::sqlite::SqliteAnalytics::open(&path).expect("analytics.db");
        let at: std::collections::BTreeMap<u32, u64> = swapped
            .checkpoints(missive_analytics::CONSUMER_GROUP)
            .await
            .expect("checkpoints")
            .into_iter()
            .map(|p| (p.partition, p.offset))
            .filter(|(_, o)| *o > 0)
            .collect();
        assert_eq!(at, log_end(&h).await);
    }
    h.restart().await;
    let after = analytics_report(&h, 3).await;
    assert_eq!(after["totals"], before["totals"]);
    assert_eq!(after["daily_active_users"], before["daily_active_users"]);
    h.shutdown().await;
}

/// Per partition holding events, the log's end.
async fn log_end(h: &Harness) -> std::collections::BTreeMap<u32, u64> {
    let mut backend = h.config.log.clone();
    if let LogBackend::Kafka(config) = &mut backend {
        config.check_topic_settings = false;
    }
    let log = backend.open(&h.config.data_dir).await.expect("the log");
    log.end_positions()
        .await
        .expect("ends")
        .into_iter()
        .filter(|p| p.offset > 0)
        .map(|p| (p.partition, p.offset))
        .collect()
}

/// The texts of a conversation in a rebuilt store, opened with the data directory's keys.
async fn history(h: &Harness, path: &Path, viewer: &Client, conv: &str) -> Vec<String> {
    let store = SqliteStore::open(path).expect("open the rebuilt store");
    let vault = SqliteVault::open(&h.config.data_dir.join("keys.db")).expect("the key vault");
    let store = OpenedStore::new(std::sync::Arc::new(store), std::sync::Arc::new(vault));
    texts(&store, viewer.id, conv.parse().expect("uuid")).await
}

/// The texts of a conversation's history, oldest first.
async fn texts(store: &OpenedStore, viewer: uuid::Uuid, conv: uuid::Uuid) -> Vec<String> {
    let query = missive_store::HistoryQuery {
        before: None,
        after: None,
        since: None,
        limit: 50,
    };
    let mut texts: Vec<String> = store
        .history(viewer, conv, query)
        .await
        .expect("history")
        .items
        .into_iter()
        .filter_map(|m| m.text)
        .collect();
    texts.reverse();
    texts
}

mod embedded {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tail_follows_the_log() {
        super::tail_follows_the_log().await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn analytics_are_rebuilt_and_swapped() {
        super::analytics_are_rebuilt_and_swapped().await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dump_prints_the_log_as_json_lines() {
        super::dump_prints_the_log_as_json_lines().await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replay_verifies_rebuilds_and_swaps() {
        super::replay_verifies_rebuilds_and_swaps().await
    }
}

mod kafka {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn analytics_are_rebuilt_and_swapped() {
        common::BACKEND
            .scope(Backend::Kafka, super::analytics_are_rebuilt_and_swapped())
            .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dump_prints_the_log_as_json_lines() {
        common::BACKEND
            .scope(Backend::Kafka, super::dump_prints_the_log_as_json_lines())
            .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replay_verifies_rebuilds_and_swaps() {
        common::BACKEND
            .scope(Backend::Kafka, super::replay_verifies_rebuilds_and_swaps())
            .await
    }
}

/// On the Scylla read store: verify with a scratch keyspace, rebuild into a new keyspace (the
/// configuration-change swap), and `--swap` refused with the reason.
async fn replay_on_scylla() {
    let h = Harness::start().await;
    let StoreBackend::Scylla(live) = h.config.store.clone() else {
        panic!("a Scylla harness");
    };
    let (_alice, bob, sent) = conversation(&h, &["one", "two", "three"]).await;
    let conv: uuid::Uuid = sent[0]["conversation_id"]
        .as_str()
        .expect("conv")
        .parse()
        .expect("uuid");
    let last = sent[2]["position"].clone();
    h.get_at("/v1/conversations", &bob, &last).await;
    let nodes = live.nodes.join(",");
    let live_url = format!("scylla://{nodes}/{}", live.keyspace);
    let short = || uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let scratch = format!("scylla://{nodes}/missive_verify_{}", short());
    let store_args = ["--store", &live_url, "--replication", "simple:1"];

    let mut args = vec!["replay", "--verify", "--into", &scratch];
    args.extend(store_args);
    let verified = missive(&h, &args).await;
    assert!(verified.status.success(), "{verified:?}");
    assert!(stdout(&verified).contains("verified"), "{verified:?}");

    let rebuilt_ks = format!("missive_rebuilt_{}", short());
    let rebuilt_url = format!("scylla://{nodes}/{rebuilt_ks}");
    let mut args = vec!["replay", "--into", &rebuilt_url];
    args.extend(store_args);
    let out = missive(&h, &args).await;
    let args = [
        "store",
        "copy-keys",
        "--into",
        &rebuilt_url,
        "--store",
        &live_url,
    ];
    let copied_again = missive_with(args.map(str::to_owned).to_vec()).await;
    let mut config = live.clone();
    config.keyspace = rebuilt_ks.clone();
    let session = missive_store::scylla::connect(&config)
        .await
        .expect("connect");
    let (checked_config, checked_live, viewer) = (config.clone(), live.clone(), bob.id);
    // In a task, so that the keyspace is dropped even when a check fails.
    let checked = tokio::spawn(async move {
        let (config, live) = (checked_config, checked_live);
        assert!(out.status.success(), "{out:?}");
        // Alice's and Bob's keys went with the read models, so the rebuilt keyspace serves
        // their texts on its own; a second copy finds them there.
        assert!(
            stdout(&out).contains("keys: 2 copied, 0 already there, 0 deleted users"),
            "{out:?}"
        );
        assert!(copied_again.status.success(), "{copied_again:?}");
        assert!(
            stdout(&copied_again).contains("keys: 0 copied, 2 already there, 0 deleted users"),
            "{copied_again:?}"
        );
        let rebuilt = missive_store::scylla::ScyllaStore::open(&config)
            .await
            .expect("open the rebuilt keyspace");
        let live_store = missive_store::scylla::ScyllaStore::open(&live)
            .await
            .expect("open the live keyspace");
        assert_eq!(
            missive_cli::replay::checkpoints(&rebuilt)
                .await
                .expect("checkpoints"),
            missive_cli::replay::checkpoints(&live_store)
                .await
                .expect("checkpoints"),
        );
        let differences = missive_cli::replay::compare(&live_store, &rebuilt)
            .await
            .expect("compare");
        assert!(differences.is_empty(), "{}", differences.report(20));
        assert!(differences.compared_rows > 0);
        // Alice's and Bob's texts open with the keys copied into the rebuilt keyspace.
        let vault = missive_keys::scylla::ScyllaVault::open(&config)
            .await
            .expect("the rebuilt keyspace's vault");
        let opened = OpenedStore::new(std::sync::Arc::new(rebuilt), std::sync::Arc::new(vault));
        assert_eq!(texts(&opened, viewer, conv).await, ["one", "two", "three"]);
    })
    .await;
    missive_store::scylla::drop_keyspace(&session, &rebuilt_ks)
        .await
        .expect("drop the rebuilt keyspace");
    if let Err(error) = checked {
        std::panic::resume_unwind(error.into_panic());
    }

    let mut args = vec!["replay", "--swap"];
    args.extend(store_args);
    let refused = missive(&h, &args).await;
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("configuration change"),
        "{refused:?}"
    );
    h.shutdown().await;
}

mod scylla {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replay_on_scylla() {
        crate::common::on_scylla("replay_on_scylla", super::replay_on_scylla).await
    }
}
