//! The real-time gateway: follows the event log and pushes each event to the WebSocket
//! sessions of this process that it concerns.
//!
//! Every process that serves WebSockets runs one gateway. It reads the whole log from the log's
//! end at start-up (read before the process accepts its first session), as its own consumer
//! (Kafka: a consumer group of its own, never committed, that resumes where it was when a
//! rebalance hands a partition back; embedded: a subscription to the log), so every instance
//! sees every event. For each event it
//! works out which users it concerns, skips those with no session here, builds each of them
//! their frame (serialized once per user), and queues it on each of their sessions. Frames of
//! one partition reach a session in log order.
//!
//! A session's queue is bounded: when a client reads too slowly and its queue is full, the
//! gateway drops the session's subscription and tells it to close ([`Kick::TooSlow`]), so one
//! slow client never holds up the others.
//!
//! A pushed message carries its place in the conversation (`seq`), which the read models
//! assign, so the gateway waits (a bounded time per batch) until the projector has applied the
//! batch's messages. A message still not applied then, or one the read models cannot be asked
//! about, is not pushed: its recipient's sessions are told to close ([`Kick::OutOfSync`]) and
//! receive it when they reconnect, as pending, so no message is lost for its recipient (the
//! sender's other devices miss the echo, logged, and find it in history). Other frames whose
//! audience cannot be looked up (a store error) are logged and not pushed; clients refetch
//! state over REST after reconnecting.
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
use futures::StreamExt;
use missive_events::{
    ChannelLeaveReason, DeleteScope, Envelope, Event, InvitationOutcome, Presence, RemovalReason,
};
use missive_log::{EventLog, LogConsumer, LogError, Position, StoredRecord, poll_until_stopped};
use missive_service::Service;
use missive_store::{Post, ReadStore, Relation};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::communities::{channel_message_json, post_json};
use crate::fanout::FanoutIndex;
use crate::routes::{message_json, relation_name, ts};

/// Records the gateway reads at once.
const BATCH: usize = 512;
/// How long a poll waits for records before the gateway checks whether to stop and loads
/// the fan-out entries of new sessions' users (a new session waits for its load).
const POLL_WAIT: Duration = Duration::from_millis(100);

/// A frame queued for a session.
#[derive(Debug, Clone)]
pub struct Push {
    /// The frame's JSON text, shared by every session of the user.
    pub text: Utf8Bytes,
    /// For a new message pushed to its recipient: its id, so that a session can skip a
    /// message it already sent while delivering what was pending.
    pub pending_message: Option<Uuid>,
}

/// Why the gateway dropped a session's subscription; the session closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    /// The session's queue overflowed: its client reads too slowly.
    TooSlow,
    /// An event for the session could not be pushed (its message was not projected in time,
    /// or the read models could not be read): the client reconnects and receives it then.
    OutOfSync,
    /// The server is shutting down: the client reconnects (to another process, or later).
    GoingAway,
    /// An operator blocked or deleted the user's account: the session ends for good
    /// (reconnecting is refused with 403).
    Restricted,
}

struct Subscriber {
    id: u64,
    tx: mpsc::Sender<Push>,
    kick: Option<oneshot::Sender<Kick>>,
}

impl Subscriber {
    fn kick(&mut self, why: Kick) {
        if let Some(kick) = self.kick.take() {
            let _ = kick.send(why);
        }
    }
}

#[derive(Default)]
struct Routes {
    users: HashMap<Uuid, Vec<Subscriber>>,
    /// The id the next subscription gets; ids only grow.
    next_id: u64,
    /// The servers and channels of the users above.
    index: FanoutIndex,
    /// Sessions waiting for their user's entry in `index` to be loaded.
    loading: HashMap<Uuid, Vec<oneshot::Sender<()>>>,
}

impl Routes {
    /// The user's entry is loaded: their waiting sessions go on.
    fn loaded(&mut self, user: Uuid) {
        for ready in self.loading.remove(&user).unwrap_or_default() {
            let _ = ready.send(());
        }
    }

