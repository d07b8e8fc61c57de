//! Offline notifications: a message for a user with no live session becomes a
//! `NotificationRequested` event on the notifications stream (Kafka topic
//! `missive.notifications`), for an external push-notification service to deliver.
//!
//! The notifier is one consumer group ([`GROUP`]) over the log, so with several processes each
//! message is looked at once. A recipient counts as offline when the read models say so
//! (presence follows WebSocket sessions, across every process). Bursts are coalesced: per
//! conversation and recipient, at most one notification per interval, measured in event time
//! (the message's `occurred_at`), so a replayed or late batch decides the same way.
//! Conversations are partition keys, so one conversation is always handled by the same
//! consumer and its interval is kept in that consumer's memory.
//!
//! Delivery is at least once: the group's checkpoint moves after the batch's notifications
//! are appended, so a crash in between requests them again, and a restart forgets the
//! intervals (at most one extra notification per conversation).
//!
//! Notifications are about now, not history: a partition the group has no checkpoint for
//! starts where the notifier found the log's end when it started (Kafka would start it at the
//! log's beginning), also when a rebalance hands it to this consumer later.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use missive_events::{AccountStatus, Envelope, Event, NotificationKind, codec};
use missive_log::{EventLog, LogError, Position, Record, StoredRecord, poll_until_stopped};
use missive_store::ReadStore;
use uuid::Uuid;

/// The consumer group of the notifier.
pub const GROUP: &str = "notifications";

const BATCH: usize = 512;
const POLL_WAIT: Duration = Duration::from_millis(500);

