//! The contract every [`EventLog`] adapter must honour, written once and run against each.
//!
//! Each check takes a fresh, empty log (its own topics or file). Adapters call
//! [`run_all`] from their integration tests, or single checks to see which one fails.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use missive_events::Stream;

use crate::{DeadLetter, EventLog, LogConsumer, Position, Record, StoredRecord};

/// How long a check waits for records it expects before failing.
const DEADLINE: Duration = Duration::from_secs(20);

fn record(key: &str, n: usize) -> Record {
    Record {
        stream: Stream::Messages,
        key: key.to_owned(),
        event_type: "MessageSent",
        schema_version: 2,
        payload: format!("{key}#{n}").into_bytes(),
    }
}

/// Polls until `want` records arrived or the deadline passes.
pub async fn drain(consumer: &mut dyn LogConsumer, want: usize) -> Vec<StoredRecord> {
    let start = Instant::now();
    let mut out = Vec::new();
    while out.len() < want && start.elapsed() < DEADLINE {
        out.extend(
            consumer
                .poll(want - out.len(), Duration::from_millis(200))
                .await
                .expect("poll"),
        );
    }
    out
}

/// Appended records come back in order, byte for byte, with the positions `append` returned.
pub async fn append_then_consume_in_order(log: Arc<dyn EventLog>) {
    let records: Vec<Record> = (0..10).map(|n| record("conv-a", n)).collect();
    let positions = log.append(records.clone()).await.expect("append");
    assert_eq!(positions.len(), 10);
    for pair in positions.windows(2) {
        assert_eq!(
            pair[0].partition, pair[1].partition,
            "one key, one partition"
        );
        assert!(pair[0].offset < pair[1].offset, "offsets grow: {pair:?}");
    }
    let mut consumer = log.consumer("contract-order").await.expect("consumer");
    let got = drain(consumer.as_mut(), 10).await;
    assert_eq!(got.len(), 10);
    for ((got, want), pos) in got.iter().zip(&records).zip(&positions) {
        assert_eq!(got.payload, want.payload);
        assert_eq!(got.key, want.key);
        assert_eq!(got.event_type, want.event_type);
        assert_eq!(got.schema_version, want.schema_version);
        assert_eq!(got.stream, want.stream);
        assert_eq!(&got.position, pos);
    }
    assert!(
        log.append(Vec::new())
            .await
            .expect("empty append")
            .is_empty()
    );
    // Nothing is waiting to be written (every append was acknowledged), and this log
    // deleted nothing: it holds everything from offset 0.
    log.flush(Duration::from_secs(10)).await.expect("flush");
    let starts = log.start_positions().await.expect("start positions");
    assert_eq!(starts.len(), log.end_positions().await.expect("ends").len());
    assert!(starts.iter().all(|p| p.offset == 0), "{starts:?}");
}

