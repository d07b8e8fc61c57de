//! The messages topic's retention: `create_topics` gives the messages topic the configured
//! message retention and every other topic none (`retention.ms=-1`), and
//! `check_topic_settings` accepts exactly that. librdkafka's mock cluster answers neither
//! CreateTopics nor DescribeConfigs, so without a real broker only the settings as built are
//! checked ([`topic_configs`], which `create_topics` sends as they are); against a real broker
//! (`MISSIVE_TEST_KAFKA=host:port`) the topics are created, described and checked.

#![cfg(feature = "kafka")]

use std::time::Duration;

use missive_events::Stream;
use missive_log::kafka::testing::TestCluster;
use missive_log::kafka::{
    KafkaConfig, TopicSettings, check_topic_settings, create_topics, topic_configs,
};

const THIRTY_DAYS_MS: &str = "2592000000";

fn retention_of(config: &KafkaConfig) -> Vec<(String, String)> {
    topic_configs(config)
        .into_iter()
        .map(|(name, settings)| {
            let policy = settings
                .iter()
                .find(|(k, _)| *k == "cleanup.policy")
                .map(|(_, v)| v.clone());
            assert_eq!(policy.as_deref(), Some("delete"), "{name}");
            let retention = settings
                .iter()
                .find(|(k, _)| *k == "retention.ms")
                .map(|(_, v)| v.clone())
                .expect("retention.ms is always set");
            (name, retention)
        })
        .collect()
}

#[test]
fn only_the_messages_topic_takes_the_retention() {
    let mut config = KafkaConfig::new("unused:9092");
    config.topic_prefix = "r.".into();
    // Kept forever by default.
    for (name, retention) in retention_of(&config) {
        assert_eq!(retention, "-1", "{name}");
    }
    config.messages_retention = Some(Duration::from_secs(30 * 86_400));
    let topics = retention_of(&config);
    assert_eq!(topics.len(), config.all_topics().len());
    for (name, retention) in topics {
        if name == config.topic(Stream::Messages) {
            assert_eq!(retention, THIRTY_DAYS_MS);
        } else {
            assert_eq!(retention, "-1", "{name} must keep its records forever");
        }
    }
    // Segments of a day at most, so Kafka deletes messages soon after the retention.
    for (name, settings) in topic_configs(&config) {
        let segment = settings.iter().find(|(k, _)| *k == "segment.ms");
        if name == config.topic(Stream::Messages) {
            assert_eq!(segment.map(|(_, v)| v.as_str()), Some("86400000"));
        } else {
            assert!(segment.is_none(), "{name}: {settings:?}");
        }
    }
    assert_eq!(config.retention_ms("r.messages"), THIRTY_DAYS_MS);
    assert_eq!(config.retention_ms("r.communities"), "-1");
    assert_eq!(config.retention_ms("r.dead-letters"), "-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_are_created_with_the_messages_retention() {
    let cluster = TestCluster::start();
    if let TestCluster::Mock(_) = cluster {
        // The mock cluster answers no CreateTopics or DescribeConfigs requests (they time out):
        // `only_the_messages_topic_takes_the_retention` checks what `create_topics` sends.
        eprintln!("SKIPPED: needs a real broker; set MISSIVE_TEST_KAFKA=host:port to run it");
        return;
    }
    let mut config = KafkaConfig::new(cluster.brokers());
    config.topic_prefix = format!("retention-{}.", uuid::Uuid::now_v7().simple());
    config.request_timeout = Duration::from_secs(5);
    config.messages_retention = Some(Duration::from_secs(30 * 86_400));
    let created = create_topics(&config, 2, 1).await.expect("create topics");
    assert_eq!(created, config.all_topics());
    // Creating again leaves them as they are.
    create_topics(&config, 2, 1).await.expect("create again");
    match check_topic_settings(&config).await.expect("check") {
        TopicSettings::Fine => {}
        other => panic!("expected the created topics to be as configured, got {other:?}"),
    }
    // A configuration that keeps messages forever is told the messages topic does not.
    let forever = KafkaConfig {
        messages_retention: None,
        ..config.clone()
    };
    match check_topic_settings(&forever).await.expect("check") {
        TopicSettings::Warnings(w) => {
            assert_eq!(w.len(), 1, "{w:?}");
            assert!(w[0].contains(&forever.topic(Stream::Messages)), "{w:?}");
        }
        other => panic!("expected a warning about the messages topic, got {other:?}"),
    }
}
