//! The real-time gateway: follows the event log and pushes each event to the WebSocket
//! sessions of this process that it concerns.
//!
//! Every process that serves WebSockets runs one gateway. It reads the whole log from the log's
//! end at start-up, as its own consumer (Kafka: a consumer group of its own, never committed;
//! embedded: a subscription to the log), so every instance sees every event. For each event it
//! works out which users it concerns, skips those with no session here, builds each of them
//! their frame (serialized once per user), and queues it on each of their sessions. Frames of
//! one partition reach a session in log order.
//!
//! A session's queue is bounded: when a client reads too slowly and its queue is full, the
//! gateway drops the session's subscription and tells it to close ([`Subscription::kicked`]),
//! so one slow client never holds up the others.
//!
//! No gap, no duplicate: a session subscribes *before* reading what is pending for its user,
//! and the gateway claims a batch of records (notes which subscriptions exist) before it looks
//! at them. A batch claimed before the subscription is pushed to it by nobody, but it is in
//! the log before the session reads the log's end, and the session reads what is pending only
//! once the read models hold everything up to that end. A batch claimed after is pushed. The
//! one overlap (a message pending when read and also pushed, because the read models were
//! ahead of the gateway) is removed by the session, which skips a pushed message it sent
//! already.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use missive_events::{DeleteScope, Envelope, Event, Presence, RemovalReason};
use missive_log::{EventLog, LogError, Position, StoredRecord, poll_until_stopped};
use missive_service::Service;
use missive_store::{ReadStore, Relation};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};
use uuid::Uuid;

use crate::routes::{message_json, relation_name, ts};

/// Records the gateway reads at once.
const BATCH: usize = 512;
/// How long a poll waits for records before the gateway checks whether to stop.
const POLL_WAIT: Duration = Duration::from_millis(500);

/// A frame queued for a session.
#[derive(Debug, Clone)]
pub struct Push {
    /// The frame's JSON text, shared by every session of the user.
    pub text: Utf8Bytes,
    /// For a new message pushed to its recipient: its id, so that a session can skip a
    /// message it already sent while delivering what was pending.
    pub pending_message: Option<Uuid>,
}

struct Subscriber {
    id: u64,
    tx: mpsc::Sender<Push>,
    kicked: Arc<Notify>,
}

#[derive(Default)]
struct Routes {
    users: HashMap<Uuid, Vec<Subscriber>>,
    /// The id the next subscription gets; ids only grow.
    next_id: u64,
}

/// The sessions this process holds, by user, and the pushes to them.
pub struct Gateway {
    routes: parking_lot::Mutex<Routes>,
    /// Frames a session's queue holds at most.
    buffer: usize,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("buffer", &self.buffer)
            .finish()
    }
}

/// A session's subscription: its queue of frames, and the signal that the gateway dropped it
/// because the queue overflowed. Dropping it unsubscribes.
pub struct Subscription {
    gateway: Arc<Gateway>,
    user: Uuid,
    id: u64,
    pub frames: mpsc::Receiver<Push>,
    pub kicked: Arc<Notify>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut routes = self.gateway.routes.lock();
        if let Some(subscribers) = routes.users.get_mut(&self.user) {
            subscribers.retain(|s| s.id != self.id);
            if subscribers.is_empty() {
                routes.users.remove(&self.user);
            }
        }
    }
}