    /// The user has no session here any more.
    fn forget(&mut self, user: Uuid) {
        self.users.remove(&user);
        self.index.forget(user);
        self.loading.remove(&user);
    }
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

/// A session's subscription: its queue of frames, and the word that the gateway dropped it.
/// Dropping it unsubscribes.
pub struct Subscription {
    gateway: Arc<Gateway>,
    user: Uuid,
    id: u64,
    pub frames: mpsc::Receiver<Push>,
    /// Resolves when the gateway drops the subscription, with the reason.
    pub kicked: oneshot::Receiver<Kick>,
    /// Resolves once the gateway knows the user's servers and channel (see
    /// [`crate::fanout`]): from then on, posts and channel messages are pushed. `None` when it
    /// knew them already.
    pub ready: Option<oneshot::Receiver<()>>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut routes = self.gateway.routes.lock();
        if let Some(subscribers) = routes.users.get_mut(&self.user) {
            subscribers.retain(|s| s.id != self.id);
            if subscribers.is_empty() {
                routes.forget(self.user);
            }
        }
    }
}

/// What one event means for one user of this process.
enum Out {
    /// A frame for the user's sessions: the metric label, the frame, and for a message pushed
    /// to its recipient its id.
    Frame(Uuid, &'static str, Value, Option<Uuid>),
    /// The user's sessions close, for this reason: [`Kick::OutOfSync`] when the event could
    /// not be turned into their frame (they reconnect and resync), [`Kick::Restricted`] when
    /// their account was blocked or deleted.
    Close(Uuid, Kick),
}

impl Gateway {
    /// A gateway whose sessions queue at most `buffer` frames each.
    pub fn new(buffer: usize) -> Self {
        Gateway {
            routes: parking_lot::Mutex::new(Routes::default()),
            buffer: buffer.max(1),
        }
    }

    /// Frames a session's queue holds at most.
    pub fn buffer(&self) -> usize {
        self.buffer
    }

    /// Subscribes a session of `user` to the pushes of every batch claimed from now on.
    pub fn subscribe(self: &Arc<Self>, user: Uuid) -> Subscription {
        let (tx, frames) = mpsc::channel(self.buffer);
        let (kick, kicked) = oneshot::channel();
        let mut routes = self.routes.lock();
        let id = routes.next_id;
        routes.next_id += 1;
        let ready = if routes.index.want(user) {
            None
        } else {
            let (tx, rx) = oneshot::channel();
            routes.loading.entry(user).or_default().push(tx);
            Some(rx)
        };
        routes.users.entry(user).or_default().push(Subscriber {
            id,
            tx,
            kick: Some(kick),
        });
        Subscription {
            gateway: self.clone(),
            user,
            id,
            frames,
            kicked,
            ready,
        }
    }

    fn is_local(&self, user: Uuid) -> bool {
        self.routes.lock().users.contains_key(&user)
    }

    /// Ends every session this process holds with [`Kick::GoingAway`] (shutdown).
    pub fn close_all(&self) {
        let mut routes = self.routes.lock();
        for subscribers in routes.users.values_mut() {
            for s in subscribers.iter_mut() {
                s.kick(Kick::GoingAway);
            }
        }
    }

    /// Brings the fan-out index forward by one event.
    fn apply_index(&self, event: &Event) {
        self.routes.lock().index.apply(event);
    }

    fn server_audience(&self, server: Uuid) -> Vec<Uuid> {
        self.routes.lock().index.server_audience(server)
    }

    fn channel_audience(&self, channel: Uuid) -> Vec<Uuid> {
        self.routes.lock().index.channel_audience(channel)
    }

