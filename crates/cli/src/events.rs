//! `missive events dump` and `missive events tail`: the log's records as JSON lines.
//!
//! Each line is one record: where it sits (`position`, `stream`, `key`), the schema version it
//! was written with, and the envelope decoded with the schemas compiled from `schemas/`, old
//! versions upcast to the current one (`event` holds the payload's fields). A record that cannot
//! be decoded is printed with an `error` instead, so a dump never stops at a bad record.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use apache_avro::types::Value as Avro;
use chrono::{DateTime, Utc};
use missive_log::scan::{Scan, ScanEnd, parse_positions};
use missive_log::{EventLog, StoredRecord};
use serde_json::{Map, Value, json};

/// A bound of `--from`/`--until`: a time, or log positions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bound {
    Time(DateTime<Utc>),
    /// Per partition, an offset.
    Positions(BTreeMap<u32, u64>),
}

impl Bound {
    /// Parses an RFC 3339 time (`2026-12-03T10:00:00Z`), a date (`2026-12-03`, midnight UTC),
    /// or log positions (`0:120[,1:40...]`).
    pub fn parse(text: &str) -> Result<Bound, String> {
        let text = text.trim();
        if let Ok(time) = DateTime::parse_from_rfc3339(text) {
            return Ok(Bound::Time(time.with_timezone(&Utc)));
        }
        if let Ok(date) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
            return Ok(Bound::Time(date.and_time(chrono::NaiveTime::MIN).and_utc()));
        }
        if text.contains(':') && !text.contains('T') {
            return parse_positions(text).map(Bound::Positions);
        }
        Err(format!(
            "{text:?}: expected a time (2026-12-03T10:00:00Z), a date (2026-12-03) or log \
             positions (<partition>:<offset>[,...])"
        ))
    }
}

/// Which records `dump`/`tail` print.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// From this time (inclusive) or these positions (each partition from its offset).
    pub from: Option<Bound>,
    /// Until this time (inclusive) or these positions (inclusive; partitions not named are
    /// not read).
    pub until: Option<Bound>,
    /// Only these event types (empty: all).
    pub types: Vec<String>,
    /// Only records with this partition key.
    pub key: Option<String>,
}

impl Filter {
    /// Checks the event types against the schemas.
    pub fn check(&self) -> Result<(), String> {
        for t in &self.types {
            if missive_events::codec::schema_version(t).is_none() {
                let known: Vec<&str> = missive_events::codec::known_schemas()
                    .map(|(t, _, _)| t)
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
                return Err(format!(
                    "--type {t:?}: no such event type; known: {}",
                    known.join(", ")
                ));
            }
        }
        Ok(())
    }

    fn start(&self) -> BTreeMap<u32, u64> {
        match &self.from {
            Some(Bound::Positions(p)) => p.clone(),
            _ => BTreeMap::new(),
        }
    }

    fn end(&self, follow: bool) -> ScanEnd {
        match &self.until {
            Some(Bound::Positions(p)) => {
                ScanEnd::Before(p.iter().map(|(p, o)| (*p, o.saturating_add(1))).collect())
            }
            _ if follow => ScanEnd::Follow,
            _ => ScanEnd::LogEnd,
        }
    }

    /// Whether a record passes the type and key filters; its time is checked on the decoded
    /// line ([`Filter::in_time`]).
    fn passes(&self, record: &StoredRecord) -> bool {
        (self.types.is_empty() || self.types.contains(&record.event_type))
            && self.key.as_ref().is_none_or(|k| *k == record.key)
    }

    /// Whether a record's time is within `--from`/`--until`. A record that could not be
    /// decoded has no time: it passes only when no time is asked for.
    fn in_time(&self, occurred_at: Option<DateTime<Utc>>) -> bool {
        let Some(at) = occurred_at else {
            return !matches!(self.from, Some(Bound::Time(_)))
                && !matches!(self.until, Some(Bound::Time(_)));
        };
        let after_from = match &self.from {
            Some(Bound::Time(from)) => at >= *from,
            _ => true,
        };
        let before_until = match &self.until {
            Some(Bound::Time(until)) => at <= *until,
            _ => true,
        };
        after_from && before_until
    }
}

/// One record as a JSON line, and when it occurred (when it could be decoded).
pub fn to_json(record: &StoredRecord) -> (Value, Option<DateTime<Utc>>) {
    let mut line = json!({
        "position": record.position.to_string(),
        "stream": record.stream.name(),
        "key": record.key,
        "event_type": record.event_type,
        "schema_version": record.schema_version,
    });
    let mut occurred_at = None;
    match missive_events::codec::decode_value(&record.payload) {
        Ok(decoded) => {
            if let Value::Object(envelope) = avro_to_json(&decoded.value) {
                occurred_at = envelope
                    .get("occurred_at")
                    .and_then(Value::as_str)
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.with_timezone(&Utc));
                for (field, value) in envelope {
                    // These repeat the record's own metadata (and the version is the current
                    // one after upcasting): the line says them once, above.
                    if !matches!(field.as_str(), "event_type" | "schema_version" | "payload") {
                        line[field] = value;
                    } else if field == "payload" {
                        line["event"] = value;
                    }
                }
            }
        }
        Err(error) => line["error"] = Value::String(error.to_string()),
    }
    (line, occurred_at)
}

