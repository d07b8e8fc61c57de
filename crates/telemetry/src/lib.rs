//! Telemetry: `tracing` setup and the Prometheus metrics, each defined once here.
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `missive_http_requests_total` | counter | `route`, `method`, `status` | HTTP requests answered |
//! | `missive_http_request_duration_seconds` | histogram | `route`, `method` | time to answer |
//! | `missive_events_appended_total` | counter | `event_type`, `topic` | events durably appended (topic: the stream, as in `missive_events_consumed_total`) |
//! | `missive_log_commit_records` | histogram | | records per group commit (embedded log) |
//! | `missive_projector_events_total` | counter | `projection`, `event_type` | events applied |
//! | `missive_projector_poison_events_total` | counter | `projection` | undecodable events, recorded as dead letters |
//! | `missive_projector_batch_seconds` | histogram | `projection` | time to apply one batch |
//! | `missive_projector_position` | gauge | `projection`, `partition` | next offset to apply (partition: a log position's; Kafka: topic index in `Stream::ALL` × 65536 + Kafka partition) |
//! | `missive_projector_lag` | gauge | `projection`, `partition` | events appended but not applied |
//! | `missive_ws_sessions` | gauge | | WebSocket sessions open |
//! | `missive_ws_pushes_total` | counter | `frame` | frames queued for sessions |
//! | `missive_ws_sessions_closed_total` | counter | `reason` | sessions ended (client, heartbeat, too_slow, shutdown, ...) |
//! | `missive_notifications_total` | counter | `outcome` | messages for users without a session: `requested`, `coalesced`, `online`, `unavailable` (blocked or deleted) |
//! | `missive_rate_limited_total` | counter | `scope` | commands refused with 429 (`user`, `ip`) |
//! | `missive_events_consumed_total` | counter | `consumer`, `topic`, `event_type` | events a projection read (topic: the stream) |
//! | `missive_projector_batch_records` | histogram | `projection` | records per applied batch |
//! | `missive_producer_errors_total` | counter | `kind` | failed Kafka appends (`queue_full`, `enqueue`, `delivery`) |
//! | `missive_producer_retries_total` | counter | | records the Kafka producer sent again after a failed or timed-out produce request (librdkafka's partition statistics, every 5 s) |
//! | `missive_kafka_rebalances_total` | counter | `group` | partition assignments received (one per rebalance) |
//! | `missive_store_query_duration_seconds` | histogram | `backend`, `statement` | time of one read-store call (`sqlite`, `scylla`; the `ReadStore` method, e.g. `user`, `history`, `apply`) |

use std::sync::LazyLock;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every Missive metric, registered in one registry.
#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub events_appended: IntCounterVec,
    pub log_commit_records: HistogramVec,
    pub projector_events: IntCounterVec,
    pub projector_poison: IntCounterVec,
    pub projector_batch_seconds: HistogramVec,
    pub projector_position: IntGaugeVec,
    pub projector_lag: IntGaugeVec,
    pub ws_sessions: IntGaugeVec,
    pub ws_pushes: IntCounterVec,
    pub ws_closed: IntCounterVec,
    pub notifications: IntCounterVec,
    pub rate_limited: IntCounterVec,
    pub events_consumed: IntCounterVec,
    pub projector_batch_records: HistogramVec,
    pub producer_errors: IntCounterVec,
    pub producer_retries: IntCounterVec,
    pub kafka_rebalances: IntCounterVec,
    /// Time of one read-store call: a query, or a projection batch with its checkpoint.
    pub store_query_seconds: HistogramVec,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("valid histogram");
    registry
        .register(Box::new(h.clone()))
        .expect("unique metric");
    h
}