    /// Starts following the log at its current end. Call it before the process accepts
    /// sessions: an event appended after this point is pushed, one before it is in the read
    /// models a new session reads.
    pub async fn follow(self: &Arc<Self>, log: &dyn EventLog) -> Result<Follower, LogError> {
        let group = format!("missive-gateway-{}", Uuid::now_v7());
        let mut consumer = log.consumer(&group).await?;
        let mut next: HashMap<u32, u64> = HashMap::new();
        for end in log.end_positions().await? {
            consumer.seek(end)?;
            next.insert(end.partition, end.offset);
        }
        Ok(Follower {
            gateway: self.clone(),
            consumer,
            next,
        })
    }
}

/// A gateway's reader of the log, from [`Gateway::follow`].
pub struct Follower {
    gateway: Arc<Gateway>,
    consumer: Box<dyn LogConsumer>,
    /// Per partition, the next offset to push.
    next: HashMap<u32, u64>,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower")
            .field("next", &self.next)
            .finish()
    }
}

impl Follower {
    /// Follows the log until `stop` resolves, pushing what each event means to the sessions
    /// it concerns. `service` tells when the read models have applied a message (pushed
    /// messages carry their place in the conversation), waiting at most `projection_wait` per
    /// batch; `store` answers who an event concerns.
    pub async fn run(
        mut self,
        store: Arc<dyn ReadStore>,
        service: Arc<Service>,
        projection_wait: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<(), LogError> {
        // However the gateway stops, its sessions end with "going away" rather than waiting
        // for pushes that will not come.
        struct CloseAll<'a>(&'a Gateway);
        impl Drop for CloseAll<'_> {
            fn drop(&mut self) {
                self.0.close_all();
            }
        }
        let _close = CloseAll(&self.gateway);
        let dispatch = Dispatch {
            gateway: &self.gateway,
            store: store.as_ref(),
            service: &service,
            projection_wait,
        };
        // A batch queues at most one frame per record on a session: half a queue at most, so
        // a client that keeps up is never closed because the gateway fell behind for a moment.
        let batch = BATCH.min((self.gateway.buffer / 2).max(1));
        tokio::pin!(stop);
        loop {
            let read = self.read_positions();
            tokio::select! {
                () = dispatch.load_memberships(read) => {}
                () = stop.as_mut() => return Ok(()),
            }
            let polled = poll_until_stopped(
                self.consumer.as_mut(),
                batch,
                POLL_WAIT,
                stop.as_mut(),
                "gateway",
            );
            let Some(mut records) = polled.await else {
                return Ok(());
            };
            // Kafka: a partition handed back to this consumer by a rebalance restarts where the
            // group says (nowhere: the gateway never commits, so at the log's start): resume
            // it where the gateway was instead.
            let assigned = self.consumer.take_assigned();
            if !assigned.is_empty() {
                let next = &self.next;
                missive_log::resume_assigned(
                    self.consumer.as_mut(),
                    &assigned,
                    &mut records,
                    |p| next.get(&p).copied(),
                )?;
            }
            for record in &records {
                self.next
                    .insert(record.position.partition, record.position.offset + 1);
            }
            tokio::select! {
                () = dispatch.dispatch(&records) => {}
                () = stop.as_mut() => return Ok(()),
            }
        }
    }
}

/// Users whose fan-out entries one load reads at once.
const LOADS_IN_FLIGHT: usize = 16;
/// Servers of one user the fan-out index holds at most (a page of the store's at a time).
const MAX_SERVERS_LOADED: usize = 10_000;

impl Follower {
    /// The last record read in each partition.
    fn read_positions(&self) -> Vec<Position> {
        self.next
            .iter()
            .filter(|(_, next)| **next > 0)
            .map(|(partition, next)| Position::new(*partition, next - 1))
            .collect()
    }
}

