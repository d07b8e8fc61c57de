//! The EventLog contract suite on the Kafka adapter: against librdkafka's mock cluster, or a
//! real broker when `MISSIVE_TEST_KAFKA=host:port` is set (each test on its own topics and
//! consumer groups).

#![cfg(feature = "kafka")]

use std::sync::Arc;

use missive_log::kafka::testing::TestCluster;
use missive_log::kafka::{KafkaConfig, KafkaLog};
use missive_log::{EventLog, LogError, contract};

async fn fresh(cluster: &TestCluster) -> Arc<dyn EventLog> {
    let config = cluster.fresh_log_config().await;
    Arc::new(KafkaLog::connect(config).expect("connect"))
}

macro_rules! contract_test {
    ($name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let cluster = TestCluster::start();
            contract::$name(fresh(&cluster).await).await;
        }
    };
}

contract_test!(append_then_consume_in_order);
contract_test!(concurrent_appends_keep_per_key_order);
contract_test!(checkpoints_and_seek);
contract_test!(poll_times_out_then_delivers);
contract_test!(dead_letters_are_kept_until_resolved);
contract_test!(scans_read_a_bounded_stretch);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_is_named() {
    let cluster = TestCluster::start();
    let mut config = KafkaConfig::new(cluster.brokers());
    config.topic_prefix = "never-created.".into();
    config.request_timeout = std::time::Duration::from_secs(3);
    let log = KafkaLog::connect(config).expect("connect");
    match log.end_positions().await {
        Err(LogError::MissingTopic(topic)) => assert!(topic.starts_with("never-created.")),
        other => panic!("expected a missing topic, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_settings_are_checked_where_the_broker_can_describe_them() {
    use missive_log::kafka::{TopicSettings, check_topic_settings};
    let cluster = TestCluster::start();
    let mut config = cluster.fresh_log_config().await;
    config.request_timeout = std::time::Duration::from_secs(2);
    match check_topic_settings(&config).await.expect("check") {
        // Created by `create_topics` on a real broker: kept forever, not compacted.
        TopicSettings::Fine => assert!(matches!(cluster, TestCluster::Real(_))),
        TopicSettings::Unknown(why) => {
            assert!(matches!(cluster, TestCluster::Mock(_)), "{why}");
            eprintln!("note: the mock cluster cannot describe topic configs ({why})");
        }
        other => panic!("unexpected {other:?}"),
    }
}