/// Why the notifier stopped.
#[derive(Debug, thiserror::Error)]
pub enum NotifierError {
    #[error("the notifier could not use the event log")]
    Log(#[from] LogError),
    #[error("an event could not be encoded")]
    Codec(#[from] codec::CodecError),
    #[error("the read models could not be read")]
    Store(#[from] missive_store::StoreError),
}

/// Turns messages for offline users into notification requests.
pub struct Notifier {
    log: Arc<dyn EventLog>,
    store: Arc<dyn ReadStore>,
    /// At most one notification per conversation and recipient per this interval.
    interval: chrono::Duration,
    /// Per (conversation, recipient): the event time of the last notification.
    last: HashMap<(Uuid, Uuid), DateTime<Utc>>,
    /// The latest event time seen.
    latest: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("interval", &self.interval)
            .finish()
    }
}

impl Notifier {
    pub fn new(log: Arc<dyn EventLog>, store: Arc<dyn ReadStore>, interval: Duration) -> Self {
        Notifier {
            log,
            store,
            interval: chrono::Duration::from_std(interval).unwrap_or(chrono::Duration::MAX),
            last: HashMap::new(),
            latest: None,
        }
    }

    /// Runs until `stop` resolves. Transient failures are logged and retried.
    pub async fn run(
        mut self,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<(), NotifierError> {
        let mut consumer = self.log.consumer(GROUP).await?;
        // Per partition, where this notifier is: the log's end at start, then past each batch.
        let mut next: HashMap<u32, u64> = HashMap::new();
        let committed = consumer.committed().await?;
        for end in self.log.end_positions().await? {
            if !committed.iter().any(|c| c.partition == end.partition) {
                consumer.seek(end)?;
            }
            next.insert(end.partition, end.offset);
        }
        tokio::pin!(stop);
        loop {
            let polled = poll_until_stopped(
                consumer.as_mut(),
                BATCH,
                POLL_WAIT,
                stop.as_mut(),
                "notifier",
            );
            let Some(mut records) = polled.await else {
                return Ok(());
            };
            let assigned = consumer.take_assigned();
            if !assigned.is_empty() {
                // Every assigned partition is positioned explicitly, overriding whatever an
                // earlier seek left pending: at the group's checkpoint when it has one,
                // otherwise where this notifier is (Kafka would start at the log's beginning).
                let committed = match consumer.committed().await {
                    Ok(committed) => committed,
                    Err(error) => {
                        tracing::warn!(%error, "the notifier could not read its group's checkpoints; assigned partitions resume where it is");
                        Vec::new()
                    }
                };
                missive_log::resume_assigned(consumer.as_mut(), &assigned, &mut records, |p| {
                    committed
                        .iter()
                        .find(|c| c.partition == p)
                        .map(|c| c.offset)
                        .or_else(|| next.get(&p).copied())
                })?;
            }
            if records.is_empty() {
                continue;
            }
            loop {
                let error = tokio::select! {
                    handled = self.handle(&records) => match handled {
                        Ok(()) => break,
                        Err(error) => error,
                    },
                    () = stop.as_mut() => return Ok(()),
                };
                tracing::warn!(%error, "the notifier failed on a batch; retrying it");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = stop.as_mut() => return Ok(()),
                }
            }
            let mut batch_next: HashMap<u32, u64> = HashMap::new();
            for r in &records {
                batch_next.insert(r.position.partition, r.position.offset + 1);
            }
            next.extend(&batch_next);
            let batch_next: Vec<Position> = batch_next
                .into_iter()
                .map(|(p, o)| Position::new(p, o))
                .collect();
            if let Err(error) = consumer.commit(&batch_next).await {
                tracing::warn!(%error, "the notifier could not commit its position");
            }
            self.forget_old();
        }
    }

    /// Appends the notifications one batch calls for.
    async fn handle(&mut self, records: &[StoredRecord]) -> Result<(), NotifierError> {
        let metrics = &missive_telemetry::metrics().notifications;
        let mut out = Vec::new();
        let mut decided: HashMap<(Uuid, Uuid), DateTime<Utc>> = HashMap::new();
        for record in records {
            if record.event_type != "MessageSent" {
                continue;
            }
            let Ok(envelope) = missive_events::decode(&record.payload) else {
                continue;
            };
            let Event::MessageSent {
                message_id,
                conversation_id,
                sender_id,
                recipient_id,
                ..
            } = envelope.event
            else {
                continue;
            };
            let key = (conversation_id, recipient_id);
            let at = envelope.occurred_at;
            self.latest = self.latest.max(Some(at));
            let last = decided.get(&key).or_else(|| self.last.get(&key));
            if last.is_some_and(|last| self.within_interval(*last, at)) {
                metrics.with_label_values(&["coalesced"]).inc();
                continue;
            }
            match self.store.user(recipient_id).await? {
                Some(u) if u.online => {
                    metrics.with_label_values(&["online"]).inc();
                    continue;
                }
                // Blocked or deleted since: nothing is pushed to them (a message reaches them
                // only if it was sent before; they see it, if ever, when unblocked).
                Some(u) if u.account != AccountStatus::Active => {
                    metrics.with_label_values(&["unavailable"]).inc();
                    continue;
                }
                _ => {}
            }
            let event = Event::NotificationRequested {
                user_id: recipient_id,
                kind: NotificationKind::Message,
                subject_id: conversation_id,
                item_id: message_id,
                from_id: sender_id,
            };
            let envelope = Envelope::new(event, sender_id, envelope.correlation_id, Utc::now());
            let event_type = envelope.event_type();
            out.push(Record {
                stream: envelope.stream(),
                key: envelope.partition_key(),
                event_type,
                schema_version: codec::schema_version(event_type).unwrap_or(1),
                payload: codec::encode(&envelope)?,
            });
            decided.insert(key, at);
        }
        if !out.is_empty() {
            self.log.append(out).await?;
            metrics
                .with_label_values(&["requested"])
                .inc_by(decided.len() as u64);
        }
        self.last.extend(decided);
        Ok(())
    }

    /// Whether `at` falls in the interval that began at `last`.
    fn within_interval(&self, last: DateTime<Utc>, at: DateTime<Utc>) -> bool {
        last.checked_add_signed(self.interval)
            .is_none_or(|end| at < end)
    }

    /// Drops intervals that ended by the latest event time seen, so memory follows recent
    /// activity only.
    fn forget_old(&mut self) {
        let Some(latest) = self.latest else {
            return;
        };
        if self.last.len() < 10_000 {
            return;
        }
        let interval = self.interval;
        self.last.retain(|_, at| {
            at.checked_add_signed(interval)
                .is_none_or(|end| end > latest)
        });
    }
}

#[cfg(test)]
mod tests {
    use missive_log::sqlite::{Durability, SqliteLog};
    use missive_store::Change;
    use missive_store::sqlite::SqliteStore;

    use super::*;

    /// A message for an offline user becomes a notification; for a blocked or deleted one, or
    /// an online one, it does not.
    #[tokio::test]
    async fn only_reachable_offline_users_are_notified() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log: Arc<dyn EventLog> =
            Arc::new(SqliteLog::open(&dir.path().join("log.db"), Durability::Normal).expect("log"));
        let store = Arc::new(SqliteStore::open(&dir.path().join("read.db")).expect("store"));
        let [sender, offline, online, blocked, deleted] = [(); 5].map(|_| Uuid::now_v7());
        let mut changes: Vec<Change> = [sender, offline, online, blocked, deleted]
            .into_iter()
            .map(|user_id| Change::AddUser {
                user_id,
                username: format!("u{}", user_id.simple()),
                display_name: String::new(),
                registered_at: Utc::now(),
            })
            .collect();
        changes.push(Change::SetPresence {
            user_id: online,
            online: true,
            at: Utc::now(),
            version: 1,
        });
        for (user_id, status) in [
            (blocked, AccountStatus::Blocked),
            (deleted, AccountStatus::Deleted),
        ] {
            changes.push(Change::SetAccountStatus {
                user_id,
                status,
                version: 1,
            });
        }
        store.apply("test", changes, vec![]).await.expect("apply");

        let records: Vec<StoredRecord> = [offline, online, blocked, deleted]
            .into_iter()
            .enumerate()
            .map(|(i, recipient_id)| {
                let envelope = Envelope::new(
                    Event::MessageSent {
                        message_id: Uuid::now_v7(),
                        conversation_id: Uuid::now_v7(),
                        sender_id: sender,
                        recipient_id,
                        text: "hi".into(),
                        client_msg_id: None,
                    },
                    sender,
                    Uuid::now_v7(),
                    Utc::now(),
                );
                StoredRecord {
                    position: Position::new(0, i as u64),
                    stream: envelope.stream(),
                    key: envelope.partition_key(),
                    event_type: envelope.event_type().to_owned(),
                    schema_version: 2,
                    payload: codec::encode(&envelope).expect("encode"),
                }
            })
            .collect();
        let mut notifier = Notifier::new(log.clone(), store, Duration::from_secs(60));
        notifier.handle(&records).await.expect("handle");

        let mut reader = log.consumer("test-reader").await.expect("consumer");
        let notified: Vec<Uuid> = reader
            .poll(100, Duration::from_millis(200))
            .await
            .expect("poll")
            .into_iter()
            .filter(|r| r.event_type == "NotificationRequested")
            .map(
                |r| match missive_events::decode(&r.payload).expect("decode").event {
                    Event::NotificationRequested { user_id, .. } => user_id,
                    other => panic!("{other:?}"),
                },
            )
            .collect();
        assert_eq!(notified, [offline]);
    }
}