impl Dispatch<'_> {
    /// Loads the fan-out entries of users whose first session subscribed since the last batch,
    /// once the read models hold everything this gateway has read (`read`; see
    /// [`crate::fanout`]).
    async fn load_memberships(&self, read: Vec<Position>) {
        let users = self.gateway.routes.lock().index.take_loads();
        if users.is_empty() {
            return;
        }
        if !self.service.wait_for_all(&read, self.projection_wait).await {
            tracing::warn!("the read models are behind the gateway; loading memberships later");
            self.gateway.routes.lock().index.retry(users);
            return;
        }
        let store = self.store;
        let loaded: Vec<_> = futures::stream::iter(users)
            .map(|user| async move { (user, memberships(store, user).await) })
            .buffer_unordered(LOADS_IN_FLIGHT)
            .collect()
            .await;
        let mut routes = self.gateway.routes.lock();
        for (user, outcome) in loaded {
            if !routes.users.contains_key(&user) {
                continue;
            }
            match outcome {
                Ok((servers, channel)) => {
                    routes.index.loaded(user, servers, channel);
                    routes.loaded(user);
                }
                Err(error) => {
                    tracing::warn!(%user, %error, "a user's servers could not be read; their sessions resync");
                    if let Some(subscribers) = routes.users.remove(&user) {
                        for mut s in subscribers {
                            s.kick(Kick::OutOfSync);
                        }
                    }
                    routes.forget(user);
                }
            }
        }
    }
}