/// An Avro value as JSON: records as objects, enums as their symbol, optional values as the
/// value or null, UUIDs as strings, timestamps as RFC 3339.
fn avro_to_json(value: &Avro) -> Value {
    match value {
        Avro::Null => Value::Null,
        Avro::Boolean(b) => Value::Bool(*b),
        Avro::Int(n) | Avro::Date(n) | Avro::TimeMillis(n) => json!(n),
        Avro::Long(n) | Avro::TimeMicros(n) | Avro::LocalTimestampMillis(n) => json!(n),
        Avro::TimestampMicros(micros) => match DateTime::from_timestamp_micros(*micros) {
            Some(t) => Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
            None => json!(micros),
        },
        Avro::TimestampMillis(millis) => match DateTime::from_timestamp_millis(*millis) {
            Some(t) => Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            None => json!(millis),
        },
        Avro::Float(x) => json!(x),
        Avro::Double(x) => json!(x),
        Avro::String(s) | Avro::Enum(_, s) => Value::String(s.clone()),
        Avro::Uuid(id) => Value::String(id.to_string()),
        Avro::Bytes(b) | Avro::Fixed(_, b) => {
            Value::String(b.iter().map(|x| format!("{x:02x}")).collect())
        }
        Avro::Union(_, inner) => avro_to_json(inner),
        Avro::Array(items) => Value::Array(items.iter().map(avro_to_json).collect()),
        Avro::Map(entries) => Value::Object(
            entries
                .iter()
                .map(|(k, v)| (k.clone(), avro_to_json(v)))
                .collect(),
        ),
        Avro::Record(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), avro_to_json(v)))
                .collect::<Map<_, _>>(),
        ),
        other => Value::String(format!("{other:?}")),
    }
}

/// Prints the records `filter` selects as JSON lines to `out`: up to the log's end as it was
/// when the dump began (`follow` false), or on and on as the log grows until `stop` resolves.
/// Returns how many lines were printed.
pub async fn print(
    log: &dyn EventLog,
    filter: &Filter,
    follow: bool,
    out: &mut (dyn Write + Send),
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<u64> {
    let start = if follow && filter.from.is_none() {
        // `tail` without --from starts at the end.
        missive_log::by_partition(log.end_positions().await?)
    } else {
        filter.start()
    };
    let mut scan = Scan::open(log, "missive-events", &start, filter.end(follow)).await?;
    let mut printed = 0;
    tokio::pin!(stop);
    while !scan.is_done() {
        let records = tokio::select! {
            _ = &mut stop => break,
            polled = scan.poll(1024, Duration::from_millis(500)) => polled?,
        };
        for record in records.iter().filter(|r| filter.passes(r)) {
            let (line, occurred_at) = to_json(record);
            if filter.in_time(occurred_at) {
                writeln!(out, "{line}")?;
                printed += 1;
            }
            // A tail past its --until time is done (its partitions' later records are too).
            if let (true, Some(Bound::Time(until)), Some(at)) = (follow, &filter.until, occurred_at)
                && at > *until
            {
                out.flush()?;
                return Ok(printed);
            }
        }
        out.flush()?;
    }
    Ok(printed)
}

#[cfg(test)]
mod tests {
    use missive_events::{Envelope, Event, Stream};
    use missive_log::Position;
    use uuid::Uuid;

    use super::*;

    #[test]
    fn bounds_parse_times_dates_and_positions() {
        assert_eq!(
            Bound::parse("2026-12-03T10:00:00+01:00"),
            Ok(Bound::Time("2026-12-03T09:00:00Z".parse().expect("time")))
        );
        assert_eq!(
            Bound::parse("2026-12-03"),
            Ok(Bound::Time("2026-12-03T00:00:00Z".parse().expect("time")))
        );
        assert_eq!(
            Bound::parse("0:12,1:3"),
            Ok(Bound::Positions(BTreeMap::from([(0, 12), (1, 3)])))
        );
        assert!(
            Bound::parse("yesterday")
                .unwrap_err()
                .contains("expected a time")
        );
    }

    #[test]
    fn a_record_prints_as_its_decoded_envelope_or_its_error() {
        let envelope = Envelope::new(
            Event::MessageSent {
                message_id: Uuid::from_u128(1),
                conversation_id: Uuid::from_u128(2),
                sender_id: Uuid::from_u128(3),
                recipient_id: Uuid::from_u128(4),
                text: "hi".into(),
                client_msg_id: None,
            },
            Uuid::from_u128(3),
            Uuid::from_u128(5),
            "2026-12-03T10:00:00.123456Z".parse().expect("time"),
        );
        // Written as an old release did (v1): printed upcast to the current schema.
        let record = StoredRecord {
            position: Position::new(0, 7),
            stream: Stream::Messages,
            key: "k".into(),
            event_type: "MessageSent".into(),
            schema_version: 1,
            payload: missive_events::codec::encode_with_version(&envelope, 1).expect("encode"),
        };
        let (line, at) = to_json(&record);
        assert_eq!(line["position"], "0:7");
        assert_eq!(line["schema_version"], 1);
        assert_eq!(line["occurred_at"], "2026-12-03T10:00:00.123456Z");
        assert_eq!(at, Some(envelope.occurred_at));
        assert_eq!(line["actor_id"], Uuid::from_u128(3).to_string());
        assert_eq!(line["event"]["text"], "hi");
        assert_eq!(line["event"]["client_msg_id"], Value::Null);
        assert_eq!(
            line["event"]["recipient_id"],
            Uuid::from_u128(4).to_string()
        );

        let broken = StoredRecord {
            payload: vec![0xC3, 0x01, 1, 2],
            ..record
        };
        let (line, at) = to_json(&broken);
        assert!(
            line["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{line}"
        );
        assert_eq!(at, None);
    }
}
