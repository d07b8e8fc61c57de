//! `missive_producer_retries_total` counts the records the producer sent again. The mock
//! cluster fails the next produce requests on demand; librdkafka puts their records back on
//! the partition's queue and sends them again, and the counter (from its statistics) shows
//! each resend. A real broker (`MISSIVE_TEST_KAFKA`) cannot be told to fail, so there the
//! test only says it was skipped.

#![cfg(feature = "kafka")]

use std::time::{Duration, Instant};

use missive_events::Stream;
use missive_log::kafka::KafkaLog;
use missive_log::kafka::testing::TestCluster;
use missive_log::{EventLog, Record};
use rdkafka::types::RDKafkaRespErr;

fn retries() -> u64 {
    missive_telemetry::metrics()
        .producer_retries
        .with_label_values::<&str>(&[])
        .get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_produce_requests_count_each_resent_record() {
    let cluster = TestCluster::start();
    let TestCluster::Mock(mock) = &cluster else {
        eprintln!(
            "SKIPPED: a real broker cannot be made to fail produce requests; this test runs on \
             the mock cluster only"
        );
        return;
    };
    let mut config = cluster.fresh_log_config().await;
    config
        .client_options
        .push(("statistics.interval.ms".into(), "100".into()));
    let log = KafkaLog::connect(config).expect("connect");
    // The first three produce requests fail with a retriable error: the record goes three
    // times more (idempotent producer: it is stored once).
    mock.fail_produces(&[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 3]);
    let before = retries();
    log.append(vec![Record {
        stream: Stream::Messages,
        key: "conversation".into(),
        event_type: "MessageSent",
        schema_version: 2,
        payload: b"hello".to_vec(),
    }])
    .await
    .expect("appended in the end");
    // A bound for statistics that never come, not a performance target.
    let deadline = Instant::now() + Duration::from_secs(20);
    while retries() < before + 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Each failed request sent the record again (a loaded machine may add a resend of its
    // own, a request timing out); later reports of the idle producer add nothing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let counted = retries() - before;
    assert!((3..=5).contains(&counted), "{counted} resends counted");
}