/// The frames one event makes: for each user it concerns, their frame.
type Frames = Vec<(Uuid, &'static str, Value, Option<Uuid>)>;

impl Gateway {
    /// A gateway whose sessions queue at most `buffer` frames each.
    pub fn new(buffer: usize) -> Self {
        Gateway {
            routes: parking_lot::Mutex::new(Routes::default()),
            buffer: buffer.max(1),
        }
    }

    /// Subscribes a session of `user` to the pushes of every batch claimed from now on.
    pub fn subscribe(self: &Arc<Self>, user: Uuid) -> Subscription {
        let (tx, frames) = mpsc::channel(self.buffer);
        let kicked = Arc::new(Notify::new());
        let mut routes = self.routes.lock();
        let id = routes.next_id;
        routes.next_id += 1;
        routes.users.entry(user).or_default().push(Subscriber {
            id,
            tx,
            kicked: kicked.clone(),
        });
        Subscription {
            gateway: self.clone(),
            user,
            id,
            frames,
            kicked,
        }
    }

    fn is_local(&self, user: Uuid) -> bool {
        self.routes.lock().users.contains_key(&user)
    }

    /// Follows the log from its end until `stop` resolves, pushing what each event means to
    /// the sessions it concerns. `service` tells when the read models have applied a message
    /// (pushed messages carry their place in the conversation); `store` answers who an event
    /// concerns.
    pub async fn run(
        self: Arc<Self>,
        log: Arc<dyn EventLog>,
        store: Arc<dyn ReadStore>,
        service: Arc<Service>,
        projection_wait: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<(), LogError> {
        let group = format!("missive-gateway-{}", Uuid::now_v7());
        let mut consumer = log.consumer(&group).await?;
        let mut next: HashMap<u32, u64> = HashMap::new();
        for end in log.end_positions().await? {
            consumer.seek(end)?;
            next.insert(end.partition, end.offset);
        }
        let gateway = Dispatch {
            gateway: &self,
            store: store.as_ref(),
            service: &service,
            projection_wait,
        };
        // A batch queues at most one frame per record on a session: half a queue at most, so
        // a client that keeps up is never closed because the gateway fell behind for a moment.
        let batch = BATCH.min((self.buffer / 2).max(1));
        tokio::pin!(stop);
        loop {
            // Kafka: a partition given (back) to this consumer resumes where the gateway was.
            for partition in consumer.take_assigned() {
                if let Some(offset) = next.get(&partition) {
                    consumer.seek(Position::new(partition, *offset))?;
                }
            }
            let polled = poll_until_stopped(
                consumer.as_mut(),
                batch,
                POLL_WAIT,
                stop.as_mut(),
                "gateway",
            );
            let Some(records) = polled.await else {
                return Ok(());
            };
            for record in &records {
                next.insert(record.position.partition, record.position.offset + 1);
            }
            gateway.dispatch(&records).await;
        }
    }
}

struct Dispatch<'a> {
    gateway: &'a Gateway,
    store: &'a dyn ReadStore,
    service: &'a Service,
    projection_wait: Duration,
}

impl Dispatch<'_> {
    /// Pushes one batch: claims it, builds the frames, queues them.
    async fn dispatch(&self, records: &[StoredRecord]) {
        if records.is_empty() {
            return;
        }
        // Sessions that subscribe from here on read this batch's effects from the read models.
        let claimed = self.gateway.routes.lock().next_id;
        let mut frames: Frames = Vec::new();
        for record in records {
            let envelope = match missive_events::decode(&record.payload) {
                Ok(envelope) => envelope,
                Err(error) => {
                    tracing::warn!(position = %record.position, %error, "the gateway skips an event it cannot decode");
                    continue;
                }
            };
            match self.frames(&envelope, record.position).await {
                Ok(more) => frames.extend(more),
                Err(error) => tracing::warn!(
                    position = %record.position,
                    event_type = envelope.event_type(),
                    %error,
                    "the gateway could not look up whom an event concerns; not pushed"
                ),
            }
        }
        self.push(claimed, frames);
    }

    /// Queues each frame on its user's sessions that subscribed before the batch was claimed.
    fn push(&self, claimed: u64, frames: Frames) {
        let metrics = missive_telemetry::metrics();
        let mut routes = self.gateway.routes.lock();
        for (user, kind, frame, pending_message) in frames {
            let Some(subscribers) = routes.users.get_mut(&user) else {
                continue;
            };
            let push = Push {
                text: frame.to_string().into(),
                pending_message,
            };
            subscribers.retain(|s| {
                if s.id >= claimed {
                    return true;
                }
                match s.tx.try_send(push.clone()) {
                    Ok(()) => {
                        metrics.ws_pushes.with_label_values(&[kind]).inc();
                        true
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        tracing::info!(%user, "a WebSocket session reads too slowly; closing it");
                        s.kicked.notify_one();
                        false
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                }
            });
            if subscribers.is_empty() {
                routes.users.remove(&user);
            }
        }
    }

    /// The frames `envelope` makes for the users of this process it concerns.
    async fn frames(
        &self,
        envelope: &Envelope,
        position: Position,
    ) -> missive_store::Result<Frames> {
        let local = |user: &Uuid| self.gateway.is_local(*user);
        let mut out: Frames = Vec::new();
        match &envelope.event {
            Event::MessageSent {
                message_id,
                sender_id,
                recipient_id,
                ..
            } => {
                let viewers: Vec<Uuid> = [*recipient_id, *sender_id]
                    .into_iter()
                    .collect::<HashSet<_>>()
                    .into_iter()
                    .filter(local)
                    .collect();
                if viewers.is_empty() {
                    return Ok(out);
                }
                // A pushed message has its place in the conversation: wait until it is applied.
                if !self.service.wait_for(position, self.projection_wait).await {
                    tracing::warn!(%position, "a message was not projected in time; pushing it anyway");
                }
                for viewer in viewers {
                    let Some(m) = self.store.message(viewer, *message_id).await? else {
                        continue;
                    };
                    let pending = (viewer == *recipient_id).then_some(*message_id);
                    out.push((
                        viewer,
                        "message",
                        json!({ "type": "message", "message": message_json(&m, viewer) }),
                        pending,
                    ));
                }
            }
            Event::MessageDelivered {
                message_id,
                conversation_id,
                sender_id,
                ..
            } if local(sender_id) => out.push((
                *sender_id,
                "status",
                status(*message_id, *conversation_id, "delivered"),
                None,
            )),
            Event::MessagesRead {
                conversation_id,
                reader_id,
                up_to,
            } => {
                if local(reader_id) {
                    out.push((
                        *reader_id,
                        "read_marker",
                        json!({
                            "type": "read_marker",
                            "conversation_id": conversation_id,
                            "up_to": up_to,
                        }),
                        None,
                    ));
                }
                if let Some((a, b)) = self.store.participants(*conversation_id).await? {
                    let peer = if a == *reader_id { b } else { a };
                    if peer != *reader_id && local(&peer) {
                        out.push((
                            peer,
                            "status",
                            status(*up_to, *conversation_id, "read"),
                            None,
                        ));
                    }
                }
            }
            Event::MessageDeleted {
                message_id,
                conversation_id,
                deleted_by,
                scope,
            } => {
                let users = match scope {
                    DeleteScope::ForMe => vec![*deleted_by],
                    DeleteScope::ForEveryone => {
                        match self.store.participants(*conversation_id).await? {
                            Some((a, b)) if a != b => vec![a, b],
                            _ => vec![*deleted_by],
                        }
                    }
                };
                let scope = match scope {
                    DeleteScope::ForMe => "for_me",
                    DeleteScope::ForEveryone => "for_everyone",
                };
                for user in users.into_iter().filter(local) {
                    let mut frame = status(*message_id, *conversation_id, "deleted");
                    frame["scope"] = json!(scope);
                    out.push((user, "status", frame, None));
                }
            }
            Event::PresenceChanged { user_id, status } => {
                let friends = self.store.friends(*user_id).await?;
                let status = match status {
                    Presence::Online => "online",
                    Presence::Offline => "offline",
                };
                for friend in friends {
                    if friend.relation == Relation::Friend && local(&friend.user.id) {
                        out.push((
                            friend.user.id,
                            "presence",
                            json!({
                                "type": "presence",
                                "user_id": user_id,
                                "status": status,
                                "last_seen": ts(envelope.occurred_at),
                            }),
                            None,
                        ));
                    }
                }
            }
            Event::FriendRequested { .. }
            | Event::FriendRequestAccepted { .. }
            | Event::FriendshipRemoved { .. } => {
                let (Some((a, b)), Some(state)) = (
                    envelope.event.friendship_pair(),
                    missive_domain::friends::evolve(&envelope.event),
                ) else {
                    return Ok(out);
                };
                let reason = match &envelope.event {
                    Event::FriendshipRemoved { reason, .. } => Some(match reason {
                        RemovalReason::Declined => "declined",
                        RemovalReason::Cancelled => "cancelled",
                        RemovalReason::Unfriended => "unfriended",
                    }),
                    _ => None,
                };
                for (me, other) in [(a, b), (b, a)] {
                    if local(&me) {
                        out.push((
                            me,
                            "friendship",
                            json!({
                                "type": "friendship",
                                "user_id": other,
                                "relation": relation_name(state, me),
                                "by": a,
                                "reason": reason,
                                "at": ts(envelope.occurred_at),
                            }),
                            None,
                        ));
                    }
                }
            }
            _ => {}
        }
        Ok(out)
    }
}

fn status(message_id: Uuid, conversation_id: Uuid, status: &str) -> Value {
    json!({
        "type": "status",
        "message_id": message_id,
        "conversation_id": conversation_id,
        "status": status,
    })
}
