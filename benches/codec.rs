//! The Avro single-object codec: encoding and decoding one envelope of every event type, and
//! decoding records written with an older schema version (resolved to the current one).
//!
//! Benchmark ids: `encode/<EventType>`, `decode/<EventType>`, and
//! `decode_old_version/<EventType>/v<N>` next to `.../current` for the same envelope, so the
//! two differ only by the schema resolution. Throughput is the record's encoded size.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use missive_benches::{every_event, message_sent, notification_requested};
use missive_events::codec::encode_with_version;
use missive_events::{Envelope, decode, encode};

fn encode_every_event(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    for envelope in every_event() {
        let len = encode(&envelope).expect("the sample encodes").len();
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(envelope.event_type(), |b| {
            b.iter(|| encode(black_box(&envelope)).expect("the sample encodes"))
        });
    }
    group.finish();
}

fn decode_every_event(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    for envelope in every_event() {
        let bytes = encode(&envelope).expect("the sample encodes");
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function(envelope.event_type(), |b| {
            b.iter(|| decode(black_box(&bytes)).expect("the sample decodes"))
        });
    }
    group.finish();
}

/// The cost of upcasting: the same envelope written with version 1 and with the current
/// version. The MessageSent has no `client_msg_id`, which version 1 cannot hold.
fn decode_old_version(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode_old_version");
    let samples: [(Envelope, u32); 2] = [(message_sent(false), 1), (notification_requested(), 1)];
    for (envelope, version) in samples {
        let old = encode_with_version(&envelope, version).expect("the old version holds it");
        let current = encode(&envelope).expect("the sample encodes");
        for (label, bytes) in [
            (format!("v{version}"), old),
            ("current".to_owned(), current),
        ] {
            assert_eq!(decode(&bytes).expect("the sample decodes"), envelope);
            group.throughput(Throughput::Bytes(bytes.len() as u64));
            group.bench_function(format!("{}/{label}", envelope.event_type()), |b| {
                b.iter(|| decode(black_box(&bytes)).expect("the sample decodes"))
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = codec;
    // 50 benchmarks of sub-microsecond to microsecond operations: a short window is plenty.
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    targets = encode_every_event, decode_every_event, decode_old_version
}
criterion_main!(codec);
