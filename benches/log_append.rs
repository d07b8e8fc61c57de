//! The embedded log's append path: [`SqliteLog`] in a fresh temporary directory, appending
//! encoded 100-character direct messages through [`EventLog::append`] (queue to the writer
//! thread, one transaction and commit per group, reply when durable).
//!
//! Benchmark ids, under `log_append/<durability>/` (`normal`: fsync at WAL checkpoints only;
//! `full`: fsync on every commit, the default):
//! - `1_record`: one append of one record at a time, each awaited before the next;
//! - `100_records`: one append of 100 records at a time;
//! - `64_appenders`: 64 tasks, each appending one record at a time as fast as it is
//!   acknowledged, so the writer commits whatever is waiting together (group commit).
//!
//! Throughput is in records, so criterion reports records/s ("elem/s").

use std::time::{Duration, Instant};

use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use missive_benches::message_sent;
use missive_events::{codec, encode};
use missive_log::sqlite::{Durability, SqliteLog};
use missive_log::{EventLog, Record};
use tokio::runtime::Runtime;
use tokio::task::JoinSet;

const BATCH: usize = 100;
const APPENDERS: u64 = 64;

/// The record every benchmark appends: Alice's 100-character message, encoded.
fn record() -> Record {
    let envelope = message_sent(true);
    Record {
        stream: envelope.stream(),
        key: envelope.partition_key(),
        event_type: envelope.event_type(),
        schema_version: codec::schema_version(envelope.event_type()).expect("a kept schema"),
        payload: encode(&envelope).expect("the sample encodes"),
    }
}

/// A runtime for the appending tasks. One thread is enough: they only queue records and wait;
/// the log's writer thread does the work, and has the other core.
fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a tokio runtime")
}

/// Each benchmark gets a new log file, so none measures a file another one grew.
fn fresh_log(durability: Durability) -> (tempfile::TempDir, SqliteLog) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let log = SqliteLog::open(&dir.path().join("events.db"), durability).expect("the log opens");
    (dir, log)
}

/// Appends `per_append` records per call, `iters` calls one after another.
fn sequential(
    group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &Runtime,
    durability: Durability,
    name: &str,
    per_append: usize,
) {
    let (_dir, log) = fresh_log(durability);
    let records = vec![record(); per_append];
    group.throughput(Throughput::Elements(per_append as u64));
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    log.append(records.clone())
                        .await
                        .expect("the append commits");
                }
                start.elapsed()
            })
        })
    });
}

/// [`APPENDERS`] tasks each append one record `iters` times, each append awaited before the
/// next: one iteration is one record per appender.
fn concurrent(
    group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &Runtime,
    durability: Durability,
) {
    let (_dir, log) = fresh_log(durability);
    let one = record();
    group.throughput(Throughput::Elements(APPENDERS));
    group.bench_function(format!("{APPENDERS}_appenders"), |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut tasks = JoinSet::new();
                let start = Instant::now();
                for _ in 0..APPENDERS {
                    let log = log.clone();
                    let one = one.clone();
                    tasks.spawn(async move {
                        for _ in 0..iters {
                            log.append(vec![one.clone()])
                                .await
                                .expect("the append commits");
                        }
                    });
                }
                while let Some(done) = tasks.join_next().await {
                    done.expect("an appender finished");
                }
                start.elapsed()
            })
        })
    });
}

fn append(c: &mut Criterion) {
    let rt = runtime();
    for (label, durability) in [("normal", Durability::Normal), ("full", Durability::Full)] {
        let mut group = c.benchmark_group(format!("log_append/{label}"));
        if durability == Durability::Full {
            // Every commit waits for an fsync: fewer, longer samples.
            group.sample_size(20);
        }
        sequential(&mut group, &rt, durability, "1_record", 1);
        sequential(
            &mut group,
            &rt,
            durability,
            &format!("{BATCH}_records"),
            BATCH,
        );
        concurrent(&mut group, &rt, durability);
        group.finish();
    }
}

criterion_group! {
    name = log_append;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(5));
    targets = append
}
criterion_main!(log_append);