/// A user's servers and channel from the read models.
async fn memberships(
    store: &dyn ReadStore,
    user: Uuid,
) -> missive_store::Result<(Vec<Uuid>, Option<Uuid>)> {
    let mut servers = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.user_servers(user, after.as_deref(), 200).await?;
        servers.extend(page.items.iter().map(|s| s.server.server_id));
        match page.next {
            Some(next) if servers.len() < MAX_SERVERS_LOADED => after = Some(next),
            Some(_) => {
                tracing::warn!(%user, "a user is in more servers than the gateway loads; posts of the rest are not pushed");
                break;
            }
            None => break,
        }
    }
    let channel = store.current_channel(user).await?.map(|c| c.channel_id);
    Ok((servers, channel))
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
        // Every API process learns of blocks and deletions here, whether it holds sessions or
        // not (the service refuses a restricted user's commands from its memory).
        for record in records
            .iter()
            .filter(|r| r.event_type == "AccountStatusChanged")
        {
            if let Ok(envelope) = missive_events::decode(&record.payload)
                && let Event::AccountStatusChanged { user_id, status } = envelope.event
            {
                self.service.note_account(user_id, status);
            }
        }
        // Sessions that subscribe from here on read this batch's effects from the read models.
        let claimed = {
            let routes = self.gateway.routes.lock();
            if routes.users.is_empty() {
                // Nobody here to push to, and whoever comes reads the batch from the read models.
                return;
            }
            routes.next_id
        };
        let mut events = Vec::with_capacity(records.len());
        for record in records {
            match missive_events::decode(&record.payload) {
                Ok(envelope) => events.push((record.position, envelope)),
                Err(error) => {
                    tracing::warn!(position = %record.position, %error, "the gateway skips an event it cannot decode");
                }
            }
        }
        // Pushed messages carry their place in the conversation: wait (once for the batch)
        // until the read models hold the last message of each partition with a viewer here.
        let mut last_message: HashMap<u32, Position> = HashMap::new();
        // Channels a local user joins in this batch: the index learns of the join only when
        // the batch is pushed, but a message after it is theirs to see.
        let joined: HashSet<Uuid> = events
            .iter()
            .filter_map(|(_, envelope)| match &envelope.event {
                Event::ChannelJoined {
                    user_id,
                    channel_id,
                    ..
                } if self.gateway.is_local(*user_id) => Some(*channel_id),
                _ => None,
            })
            .collect();
        for (position, envelope) in &events {
            let viewed = match &envelope.event {
                Event::MessageSent {
                    sender_id,
                    recipient_id,
                    ..
                } => self.gateway.is_local(*sender_id) || self.gateway.is_local(*recipient_id),
                Event::ChannelMessageSent {
                    sender_id,
                    channel_id,
                    ..
                } => {
                    self.gateway.is_local(*sender_id)
                        || joined.contains(channel_id)
                        || !self.gateway.channel_audience(*channel_id).is_empty()
                }
                _ => false,
            };
            if viewed {
                last_message.insert(position.partition, *position);
            }
        }
        if !last_message.is_empty() {
            let positions: Vec<Position> = last_message.into_values().collect();
            if !self
                .service
                .wait_for_all(&positions, self.projection_wait)
                .await
            {
                tracing::warn!(
                    ?positions,
                    "messages were not projected in time; their recipients' sessions resync"
                );
            }
        }
        let mut out = Vec::new();
        for (position, envelope) in &events {
            // What is logged while building an event's frames names the event.
            let span = tracing::info_span!(
                "push",
                %position,
                event_id = %envelope.event_id,
                correlation_id = %envelope.correlation_id,
            );
            let frames =
                tracing::Instrument::instrument(self.frames(envelope, *position), span).await;
            match frames {
                Ok(more) => out.extend(more),
                Err(error) => tracing::warn!(
                    %position,
                    event_type = envelope.event_type(),
                    %error,
                    "the gateway could not look up whom an event concerns; not pushed"
                ),
            }
        }
        self.push(claimed, out);
    }

    /// Queues each frame on its user's sessions that subscribed before the batch was claimed.
    fn push(&self, claimed: u64, out: Vec<Out>) {
        let metrics = missive_telemetry::metrics();
        let mut routes = self.gateway.routes.lock();
        for out in out {
            let (user, push) = match out {
                Out::Frame(user, kind, frame, pending_message) => (
                    user,
                    Ok((
                        kind,
                        Push {
                            text: frame.to_string().into(),
                            pending_message,
                        },
                    )),
                ),
                Out::Close(user, kick) => (user, Err(kick)),
            };
            let Some(subscribers) = routes.users.get_mut(&user) else {
                continue;
            };
            subscribers.retain_mut(|s| {
                if s.id >= claimed {
                    return true;
                }
                let (kind, push) = match &push {
                    Ok(push) => push,
                    Err(kick) => {
                        s.kick(*kick);
                        return false;
                    }
                };
                match s.tx.try_send(push.clone()) {
                    Ok(()) => {
                        metrics.ws_pushes.with_label_values(&[*kind]).inc();
                        true
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        tracing::info!(%user, "a WebSocket session reads too slowly; closing it");
                        s.kick(Kick::TooSlow);
                        false
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                }
            });
            if subscribers.is_empty() {
                routes.forget(user);
            }
        }
    }

    /// What `envelope` means for the users of this process it concerns.
    async fn frames(
        &self,
        envelope: &Envelope,
        position: Position,
    ) -> missive_store::Result<Vec<Out>> {
        let local = |user: &Uuid| self.gateway.is_local(*user);
        let mut out = Vec::new();
        match &envelope.event {
            Event::MessageSent {
                message_id,
                sender_id,
                recipient_id,
                ..
            } => {
                let viewers = [*recipient_id, *sender_id]
                    .into_iter()
                    .collect::<HashSet<_>>()
                    .into_iter()
                    .filter(local);
                let applied = self.service.applied(position);
                for viewer in viewers {
                    // The recipient gets a message it missed as pending when it reconnects;
                    // the sender's other devices have it in history, and are left open.
                    let missed = || {
                        if viewer == *recipient_id {
                            Some(Out::Close(viewer, Kick::OutOfSync))
                        } else {
                            tracing::warn!(%position, sender = %viewer, "a message is not echoed to its sender's other devices (not projected in time, or unreadable); it is in their history");
                            None
                        }
                    };
                    if !applied {
                        out.extend(missed());
                        continue;
                    }
                    let m = match self.store.message(viewer, *message_id).await {
                        Ok(Some(m)) => m,
                        // Deleted for the viewer since: nothing to show.
                        Ok(None) => continue,
                        Err(error) => {
                            tracing::warn!(%position, %error, "a pushed message could not be read");
                            out.extend(missed());
                            continue;
                        }
                    };
                    let pending = (viewer == *recipient_id).then_some(*message_id);
                    out.push(Out::Frame(
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
            } if local(sender_id) => out.push(Out::Frame(
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
                    out.push(Out::Frame(
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
                        out.push(Out::Frame(
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
                    out.push(Out::Frame(user, "status", frame, None));
                }
            }
            Event::AccountStatusChanged { user_id, status } => {
                // Noted in `dispatch`, before any session is concerned. A blocked or deleted user's sessions end; reconnecting is refused (403).
                if *status != missive_events::AccountStatus::Active && local(user_id) {
                    out.push(Out::Close(*user_id, Kick::Restricted));
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
                        out.push(Out::Frame(
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
                        out.push(Out::Frame(
                            me,
                            "friendship",
                            json!({
                                "type": "friendship",
                                "user_id": other,
                                "relation": relation_name(state, me),
                                // Who requested, accepted, declined, cancelled or unfriended.
                                "by": envelope.actor_id,
                                "reason": reason,
                                "at": ts(envelope.occurred_at),
                            }),
                            None,
                        ));
                    }
                }
            }
            _ => return self.community_frames(envelope, position).await,
        }
        Ok(out)
    }

    /// What a server, post or channel event means for the users of this process: the
    /// audience of a post or a channel message comes from the fan-out index.
    async fn community_frames(
        &self,
        envelope: &Envelope,
        position: Position,
    ) -> missive_store::Result<Vec<Out>> {
        let local = |user: &Uuid| self.gateway.is_local(*user);
        let at = ts(envelope.occurred_at);
        let frame =
            |user: Uuid, kind: &'static str, value: Value| Out::Frame(user, kind, value, None);
        let mut out = Vec::new();
        match &envelope.event {
            Event::ServerCreated {
                server_id,
                owner_id: user_id,
                ..
            }
            | Event::ServerSubscribed { server_id, user_id }
            | Event::ServerUnsubscribed { server_id, user_id } => {
                self.gateway.apply_index(&envelope.event);
                if local(user_id) {
                    let (subscribed, role) = match &envelope.event {
                        Event::ServerCreated { .. } => (true, Some("owner")),
                        Event::ServerSubscribed { .. } => (true, Some("subscriber")),
                        _ => (false, None),
                    };
                    out.push(frame(
                        *user_id,
                        "subscription",
                        json!({
                            "type": "subscription",
                            "server_id": server_id,
                            "subscribed": subscribed,
                            "role": role,
                            "at": at,
                        }),
                    ));
                }
            }
            Event::ServerInvitationSent {
                invitation_id,
                server_id,
                inviter_id,
                invitee_id,
            } if local(invitee_id) => {
                let server_name = self.store.server(*server_id).await?.map(|s| s.name);
                out.push(frame(
                    *invitee_id,
                    "invitation",
                    json!({
                        "type": "invitation",
                        "invitation": {
                            "invitation_id": invitation_id,
                            "server_id": server_id,
                            "server_name": server_name,
                            "inviter_id": inviter_id,
                            "invitee_id": invitee_id,
                            "sent_at": at,
                            "state": "pending",
                            "answered_at": null,
                        },
                    }),
                ));
            }
            Event::ServerInvitationAnswered {
                invitation_id,
                server_id,
                invitee_id,
                outcome,
            } if local(invitee_id) => out.push(frame(
                *invitee_id,
                "invitation",
                json!({
                    "type": "invitation_answered",
                    "invitation_id": invitation_id,
                    "server_id": server_id,
                    "state": match outcome {
                        InvitationOutcome::Accepted => "accepted",
                        InvitationOutcome::Declined => "declined",
                    },
                    "at": at,
                }),
            )),
            Event::PostPublished {
                post_id,
                server_id,
                author_id,
                content,
                tags,
            } => {
                let audience = self.gateway.server_audience(*server_id);
                if !audience.is_empty() {
                    let content = match self.service.open_personal(*author_id, content).await {
                        Ok(content) => content,
                        Err(error) => {
                            tracing::warn!(%position, %error, "a post could not be opened; not pushed");
                            return Ok(out);
                        }
                    };
                    let post = Post {
                        post_id: *post_id,
                        server_id: *server_id,
                        author_id: *author_id,
                        content,
                        tags: tags.clone(),
                        published_at: envelope.occurred_at,
                        position,
                    };
                    let value = json!({ "type": "post", "post": post_json(&post) });
                    for user in audience {
                        out.push(frame(user, "post", value.clone()));
                    }
                }
            }
            Event::ChannelCreated {
                channel_id,
                server_id,
                name,
                created_by,
            } => {
                let value = json!({
                    "type": "channel",
                    "event": "created",
                    "channel": {
                        "channel_id": channel_id,
                        "server_id": server_id,
                        "name": name,
                        "created_by": created_by,
                        "created_at": at,
                    },
                });
                for user in self.gateway.server_audience(*server_id) {
                    out.push(frame(user, "channel", value.clone()));
                }
            }
            Event::ChannelDeleted {
                channel_id,
                server_id,
                ..
            } => {
                let value = json!({
                    "type": "channel",
                    "event": "deleted",
                    "channel": { "channel_id": channel_id, "server_id": server_id },
                });
                let mut audience: HashSet<Uuid> = self
                    .gateway
                    .server_audience(*server_id)
                    .into_iter()
                    .collect();
                audience.extend(self.gateway.channel_audience(*channel_id));
                self.gateway.apply_index(&envelope.event);
                for user in audience {
                    out.push(frame(user, "channel", value.clone()));
                }
            }
            Event::ChannelJoined {
                user_id,
                server_id,
                channel_id,
            }
            | Event::ChannelLeft {
                user_id,
                server_id,
                channel_id,
                ..
            } => {
                let joined = matches!(envelope.event, Event::ChannelJoined { .. });
                let reason = match &envelope.event {
                    Event::ChannelLeft { reason, .. } => Some(match reason {
                        ChannelLeaveReason::Left => "left",
                        ChannelLeaveReason::Switched => "switched",
                        ChannelLeaveReason::Unsubscribed => "unsubscribed",
                    }),
                    _ => None,
                };
                // The channel's members before a leave and after a join, and the user.
                let before: HashSet<Uuid> = self
                    .gateway
                    .channel_audience(*channel_id)
                    .into_iter()
                    .collect();
                self.gateway.apply_index(&envelope.event);
                let mut audience: HashSet<Uuid> = if joined {
                    self.gateway
                        .channel_audience(*channel_id)
                        .into_iter()
                        .collect()
                } else {
                    before
                };
                if local(user_id) {
                    audience.insert(*user_id);
                }
                let value = json!({
                    "type": "channel_member",
                    "server_id": server_id,
                    "channel_id": channel_id,
                    "user_id": user_id,
                    "joined": joined,
                    "reason": reason,
                    "at": at,
                });
                for user in audience {
                    out.push(frame(user, "channel_member", value.clone()));
                }
            }
            Event::ChannelMessageSent {
                message_id,
                channel_id,
                sender_id,
                ..
            } => {
                let mut audience: HashSet<Uuid> = self
                    .gateway
                    .channel_audience(*channel_id)
                    .into_iter()
                    .collect();
                if local(sender_id) {
                    audience.insert(*sender_id);
                }
                if audience.is_empty() {
                    return Ok(out);
                }
                let message = if self.service.applied(position) {
                    match self.store.channel_message(*sender_id, *message_id).await {
                        Ok(found) => found,
                        Err(error) => {
                            tracing::warn!(%position, %error, "a pushed channel message could not be read");
                            None
                        }
                    }
                } else {
                    None
                };
                let Some(m) = message else {
                    // Not projected in time, or unreadable: the members' sessions resync and
                    // read the channel's history (the sender's other devices have it there).
                    for user in audience.into_iter().filter(|u| u != sender_id) {
                        out.push(Out::Close(user, Kick::OutOfSync));
                    }
                    return Ok(out);
                };
                for user in audience {
                    out.push(frame(
                        user,
                        "channel_message",
                        json!({
                            "type": "channel_message",
                            "message": channel_message_json(&m, user),
                        }),
                    ));
                }
            }
            Event::ChannelMessagesRead {
                server_id,
                channel_id,
                reader_id,
                up_to,
            } if local(reader_id) => out.push(frame(
                *reader_id,
                "read_marker",
                json!({
                    "type": "read_marker",
                    "server_id": server_id,
                    "channel_id": channel_id,
                    "up_to": up_to,
                }),
            )),
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

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use missive_events::codec;
    use missive_log::Record;
    use missive_log::sqlite::{Durability, SqliteLog};
    use missive_projector::Progress;
    use missive_store::sqlite::SqliteStore;
    use tokio::sync::watch;

    use super::*;

    fn message(sender_id: Uuid, recipient_id: Uuid) -> Record {
        let envelope = Envelope::new(
            Event::MessageSent {
                message_id: Uuid::now_v7(),
                conversation_id: Uuid::now_v7(),
                sender_id,
                recipient_id,
                text: "hi".into(),
                client_msg_id: None,
            },
            sender_id,
            Uuid::now_v7(),
            Utc::now(),
        );
        let event_type = envelope.event_type();
        Record {
            stream: envelope.stream(),
            key: envelope.partition_key(),
            event_type,
            schema_version: codec::schema_version(event_type).expect("known type"),
            payload: codec::encode(&envelope).expect("encode"),
        }
    }

    /// A message the read models never apply is not dropped silently: the recipient's
    /// session, which cannot be given its place in the conversation, is told to resync, and
    /// a session of someone else is left alone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_message_not_projected_in_time_makes_its_recipients_sessions_resync() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log: Arc<dyn EventLog> =
            Arc::new(SqliteLog::open(&dir.path().join("log.db"), Durability::Normal).expect("log"));
        let store: Arc<dyn ReadStore> =
            Arc::new(SqliteStore::open(&dir.path().join("read.db")).expect("store"));
        // No projector runs: progress never moves.
        let (_progress, progress_rx) = watch::channel(Progress::default());
        let service = Arc::new(
            Service::new(log.clone(), store.clone(), progress_rx, Default::default())
                .await
                .expect("service"),
        );
        let gateway = Arc::new(Gateway::new(8));
        let follower = gateway.follow(log.as_ref()).await.expect("follow");
        let (alice, bob, carol) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let mut bobs = gateway.subscribe(bob);
        let mut carols = gateway.subscribe(carol);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task =
            tokio::spawn(
                follower.run(store, service, Duration::from_millis(50), async move {
                    let _ = stopped.await;
                }),
            );
        log.append(vec![message(alice, bob)]).await.expect("append");

        let kick = tokio::time::timeout(Duration::from_secs(30), &mut bobs.kicked)
            .await
            .expect("the gateway acts on the message")
            .expect("a reason");
        assert_eq!(kick, Kick::OutOfSync);
        assert!(bobs.frames.try_recv().is_err(), "nothing was pushed");
        assert!(carols.kicked.try_recv().is_err(), "carol is not concerned");
        assert!(gateway.is_local(carol) && !gateway.is_local(bob));

        stop.send(()).expect("running");
        task.await.expect("joined").expect("stopped cleanly");
        drop(carols);
        assert!(
            !gateway.is_local(carol),
            "a dropped subscription unsubscribes"
        );
    }
}
