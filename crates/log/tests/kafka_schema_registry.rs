//! The optional Confluent Schema Registry wire format of the Kafka log, against a fake
//! registry (an HTTP server speaking the registry's REST API) and librdkafka's mock cluster, or
//! the broker of `MISSIVE_TEST_KAFKA`.

#![cfg(feature = "kafka")]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use chrono::Utc;
use missive_events::{Envelope, Event, Stream, codec};
use missive_log::contract::drain;
use missive_log::kafka::testing::TestCluster;
use missive_log::kafka::{KafkaConfig, KafkaLog};
use missive_log::{EventLog, LogError, Record};
use parking_lot::Mutex;
use rdkafka::Message;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use uuid::Uuid;

/// `user:pass`, as HTTP basic auth.
const BASIC_USER_PASS: &str = "Basic dXNlcjpwYXNz";

#[derive(Default)]
struct Registry {
    /// Schema texts; a schema's id is its index plus one.
    schemas: Vec<String>,
    subjects: BTreeMap<String, Vec<u32>>,
    /// The next this many fetches by id answer 503.
    unavailable_fetches: usize,
    /// Registrations answer 409 (incompatible), as a registry with a stricter schema does.
    refuse_registrations: bool,
    /// The `Authorization` header every request must carry.
    required_auth: Option<&'static str>,
}

type Shared = Arc<Mutex<Registry>>;

fn refusal(status: StatusCode, code: i64, message: &str) -> (StatusCode, Json<Value>) {
    (
        status,
        Json(json!({ "error_code": code, "message": message })),
    )
}

fn check_auth(registry: &Registry, headers: &HeaderMap) -> Result<(), (StatusCode, Json<Value>)> {
    let given = headers.get("authorization").and_then(|v| v.to_str().ok());
    match registry.required_auth {
        Some(wanted) if given != Some(wanted) => {
            Err(refusal(StatusCode::UNAUTHORIZED, 401, "Unauthorized"))
        }
        _ => Ok(()),
    }
}

async fn register(
    State(shared): State<Shared>,
    Path(subject): Path<String>,
    headers: HeaderMap,
    body: String,
) -> (StatusCode, Json<Value>) {
    let mut registry = shared.lock();
    if let Err(refused) = check_auth(&registry, &headers) {
        return refused;
    }
    if registry.refuse_registrations {
        return refusal(
            StatusCode::CONFLICT,
            409,
            "Schema being registered is incompatible with an earlier schema for subject",
        );
    }
    let Some(schema) = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v["schema"].as_str().map(str::to_owned))
    else {
        return refusal(StatusCode::UNPROCESSABLE_ENTITY, 42201, "Invalid schema");
    };
    let id = match registry.schemas.iter().position(|s| *s == schema) {
        Some(i) => i as u32 + 1,
        None => {
            registry.schemas.push(schema);
            registry.schemas.len() as u32
        }
    };
    let versions = registry.subjects.entry(subject).or_default();
    if !versions.contains(&id) {
        versions.push(id);
    }
    (StatusCode::OK, Json(json!({ "id": id })))
}

async fn fetch(
    State(shared): State<Shared>,
    Path(id): Path<u32>,
    headers: HeaderMap,
) -> (StatusCode, Json<Value>) {
    let mut registry = shared.lock();
    if let Err(refused) = check_auth(&registry, &headers) {
        return refused;
    }
    if registry.unavailable_fetches > 0 {
        registry.unavailable_fetches -= 1;
        return refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            50003,
            "Error while forwarding",
        );
    }
    match registry.schemas.get((id as usize).wrapping_sub(1)) {
        Some(schema) => (StatusCode::OK, Json(json!({ "schema": schema }))),
        None => refusal(
            StatusCode::NOT_FOUND,
            40403,
            &format!("Schema {id} not found"),
        ),
    }
}

/// Serves a fake registry on a free port; returns its state and `http://127.0.0.1:port`.
async fn fake_registry() -> (Shared, String) {
    let shared = Shared::default();
    let app = axum::Router::new()
        .route("/subjects/{subject}/versions", post(register))
        .route("/schemas/ids/{id}", get(fetch))
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (shared, format!("http://{addr}"))
}