/// Concurrent appends each get their own positions, and each key keeps its order.
pub async fn concurrent_appends_keep_per_key_order(log: Arc<dyn EventLog>) {
    let tasks = 8;
    let per_task = 50;
    let mut handles = Vec::new();
    for t in 0..tasks {
        let log = log.clone();
        handles.push(tokio::spawn(async move {
            let key = format!("conv-{t}");
            let mut positions = Vec::new();
            for n in 0..per_task {
                positions.extend(log.append(vec![record(&key, n)]).await.expect("append"));
            }
            positions
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.expect("task"));
    }
    let mut unique = all.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        tasks * per_task,
        "every record has its own position"
    );

    let mut consumer = log.consumer("contract-concurrent").await.expect("consumer");
    let got = drain(consumer.as_mut(), tasks * per_task).await;
    assert_eq!(got.len(), tasks * per_task);
    let mut seen: HashMap<String, usize> = HashMap::new();
    for r in &got {
        let text = String::from_utf8(r.payload.clone()).expect("utf8");
        let (key, n) = text.split_once('#').expect("payload");
        let n: usize = n.parse().expect("n");
        let expected = seen.entry(key.to_owned()).or_default();
        assert_eq!(n, *expected, "key {key} out of order");
        *expected += 1;
    }
}

/// A group resumes from its committed checkpoint; another group starts at the beginning;
/// seeking back redelivers.
pub async fn checkpoints_and_seek(log: Arc<dyn EventLog>) {
    let positions = log
        .append((0..6).map(|n| record("conv-c", n)).collect())
        .await
        .expect("append");
    let mut first = log.consumer("contract-group").await.expect("consumer");
    let got = drain(first.as_mut(), 4).await;
    assert!(got.len() >= 4);
    let fourth = got[3].position;
    let next = Position::new(fourth.partition, fourth.offset + 1);
    first.commit(&[next]).await.expect("commit");
    assert!(first.committed().await.expect("committed").contains(&next));
    drop(first);

    let mut resumed = log.consumer("contract-group").await.expect("consumer");
    let rest = drain(resumed.as_mut(), 2).await;
    assert_eq!(
        rest.iter().map(|r| r.position).collect::<Vec<_>>(),
        positions[4..].to_vec(),
        "resumes after the checkpoint"
    );

    resumed.seek(positions[1]).expect("seek");
    let again = drain(resumed.as_mut(), 5).await;
    assert_eq!(
        again.iter().map(|r| r.position).collect::<Vec<_>>(),
        positions[1..].to_vec(),
        "seek back redelivers"
    );

    let mut other = log
        .consumer("contract-other-group")
        .await
        .expect("consumer");
    let all = drain(other.as_mut(), 6).await;
    assert_eq!(all.len(), 6, "a new group starts at the beginning");
}

/// A scan reads a stretch of the log, start to end, in order per partition, commits nothing for
/// any group, and stops at its bound; a following scan sees later appends.
pub async fn scans_read_a_bounded_stretch(log: Arc<dyn EventLog>) {
    use crate::scan::{Scan, ScanEnd};
    let a = log
        .append((0..6).map(|n| record("scan-a", n)).collect())
        .await
        .expect("append");
    let b = log
        .append((0..4).map(|n| record("scan-b", n)).collect())
        .await
        .expect("append");
    // A group that committed: scans must leave it as it is. (A member commits once it has
    // joined the group: after a first poll.)
    let committed = Position::new(a[2].partition, a[2].offset + 1);
    {
        let mut member = log.consumer("contract-scan-group").await.expect("consumer");
        assert!(!drain(member.as_mut(), 1).await.is_empty());
        member.commit(&[committed]).await.expect("commit");
    }
    let read_all = |mut scan: Scan| async move {
        let start = Instant::now();
        let mut out = Vec::new();
        while !scan.is_done() && start.elapsed() < DEADLINE {
            out.extend(
                scan.poll(100, Duration::from_millis(200))
                    .await
                    .expect("poll"),
            );
        }
        assert!(scan.is_done(), "the scan reached its end: {scan:?}");
        out
    };

    let whole = Scan::open(
        log.as_ref(),
        "contract-scan",
        &Default::default(),
        ScanEnd::LogEnd,
    )
    .await
    .expect("scan");
    assert_eq!(whole.remaining(), Some(10));
    let got = read_all(whole).await;
    let mut positions: Vec<Position> = got.iter().map(|r| r.position).collect();
    positions.sort();
    let mut want: Vec<Position> = a.iter().chain(&b).copied().collect();
    want.sort();
    assert_eq!(positions, want, "every record once");
    for key in ["scan-a", "scan-b"] {
        let payloads: Vec<&[u8]> = got
            .iter()
            .filter(|r| r.key == key)
            .map(|r| r.payload.as_slice())
            .collect();
        let expected: Vec<Vec<u8>> = (0..payloads.len())
            .map(|n| format!("{key}#{n}").into_bytes())
            .collect();
        assert_eq!(
            payloads,
            expected.iter().map(Vec::as_slice).collect::<Vec<_>>()
        );
    }

    // From a's second record to just before its fifth; b's partition is not read unless it
    // is a's.
    let start = std::collections::BTreeMap::from([(a[1].partition, a[1].offset)]);
    let end = std::collections::BTreeMap::from([(a[4].partition, a[4].offset)]);
    let bounded = Scan::open(log.as_ref(), "contract-scan", &start, ScanEnd::Before(end))
        .await
        .expect("scan");
    let got = read_all(bounded).await;
    let a_part: Vec<Position> = got
        .iter()
        .filter(|r| r.key == "scan-a")
        .map(|r| r.position)
        .collect();
    assert_eq!(a_part, a[1..4].to_vec());
    if b[0].partition != a[0].partition {
        assert!(
            got.iter().all(|r| r.key == "scan-a"),
            "b's partition is not named"
        );
    }

    // A following scan from the end sees what is appended after it opened.
    let ends = log.end_positions().await.expect("ends");
    let from = crate::by_partition(ends);
    let mut follow = Scan::open(log.as_ref(), "contract-scan", &from, ScanEnd::Follow)
        .await
        .expect("scan");
    let later = log.append(vec![record("scan-a", 6)]).await.expect("append");
    let start = Instant::now();
    let mut seen = Vec::new();
    while seen.is_empty() && start.elapsed() < DEADLINE {
        seen = follow
            .poll(10, Duration::from_millis(200))
            .await
            .expect("poll");
    }
    assert_eq!(seen.iter().map(|r| r.position).collect::<Vec<_>>(), later);
    assert!(!follow.is_done());

    // The group's checkpoint is as it was.
    let mut group = log.consumer("contract-scan-group").await.expect("consumer");
    drain(group.as_mut(), 1).await;
    let now = group.committed().await.expect("committed");
    assert!(now.contains(&committed), "{now:?}");
    assert!(
        now.iter()
            .all(|p| p.partition != committed.partition || *p == committed),
        "{now:?}"
    );
}

/// A poll with nothing to read returns empty after its timeout, and later records still arrive.
pub async fn poll_times_out_then_delivers(log: Arc<dyn EventLog>) {
    let mut consumer = log.consumer("contract-timeout").await.expect("consumer");
    let none = consumer
        .poll(10, Duration::from_millis(50))
        .await
        .expect("poll");
    assert!(none.is_empty());
    log.append(vec![record("conv-t", 0)]).await.expect("append");
    let got = drain(consumer.as_mut(), 1).await;
    assert_eq!(got.len(), 1);
    let ends = log.end_positions().await.expect("end positions");
    assert!(
        ends.iter()
            .any(|p| p.partition == got[0].position.partition
                && p.offset == got[0].position.offset + 1),
        "end position follows the last record: {ends:?}"
    );
}

/// Dead letters are kept (once per projection and source) until resolved, and come back if
/// the same event fails again.
pub async fn dead_letters_are_kept_until_resolved(log: Arc<dyn EventLog>) {
    assert!(log.dead_letters().await.expect("list").is_empty());
    let positions = log
        .append(vec![record("conv-d", 0), record("conv-e", 1)])
        .await
        .expect("append");
    let letter = |n: usize, error: &str| DeadLetter {
        projection: "read-models".into(),
        source: positions[n],
        event_type: "MessageSent".into(),
        key: format!("conv-{n}"),
        payload: vec![n as u8, 0xff],
        error: error.into(),
    };
    log.dead_letter(letter(0, "first try"))
        .await
        .expect("record");
    log.dead_letter(letter(0, "second try"))
        .await
        .expect("record again");
    log.dead_letter(letter(1, "bad")).await.expect("record");
    let sorted = |mut v: Vec<DeadLetter>| {
        v.sort_by_key(|l| l.source);
        v
    };
    assert_eq!(
        sorted(log.dead_letters().await.expect("list")),
        sorted(vec![letter(0, "second try"), letter(1, "bad")])
    );

    log.resolve_dead_letter("read-models", positions[0])
        .await
        .expect("resolve");
    assert_eq!(
        log.dead_letters().await.expect("list"),
        vec![letter(1, "bad")]
    );
    log.dead_letter(letter(0, "failed again"))
        .await
        .expect("record");
    assert_eq!(
        sorted(log.dead_letters().await.expect("list")),
        sorted(vec![letter(0, "failed again"), letter(1, "bad")])
    );
}

/// Runs every check, each on a log made fresh by `make`.
pub async fn run_all<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Arc<dyn EventLog>>,
{
    append_then_consume_in_order(make().await).await;
    concurrent_appends_keep_per_key_order(make().await).await;
    checkpoints_and_seek(make().await).await;
    poll_times_out_then_delivers(make().await).await;
    dead_letters_are_kept_until_resolved(make().await).await;
    scans_read_a_bounded_stretch(make().await).await;
}
