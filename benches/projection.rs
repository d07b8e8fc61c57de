//! The projection functions: [`missive_projector::project`] (one decoded event to its read-model
//! changes, pure) for every event type, and [`missive_projector::project_batch`] (decode and
//! project a batch of stored records, as the projector worker does before each store
//! transaction, including its per-event metrics).
//!
//! Benchmark ids: `project/<EventType>`, `project_batch/mixed_1024` (every event type in turn)
//! and `project_batch/message_sent_1024`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use missive_benches::{every_event, message_sent};
use missive_events::{Envelope, codec, encode};
use missive_log::{Position, StoredRecord};
use missive_projector::{project, project_batch};

/// Records per batch: about what the projector takes per poll under load.
const BATCH: usize = 1024;

fn project_every_event(c: &mut Criterion) {
    let mut group = c.benchmark_group("project");
    group.throughput(Throughput::Elements(1));
    let position = Position::new(0, 42);
    for envelope in every_event() {
        group.bench_function(envelope.event_type(), |b| {
            b.iter(|| project(black_box(&envelope), black_box(position)))
        });
    }
    group.finish();
}

/// `envelope` as the log hands it to the projector, at `offset`.
fn stored(envelope: &Envelope, offset: u64) -> StoredRecord {
    StoredRecord {
        position: Position::new(0, offset),
        stream: envelope.stream(),
        key: envelope.partition_key(),
        event_type: envelope.event_type().to_owned(),
        schema_version: codec::schema_version(envelope.event_type()).expect("a kept schema"),
        payload: encode(envelope).expect("the sample encodes"),
    }
}

fn project_batches(c: &mut Criterion) {
    let mut group = c.benchmark_group("project_batch");
    group.throughput(Throughput::Elements(BATCH as u64));
    let every = every_event();
    let mixed: Vec<StoredRecord> = (0..BATCH)
        .map(|i| stored(&every[i % every.len()], i as u64))
        .collect();
    let sent = message_sent(true);
    let messages: Vec<StoredRecord> = (0..BATCH).map(|i| stored(&sent, i as u64)).collect();
    for (name, records) in [("mixed_1024", mixed), ("message_sent_1024", messages)] {
        let batch = project_batch("bench", &records);
        assert!(batch.dead.is_empty(), "every sample decodes");
        group.bench_function(name, |b| {
            b.iter(|| project_batch(black_box("bench"), black_box(&records)))
        });
    }
    group.finish();
}

criterion_group! {
    name = projection;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    targets = project_every_event, project_batches
}
criterion_main!(projection);