fn envelope(text: &str) -> Envelope {
    let (sender, recipient) = (Uuid::now_v7(), Uuid::now_v7());
    Envelope::new(
        Event::MessageSent {
            message_id: Uuid::now_v7(),
            conversation_id: missive_events::ids::direct_conversation_id(sender, recipient),
            sender_id: sender,
            recipient_id: recipient,
            text: text.into(),
            client_msg_id: None,
        },
        sender,
        Uuid::now_v7(),
        Utc::now(),
    )
}

fn record(envelope: &Envelope) -> Record {
    Record {
        stream: envelope.stream(),
        key: envelope.partition_key(),
        event_type: envelope.event_type(),
        schema_version: codec::schema_version(envelope.event_type()).expect("kept"),
        payload: codec::encode(envelope).expect("encode"),
    }
}

/// Every value in the messages topic, as Kafka holds it.
fn raw_values(config: &KafkaConfig, want: usize) -> Vec<Vec<u8>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set("group.id", format!("raw-{}", Uuid::now_v7()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("raw consumer");
    consumer
        .subscribe(&[config.topic(Stream::Messages).as_str()])
        .expect("subscribe");
    let started = Instant::now();
    let mut out = Vec::new();
    while out.len() < want && started.elapsed() < Duration::from_secs(30) {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            out.push(message.payload().unwrap_or_default().to_vec());
        }
    }
    out
}

async fn produce_raw(config: &KafkaConfig, key: &str, value: &[u8]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .create()
        .expect("raw producer");
    producer
        .send(
            FutureRecord::to(&config.topic(Stream::Messages))
                .key(key)
                .payload(value),
            Duration::from_secs(10),
        )
        .await
        .expect("raw record delivered");
}

/// A Kafka log (fresh topics) configured with a fake registry.
async fn registry_log() -> (TestCluster, Shared, KafkaConfig, KafkaLog) {
    let cluster = TestCluster::start();
    let (registry, url) = fake_registry().await;
    let mut config = cluster.fresh_log_config().await;
    config.schema_registry = Some(url);
    let log = KafkaLog::open(config.clone()).await.expect("open");
    (cluster, registry, config, log)
}