const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Read-store calls: a point read on an embedded store takes tens of microseconds, a
/// projection batch on a remote cluster may take seconds.
const STORE_QUERY_BUCKETS: [f64; 16] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0,
];

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new();
        // process_resident_memory_bytes, process_open_fds, process_cpu_seconds_total, ...
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("the process collector registers once");
        let r = &registry;
        Metrics {
            http_requests: counter(
                r,
                "missive_http_requests_total",
                "HTTP requests answered, by route template, method and status code.",
                &["route", "method", "status"],
            ),
            http_duration: histogram(
                r,
                "missive_http_request_duration_seconds",
                "Time to answer an HTTP request, by route template and method.",
                &["route", "method"],
                LATENCY_BUCKETS.to_vec(),
            ),
            events_appended: counter(
                r,
                "missive_events_appended_total",
                "Events durably appended to the log, by event type and stream (topic without \
                 its prefix, as in missive_events_consumed_total).",
                &["event_type", "topic"],
            ),
            log_commit_records: histogram(
                r,
                "missive_log_commit_records",
                "Records written per group commit of the embedded log.",
                &[],
                vec![
                    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0, 4096.0,
                ],
            ),
            projector_events: counter(
                r,
                "missive_projector_events_total",
                "Events applied to read models, by projection and event type.",
                &["projection", "event_type"],
            ),
            projector_poison: counter(
                r,
                "missive_projector_poison_events_total",
                "Events a projection could not decode; each is recorded as a dead letter (missive dlq list).",
                &["projection"],
            ),
            projector_batch_seconds: histogram(
                r,
                "missive_projector_batch_seconds",
                "Time to apply one batch of events with its checkpoint.",
                &["projection"],
                LATENCY_BUCKETS.to_vec(),
            ),
            projector_position: gauge(
                r,
                "missive_projector_position",
                "Next log offset the projection will apply, per partition.",
                &["projection", "partition"],
            ),
            projector_lag: gauge(
                r,
                "missive_projector_lag",
                "Events appended to the log but not yet applied by the projection, per partition.",
                &["projection", "partition"],
            ),
            ws_sessions: gauge(
                r,
                "missive_ws_sessions",
                "WebSocket sessions open in this process.",
                &[],
            ),
            ws_pushes: counter(
                r,
                "missive_ws_pushes_total",
                "Frames the gateway queued for WebSocket sessions, by frame type.",
                &["frame"],
            ),
            ws_closed: counter(
                r,
                "missive_ws_sessions_closed_total",
                "WebSocket sessions ended, by reason (client, heartbeat, too_slow, send_failed, refused, unavailable).",
                &["reason"],
            ),
            notifications: counter(
                r,
                "missive_notifications_total",
                "Messages for users without a live session: requested as push notifications, or not: coalesced by the per-conversation interval, recipient online, or recipient blocked or deleted (unavailable).",
                &["outcome"],
            ),
            rate_limited: counter(
                r,
                "missive_rate_limited_total",
                "Commands refused with 429 by the rate limiter, by the limit that refused them (user, ip).",
                &["scope"],
            ),
            events_consumed: counter(
                r,
                "missive_events_consumed_total",
                "Events a consumer (projection) read from the log, by stream (topic without its prefix) and event type.",
                &["consumer", "topic", "event_type"],
            ),
            projector_batch_records: histogram(
                r,
                "missive_projector_batch_records",
                "Records per batch a projection applied.",
                &["projection"],
                vec![
                    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
                ],
            ),
            producer_errors: counter(
                r,
                "missive_producer_errors_total",
                "Appends to Kafka that failed, by kind (queue_full, enqueue, delivery).",
                &["kind"],
            ),
            producer_retries: counter(
                r,
                "missive_producer_retries_total",
                "Records the Kafka producer sent to a broker again after a produce request failed \
                 or timed out (transient broker errors), from librdkafka's partition statistics \
                 every 5 s.",
                &[],
            ),
            kafka_rebalances: counter(
                r,
                "missive_kafka_rebalances_total",
                "Partition assignments this process's Kafka consumers received (one per rebalance), by consumer group.",
                &["group"],
            ),
            store_query_seconds: histogram(
                r,
                "missive_store_query_duration_seconds",
                "Time of one read-store call, by backend (sqlite, scylla) and statement (the \
                 ReadStore method: user, history, apply, ...; never query text).",
                &["backend", "statement"],
                STORE_QUERY_BUCKETS.to_vec(),
            ),
            registry,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// Installs the global `tracing` subscriber; `RUST_LOG` filters (default `info`).
pub fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Logs go to stderr: stdout is for what a command prints (`missive events dump`'s JSON
    // lines, reports), which must stay parseable.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_query_durations_render_with_the_dashboard_labels() {
        metrics()
            .store_query_seconds
            .with_label_values(&["sqlite", "user"])
            .observe(0.0002);
        let text = metrics().render();
        assert!(
            text.contains(
                "missive_store_query_duration_seconds_bucket{backend=\"sqlite\",statement=\"user\",le=\"0.00025\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains(
            "missive_store_query_duration_seconds_count{backend=\"sqlite\",statement=\"user\"} 1"
        ));
    }
}