fn registry_framed(id: u32, single_object: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&single_object[10..]);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_written_in_registry_framing_and_read_back_as_single_object() {
    let (_cluster, registry, config, log) = registry_log().await;

    // Start-up registered the current schema of every event type under its record name.
    let subjects: Vec<String> = registry.lock().subjects.keys().cloned().collect();
    let mut expected: Vec<String> = codec::known_schemas()
        .filter(|(t, v, _)| codec::schema_version(t) == Some(*v))
        .map(|(t, _, _)| codec::record_name(t))
        .collect();
    expected.dedup();
    assert_eq!(subjects, expected);
    let message_sent_id = registry.lock().subjects["missive.events.MessageSent"][0];

    let sent = envelope("hello over the registry framing");
    let single_object = codec::encode(&sent).expect("encode");
    log.append(vec![record(&sent)]).await.expect("append");

    // On the wire: 00, the registry id (big endian), then the same Avro body.
    let raw = raw_values(&config, 1);
    assert_eq!(raw, vec![registry_framed(message_sent_id, &single_object)]);

    // Through the log: single-object again, decoding to the envelope that was appended.
    let mut consumer = log.consumer("registry-read").await.expect("consumer");
    let got = drain(consumer.as_mut(), 1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload, single_object);
    assert_eq!(codec::decode(&got[0].payload).expect("decode"), sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_of_other_producers_are_resolved_by_id_and_both_framings_are_read() {
    let (_cluster, registry, config, log) = registry_log().await;

    // Another producer registered MessageSent v2 as a different text (compact, no docs), so
    // the registry gave it an id this process never registered.
    let json = codec::schema_json("MessageSent", 2).expect("kept");
    let mut compact: Value = serde_json::from_str(json).expect("schema JSON");
    compact.as_object_mut().expect("record").remove("doc");
    let foreign_id = {
        let mut r = registry.lock();
        r.schemas.push(compact.to_string());
        r.schemas.len() as u32
    };

    let (by_other, plain, unknown) = (envelope("a"), envelope("b"), envelope("c"));
    let by_other_bytes = codec::encode(&by_other).expect("encode");
    produce_raw(
        &config,
        &by_other.partition_key(),
        &registry_framed(foreign_id, &by_other_bytes),
    )
    .await;
    // A record written before the registry was switched on: single-object, read as it is.
    KafkaLog::connect(KafkaConfig {
        schema_registry: None,
        ..config.clone()
    })
    .expect("connect")
    .append(vec![record(&plain)])
    .await
    .expect("append");
    // An id the registry never issued: handed on as it is, so decoding names the problem.
    let unknown_bytes = registry_framed(9_999, &codec::encode(&unknown).expect("encode"));
    produce_raw(&config, &unknown.partition_key(), &unknown_bytes).await;

    let mut consumer = log.consumer("registry-mixed").await.expect("consumer");
    let got = drain(consumer.as_mut(), 3).await;
    assert_eq!(got.len(), 3);
    let mut decoded = Vec::new();
    for stored in &got {
        match codec::decode(&stored.payload) {
            Ok(envelope) => decoded.push(envelope),
            Err(codec::CodecError::ConfluentFramed { schema_id }) => {
                assert_eq!(schema_id, 9_999);
                assert_eq!(stored.payload, unknown_bytes);
            }
            Err(other) => panic!("unexpected decode error {other}"),
        }
    }
    decoded.sort_by_key(|e| e.event_id);
    let mut expected = vec![by_other, plain];
    expected.sort_by_key(|e| e.event_id);
    assert_eq!(decoded, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_registry_delays_reading_but_loses_nothing() {
    let (_cluster, registry, config, log) = registry_log().await;

    let json = codec::schema_json("MessageSent", 2).expect("kept");
    let foreign_id = {
        let mut r = registry.lock();
        r.schemas.push(format!(" {json}"));
        r.unavailable_fetches = 3;
        r.schemas.len() as u32
    };
    let sent = envelope("written while the registry was down");
    let bytes = codec::encode(&sent).expect("encode");
    produce_raw(
        &config,
        &sent.partition_key(),
        &registry_framed(foreign_id, &bytes),
    )
    .await;

    let mut consumer = log.consumer("registry-down").await.expect("consumer");
    let got = drain(consumer.as_mut(), 1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload, bytes);
    assert_eq!(
        registry.lock().unavailable_fetches,
        0,
        "the fetch was retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_fails_clearly_when_the_registry_refuses() {
    let cluster = TestCluster::start();
    let (registry, url) = fake_registry().await;
    let mut config = cluster.fresh_log_config().await;

    registry.lock().refuse_registrations = true;
    config.schema_registry = Some(url.clone());
    let error = KafkaLog::open(config.clone()).await.expect_err("refused");
    assert!(
        matches!(error, LogError::SchemaRegistry { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("409"), "{error}");
    assert!(error.to_string().contains("incompatible"), "{error}");

    // Credentials in the URL are sent as basic auth, and never shown.
    {
        let mut r = registry.lock();
        r.refuse_registrations = false;
        r.required_auth = Some(BASIC_USER_PASS);
    }
    let error = KafkaLog::open(config.clone())
        .await
        .expect_err("no credentials");
    assert!(error.to_string().contains("401"), "{error}");
    let with_credentials = url.replace("http://", "http://user:pass@");
    config.schema_registry = Some(with_credentials);
    KafkaLog::open(config.clone()).await.expect("authorized");
    assert!(!format!("{config:?}").contains("pass"), "{config:?}");

    // Credentials never reach an error message, whatever is wrong with the URL.
    for bad in ["ftp://user:pass@registry", "user:pass@registry:8081"] {
        config.schema_registry = Some(bad.into());
        let error = KafkaLog::open(config.clone()).await.expect_err("not http");
        assert!(error.to_string().contains("http://"), "{error}");
        assert!(!error.to_string().contains("pass"), "{error}");
    }
}
