//! Projections: turning the event log into read models.
//!
//! [`project`] is pure: one event in, the read-model [`Change`]s it implies out. [`Projector`]
//! is the worker: it consumes the log in batches, applies each batch's changes together with
//! the batch's checkpoint, and publishes how far it got ([`Progress`]) so that queries can wait
//! for their own writes. Because every change is idempotent, a batch delivered twice (crash
//! between apply and commit, redelivery, full replay) leaves the read models unchanged.
//!
//! # Layout
//! - [`project`]: the projection function.
//! - [`Projector`], [`Progress`]: the worker and its published position.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use missive_events::{DeleteScope, Envelope, Event, InvitationOutcome, Presence};
use missive_log::{DeadLetter, EventLog, LogConsumer, Position, StoredRecord};
use missive_store::{Change, CommunityChange, ReadStore};
use missive_telemetry::metrics;
use tokio::sync::watch;

/// The name under which the read models' projection keeps its checkpoints.
pub const READ_MODELS: &str = "read-models";

/// The read-model changes one event implies. `position` is where the event sits in the log;
/// its offset is the version that orders changes to the same row.
pub fn project(envelope: &Envelope, position: Position) -> Vec<Change> {
    let version = position.offset;
    let at = envelope.occurred_at;
    match &envelope.event {
        Event::UserRegistered {
            user_id,
            username,
            display_name,
        } => vec![Change::AddUser {
            user_id: *user_id,
            username: username.clone(),
            display_name: display_name.clone(),
            registered_at: at,
        }],
        Event::ProfileUpdated {
            user_id,
            display_name,
        } => vec![Change::SetDisplayName {
            user_id: *user_id,
            display_name: display_name.clone(),
            version,
        }],
        Event::AccountStatusChanged { user_id, status } => vec![Change::SetAccountStatus {
            user_id: *user_id,
            status: *status,
            version,
        }],
        Event::PresenceChanged { user_id, status } => vec![Change::SetPresence {
            user_id: *user_id,
            online: *status == Presence::Online,
            at,
            version,
        }],
        Event::FriendRequested { .. }
        | Event::FriendRequestAccepted { .. }
        | Event::FriendshipRemoved { .. } => {
            match (
                envelope.event.friendship_pair(),
                missive_domain::friends::evolve(&envelope.event),
            ) {
                (Some((a, b)), Some(state)) => vec![Change::SetFriendship {
                    a,
                    b,
                    state,
                    at,
                    version,
                }],
                _ => Vec::new(),
            }
        }
        Event::MessageSent {
            message_id,
            conversation_id,
            sender_id,
            recipient_id,
            text,
            client_msg_id,
        } => vec![Change::AddMessage {
            message_id: *message_id,
            conversation_id: *conversation_id,
            sender_id: *sender_id,
            recipient_id: *recipient_id,
            text: text.clone(),
            client_msg_id: client_msg_id.clone(),
            sent_at: at,
            position,
        }],
        Event::MessagesRead {
            conversation_id,
            reader_id,
            up_to,
        } => vec![Change::MarkRead {
            conversation_id: *conversation_id,
            reader_id: *reader_id,
            up_to: *up_to,
        }],
        Event::MessageDeleted {
            message_id,
            deleted_by,
            scope,
            ..
        } => match scope {
            DeleteScope::ForMe => vec![Change::HideMessage {
                user_id: *deleted_by,
                message_id: *message_id,
            }],
            DeleteScope::ForEveryone => vec![Change::TombstoneMessage {
                message_id: *message_id,
            }],
        },
        Event::MessageDelivered {
            message_id,
            recipient_id,
            ..
        } => vec![Change::MarkDelivered {
            message_id: *message_id,
            recipient_id: *recipient_id,
        }],
        // Requests for an external push-notification service; no read model holds them.
        Event::NotificationRequested { .. } => Vec::new(),
        Event::ServerCreated { .. }
        | Event::ServerSubscribed { .. }
        | Event::ServerUnsubscribed { .. }
        | Event::ServerInvitationSent { .. }
        | Event::ServerInvitationAnswered { .. }
        | Event::PostPublished { .. }
        | Event::ChannelCreated { .. }
        | Event::ChannelDeleted { .. }
        | Event::ChannelJoined { .. }
        | Event::ChannelLeft { .. }
        | Event::ChannelMessageSent { .. }
        | Event::ChannelMessagesRead { .. } => {
            let mut changes: Vec<Change> = project_community(&envelope.event, at, position)
                .map(Change::Community)
                .into_iter()
                .collect();
            // A sender has read the channel up to their own message: it never counts as
            // unread for them (as in conversations).
            if let Event::ChannelMessageSent {
                message_id,
                channel_id,
                sender_id,
                ..
            } = &envelope.event
            {
                changes.push(Change::Community(CommunityChange::MarkChannelRead {
                    channel_id: *channel_id,
                    reader_id: *sender_id,
                    up_to: *message_id,
                }));
            }
            changes
        }
    }
}

/// The change a server, post or channel event implies (`None` for the other events).
fn project_community(
    event: &Event,
    at: DateTime<Utc>,
    position: Position,
) -> Option<CommunityChange> {
    let version = position.offset;
    Some(match event {
        Event::ServerCreated {
            server_id,
            owner_id,
            name,
            tags,
            visibility,
        } => CommunityChange::AddServer {
            server_id: *server_id,
            owner_id: *owner_id,
            name: name.clone(),
            tags: tags.clone(),
            visibility: *visibility,
            created_at: at,
        },
        Event::ServerSubscribed { server_id, user_id }
        | Event::ServerUnsubscribed { server_id, user_id } => CommunityChange::SetSubscription {
            server_id: *server_id,
            user_id: *user_id,
            subscribed: matches!(event, Event::ServerSubscribed { .. }),
            at,
            version,
        },
        Event::ServerInvitationSent {
            invitation_id,
            server_id,
            inviter_id,
            invitee_id,
        } => CommunityChange::AddInvitation {
            invitation_id: *invitation_id,
            server_id: *server_id,
            inviter_id: *inviter_id,
            invitee_id: *invitee_id,
            sent_at: at,
        },
        Event::ServerInvitationAnswered {
            invitation_id,
            outcome,
            ..
        } => CommunityChange::AnswerInvitation {
            invitation_id: *invitation_id,
            accepted: *outcome == InvitationOutcome::Accepted,
            at,
        },
        Event::PostPublished {
            post_id,
            server_id,
            author_id,
            content,
            tags,
        } => CommunityChange::AddPost {
            post_id: *post_id,
            server_id: *server_id,
            author_id: *author_id,
            content: content.clone(),
            tags: tags.clone(),
            published_at: at,
            position,
        },
        Event::ChannelCreated {
            channel_id,
            server_id,
            name,
            created_by,
        } => CommunityChange::AddChannel {
            channel_id: *channel_id,
            server_id: *server_id,
            name: name.clone(),
            created_by: *created_by,
            created_at: at,
        },
        Event::ChannelDeleted {
            channel_id,
            server_id,
            ..
        } => CommunityChange::DeleteChannel {
            channel_id: *channel_id,
            server_id: *server_id,
        },
        Event::ChannelJoined {
            user_id,
            server_id,
            channel_id,
        } => CommunityChange::JoinChannel {
            user_id: *user_id,
            server_id: *server_id,
            channel_id: *channel_id,
            at,
            version,
        },
        Event::ChannelLeft {
            user_id,
            channel_id,
            ..
        } => CommunityChange::LeaveChannel {
            user_id: *user_id,
            channel_id: *channel_id,
            version,
        },
        Event::ChannelMessageSent {
            message_id,
            server_id,
            channel_id,
            sender_id,
            text,
            client_msg_id,
        } => CommunityChange::AddChannelMessage {
            message_id: *message_id,
            server_id: *server_id,
            channel_id: *channel_id,
            sender_id: *sender_id,
            text: text.clone(),
            client_msg_id: client_msg_id.clone(),
            sent_at: at,
            position,
        },
        Event::ChannelMessagesRead {
            channel_id,
            reader_id,
            up_to,
            ..
        } => CommunityChange::MarkChannelRead {
            channel_id: *channel_id,
            reader_id: *reader_id,
            up_to: *up_to,
        },
        _ => return None,
    })
}

/// How far a projection has applied the log: per partition, the next offset to apply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress(pub BTreeMap<u32, u64>);

impl Progress {
    /// True once the event at `position` has been applied.
    pub fn has_applied(&self, position: Position) -> bool {
        self.0
            .get(&position.partition)
            .is_some_and(|next| *next > position.offset)
    }
}

/// Consumes the log and keeps the read models up to date.
pub struct Projector {
    log: Arc<dyn EventLog>,
    store: Arc<dyn ReadStore>,
    name: String,
    batch_size: usize,
    progress: watch::Sender<Progress>,
    /// The log's end as last asked, for the lag gauge; asked at most once per
    /// [`LAG_REFRESH`] (on Kafka it is a round trip per partition).
    log_end: std::sync::Mutex<Option<(Instant, Vec<Position>)>>,
}

/// How often the lag gauge asks the log where it ends.
const LAG_REFRESH: Duration = Duration::from_secs(1);

impl std::fmt::Debug for Projector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Projector")
            .field("name", &self.name)
            .finish()
    }
}

/// What one batch of records amounts to.
#[derive(Debug, Default)]
pub struct ProjectedBatch {
    pub changes: Vec<Change>,
    /// Per partition, the next offset after the batch.
    pub checkpoint: Vec<Position>,
    /// Records that could not be decoded: recorded as dead letters before the checkpoint
    /// moves past them.
    pub dead: Vec<DeadLetter>,
}

/// Decodes one record and projects it.
pub fn project_record(record: &StoredRecord) -> Result<Vec<Change>, missive_events::CodecError> {
    let envelope = missive_events::decode(&record.payload)?;
    Ok(project(&envelope, record.position))
}

/// Turns a batch of records into changes, the checkpoint just after it, and dead letters.
pub fn project_batch(projection: &str, records: &[StoredRecord]) -> ProjectedBatch {
    let mut changes = Vec::with_capacity(records.len() * 2);
    let mut dead = Vec::new();
    let mut next: BTreeMap<u32, u64> = BTreeMap::new();
    let m = metrics();
    if !records.is_empty() {
        m.projector_batch_records
            .with_label_values(&[projection])
            .observe(records.len() as f64);
    }
    for record in records {
        next.insert(record.position.partition, record.position.offset + 1);
        // The header names the type; one no schema knows is counted as `unknown` (bounded labels).
        let event_type = match missive_events::codec::schema_version(&record.event_type) {
            Some(_) => record.event_type.as_str(),
            None => "unknown",
        };
        m.events_consumed
            .with_label_values(&[projection, record.stream.name(), event_type])
            .inc();
        match missive_events::decode(&record.payload) {
            Ok(envelope) => {
                m.projector_events
                    .with_label_values(&[projection, envelope.event_type()])
                    .inc();
                tracing::trace!(
                    projection,
                    position = %record.position,
                    event_id = %envelope.event_id,
                    correlation_id = %envelope.correlation_id,
                    event_type = envelope.event_type(),
                    "projecting"
                );
                changes.extend(project(&envelope, record.position));
            }
            Err(error) => {
                metrics()
                    .projector_poison
                    .with_label_values(&[projection])
                    .inc();
                tracing::error!(
                    projection,
                    position = %record.position,
                    event_type = %record.event_type,
                    %error,
                    "cannot decode event; recorded as a dead letter"
                );
                dead.push(DeadLetter {
                    projection: projection.to_owned(),
                    source: record.position,
                    event_type: record.event_type.clone(),
                    key: record.key.clone(),
                    payload: record.payload.clone(),
                    error: error.to_string(),
                });
            }
        }
    }
    let checkpoint = next.into_iter().map(|(p, o)| Position::new(p, o)).collect();
    ProjectedBatch {
        changes,
        checkpoint,
        dead,
    }
}

impl Projector {
    pub fn new(log: Arc<dyn EventLog>, store: Arc<dyn ReadStore>, name: &str) -> Self {
        let (progress, _) = watch::channel(Progress::default());
        Projector {
            log,
            store,
            name: name.to_owned(),
            batch_size: 2048,
            progress,
            log_end: std::sync::Mutex::new(None),
        }
    }

    /// Sets how many events at most go into one store transaction.
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// Follows the projection's progress (starts empty until [`Projector::run`] loads it).
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// Runs until `shutdown` resolves, then returns after the batch in hand is applied.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), ProjectorError> {
        let mut consumer = self.log.consumer(&self.name).await?;
        let checkpoints = self.store.checkpoints(&self.name).await?;
        let mut progress = Progress::default();
        // The store's checkpoint commits with the read models, so it is the truth; the log's
        // group checkpoint is only kept for monitoring and tools. A partition the store has no
        // checkpoint for (a new or rebuilt store) is read from its start.
        for cp in &checkpoints {
            progress.0.insert(cp.partition, cp.offset);
        }
        for end in self.log.end_positions().await? {
            progress.0.entry(end.partition).or_insert(0);
        }
        for (partition, next) in &progress.0 {
            consumer.seek(Position::new(*partition, *next))?;
        }
        self.observe(&progress, None).await;
        self.progress.send_replace(progress.clone());
        tracing::info!(projection = %self.name, ?checkpoints, "projector started");
        tokio::pin!(shutdown);
        loop {
            let mut records = tokio::select! {
                _ = &mut shutdown => break,
                polled = consumer.poll(self.batch_size, Duration::from_millis(500)) => polled?,
            };
            let assigned = consumer.take_assigned();
            if !assigned.is_empty() {
                self.resume_assigned(&assigned, consumer.as_mut(), &mut records, &mut progress)
                    .await?;
            }
            if records.is_empty() {
                continue;
            }
            let started = Instant::now();
            let ProjectedBatch {
                changes,
                checkpoint,
                dead,
            } = project_batch(&self.name, &records);
            // A dead letter is durable before the checkpoint passes its event: never lost.
            for letter in dead {
                self.log.dead_letter(letter).await?;
            }
            match self
                .apply_with_retry(changes, &records, checkpoint.clone(), &mut shutdown)
                .await?
            {
                Applied::Yes => {}
                Applied::ShutDown => break,
                Applied::Refused(error) => {
                    tracing::warn!(projection = %self.name, %error, "batch refused; applying its events one by one");
                    if !self.apply_one_by_one(&records, &mut shutdown).await? {
                        break;
                    }
                }
            }
            if let Err(error) = consumer.commit(&checkpoint).await {
                tracing::warn!(projection = %self.name, %error, "log checkpoint not committed; the store's checkpoint still holds");
            }
            for cp in &checkpoint {
                progress.0.insert(cp.partition, cp.offset);
            }
            // Metrics first: whoever sees the new progress sees them too.
            self.observe(&progress, Some(started)).await;
            self.progress.send_replace(progress.clone());
        }
        tracing::info!(projection = %self.name, "projector stopped");
        Ok(())
    }

    /// Positions partitions the consumer group just assigned at the store's checkpoint, the
    /// truth, rather than where the group's commit or an earlier seek left them: records below
    /// it were applied already (by this process before a rebalance, or by another one that
    /// died before committing) and are dropped; if the consumer would start anywhere else, it
    /// is sought there and this batch's records of the partition are dropped.
    async fn resume_assigned(
        &self,
        assigned: &[u32],
        consumer: &mut dyn LogConsumer,
        records: &mut Vec<StoredRecord>,
        progress: &mut Progress,
    ) -> Result<(), ProjectorError> {
        // A transient store error is retried (as applies are): the records in hand wait.
        let mut backoff = RETRY_FIRST;
        let checkpoints = loop {
            match self.store.checkpoints(&self.name).await {
                Ok(checkpoints) => break checkpoints,
                Err(error) if error.is_transient() => {
                    tracing::warn!(projection = %self.name, %error, ?backoff, "read store unavailable; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
                Err(error) => return Err(error.into()),
            }
        };
        let next_of = |partition: u32| {
            checkpoints
                .iter()
                .find(|cp| cp.partition == partition)
                .map_or(0, |cp| cp.offset)
        };
        let skipped =
            missive_log::resume_assigned(consumer, assigned, records, |p| Some(next_of(p)))?;
        if skipped > 0 {
            tracing::info!(projection = %self.name, ?assigned, skipped, "assigned partitions resume at the store's checkpoint");
        }
        for &partition in assigned {
            progress.0.insert(partition, next_of(partition));
        }
        Ok(())
    }

    /// Applies changes with their checkpoint, retrying transient store errors with backoff
    /// until they succeed or `shutdown` resolves. A refusal (the store rejects the changes
    /// themselves) is returned for the caller to isolate.
    ///
    /// The first attempt moves `changes`; a retry projects `records` again rather than keep a
    /// copy of every batch on the hot path.
    async fn apply_with_retry(
        &self,
        changes: Vec<Change>,
        records: &[StoredRecord],
        checkpoint: Vec<Position>,
        shutdown: &mut (impl std::future::Future<Output = ()> + Unpin),
    ) -> Result<Applied, ProjectorError> {
        let mut backoff = RETRY_FIRST;
        let mut changes = changes;
        loop {
            match self
                .store
                .apply(&self.name, changes, checkpoint.clone())
                .await
            {
                Ok(()) => return Ok(Applied::Yes),
                Err(error) if error.is_transient() => {
                    tracing::warn!(projection = %self.name, %error, retry_in_ms = backoff.as_millis() as u64, "read store unavailable; retrying");
                    // Undecodable records are dead letters already; they add nothing.
                    changes = records
                        .iter()
                        .flat_map(|r| project_record(r).unwrap_or_default())
                        .collect();
                    tokio::select! {
                        _ = &mut *shutdown => return Ok(Applied::ShutDown),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
                Err(error) => return Ok(Applied::Refused(error)),
            }
        }
    }

    /// Applies a refused batch event by event: each event with its own checkpoint; one the
    /// store refuses becomes a dead letter and the checkpoint moves past it. Returns false if
    /// shut down midway.
    async fn apply_one_by_one(
        &self,
        records: &[StoredRecord],
        shutdown: &mut (impl std::future::Future<Output = ()> + Unpin),
    ) -> Result<bool, ProjectorError> {
        for record in records {
            let checkpoint = vec![Position::new(
                record.position.partition,
                record.position.offset + 1,
            )];
            // Undecodable events were recorded as dead letters already: just pass them.
            let changes = project_record(record).unwrap_or_default();
            let one = std::slice::from_ref(record);
            match self
                .apply_with_retry(changes, one, checkpoint.clone(), shutdown)
                .await?
            {
                Applied::Yes => {}
                Applied::ShutDown => return Ok(false),
                Applied::Refused(error) => {
                    metrics()
                        .projector_poison
                        .with_label_values(&[&self.name])
                        .inc();
                    let event_id = missive_events::decode(&record.payload)
                        .map(|e| e.event_id.to_string())
                        .unwrap_or_default();
                    tracing::error!(projection = %self.name, position = %record.position, %event_id, %error, "event refused by the read store; recorded as a dead letter");
                    self.log
                        .dead_letter(DeadLetter {
                            projection: self.name.clone(),
                            source: record.position,
                            event_type: record.event_type.clone(),
                            key: record.key.clone(),
                            payload: record.payload.clone(),
                            error: error.to_string(),
                        })
                        .await?;
                    match self
                        .apply_with_retry(Vec::new(), &[], checkpoint, shutdown)
                        .await?
                    {
                        Applied::Yes => {}
                        Applied::ShutDown => return Ok(false),
                        Applied::Refused(error) => return Err(error.into()),
                    }
                }
            }
        }
        Ok(true)
    }

    /// Records position and lag per partition, and the batch time when a batch was applied.
    async fn observe(&self, progress: &Progress, batch_started: Option<Instant>) {
        let m = metrics();
        if let Some(started) = batch_started {
            m.projector_batch_seconds
                .with_label_values(&[&self.name])
                .observe(started.elapsed().as_secs_f64());
        }
        let cached = self
            .log_end
            .lock()
            .ok()
            .and_then(|c| c.clone())
            .filter(|(at, _)| at.elapsed() < LAG_REFRESH);
        let ends = match cached {
            Some((_, ends)) => ends,
            None => {
                let ends = self.log.end_positions().await.unwrap_or_default();
                if let Ok(mut c) = self.log_end.lock() {
                    *c = Some((Instant::now(), ends.clone()));
                }
                ends
            }
        };
        for (partition, next) in &progress.0 {
            let p = partition.to_string();
            m.projector_position
                .with_label_values(&[&self.name, &p])
                .set(*next as i64);
            if let Some(end) = ends.iter().find(|e| e.partition == *partition) {
                m.projector_lag
                    .with_label_values(&[&self.name, &p])
                    .set(end.offset.saturating_sub(*next) as i64);
            }
        }
    }
}

/// First and longest wait between retries of a read store that is unavailable.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// What an attempt to apply a batch came to.
enum Applied {
    Yes,
    ShutDown,
    /// The store refused the changes themselves.
    Refused(missive_store::StoreError),
}

/// Why a projector stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    #[error("the projector lost the event log")]
    Log(#[from] missive_log::LogError),
    #[error("the projector could not write the read models")]
    Store(#[from] missive_store::StoreError),
    /// A rebuild was asked to stop before what its store holds already.
    #[error(
        "the target read models already hold partition {partition} up to offset {applied}, past \
         the bound {bound}: rebuild into an empty target"
    )]
    PastBound {
        partition: u32,
        applied: u64,
        bound: u64,
    },
}

/// How often [`follow_progress`] reads the checkpoints.
pub const FOLLOW_INTERVAL: Duration = Duration::from_millis(20);

/// Follows a projection that runs in another process (`missive project`) through the
/// checkpoints it commits with the read models, so an API process without a projector can still
/// wait for positions (`min_position`, commands that read their own writes). Runs until
/// `shutdown` resolves.
pub fn follow_progress(
    store: Arc<dyn ReadStore>,
    projection: &str,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> (watch::Receiver<Progress>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(Progress::default());
    let projection = projection.to_owned();
    let task = tokio::spawn(async move {
        tokio::pin!(shutdown);
        loop {
            match store.checkpoints(&projection).await {
                Ok(checkpoints) => {
                    let progress = Progress(missive_log::by_partition(checkpoints));
                    tx.send_if_modified(|current| {
                        let changed = *current != progress;
                        *current = progress;
                        changed
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, projection, "cannot read projection checkpoints")
                }
            }
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(FOLLOW_INTERVAL) => {}
            }
        }
    });
    (rx, task)
}

/// How far [`Projector::rebuild`] applies the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Until {
    /// The log's end when the rebuild starts.
    End,
    /// Per partition, the first offset *not* to apply; a partition not named is not applied.
    Before(BTreeMap<u32, u64>),
    /// The events that occurred at or before this time: each partition stops at its first event
    /// that occurred after it (a cut of the log, as it stood at that moment).
    Time(DateTime<Utc>),
}

/// What a rebuild did.
#[derive(Debug, Clone, PartialEq)]
pub struct Rebuilt {
    /// Events applied.
    pub events: u64,
    /// Records that could not be decoded: skipped and logged (the live projector records them
    /// as dead letters; a rebuild leaves the dead letters alone).
    pub undecodable: u64,
    pub elapsed: Duration,
    /// Per partition, the next offset the rebuilt read models would apply: their checkpoint.
    pub reached: BTreeMap<u32, u64>,
    /// False when stopped (`shutdown`) before the bound: the target is consistent but short.
    pub complete: bool,
}

impl Rebuilt {
    /// Rebuild speed, in events per second.
    pub fn events_per_second(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 {
            (self.events + self.undecodable) as f64 / seconds
        } else {
            0.0
        }
    }
}

/// A rebuild's progress, handed to its observer after every batch.
#[derive(Debug, Clone, Copy)]
pub struct RebuildProgress {
    pub events: u64,
    /// Records left to read before the bound (for a time bound, whose cut is not known
    /// beforehand: before the log's end).
    pub remaining: u64,
}

impl Projector {
    /// Applies the log to this projector's store up to `until` and returns: `missive replay`'s
    /// rebuild. It starts at the store's own checkpoints (the log's start for an empty store),
    /// so an interrupted rebuild resumes, and a rebuilt store can be caught up again later. It
    /// reads with a private consumer group (the live projectors' group is untouched) and
    /// commits its checkpoints with the read models as [`Projector::run`] does, so the live
    /// projector carries on exactly where a rebuild ended once it is pointed at the rebuilt
    /// store. Stops early, consistently, when `shutdown` resolves.
    pub async fn rebuild(
        self,
        until: &Until,
        mut observe: impl FnMut(RebuildProgress),
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<Rebuilt, ProjectorError> {
        use missive_log::scan::{Scan, ScanEnd};
        let started = Instant::now();
        let start = missive_log::by_partition(self.store.checkpoints(&self.name).await?);
        let end = match until {
            Until::End | Until::Time(_) => ScanEnd::LogEnd,
            Until::Before(before) => {
                for (partition, applied) in &start {
                    let bound = before.get(partition).copied().unwrap_or(0);
                    if *applied > bound {
                        return Err(ProjectorError::PastBound {
                            partition: *partition,
                            applied: *applied,
                            bound,
                        });
                    }
                }
                ScanEnd::Before(before.clone())
            }
        };
        let mut scan = Scan::open(self.log.as_ref(), "missive-replay", &start, end).await?;
        tracing::info!(projection = %self.name, ?start, ?until, "rebuild started");
        let mut done = Rebuilt {
            events: 0,
            undecodable: 0,
            elapsed: Duration::ZERO,
            reached: scan.next_offsets().clone(),
            complete: false,
        };
        tokio::pin!(shutdown);
        while !scan.is_done() {
            let records = tokio::select! {
                _ = &mut shutdown => break,
                polled = scan.poll(self.batch_size, Duration::from_millis(500)) => polled?,
            };
            let mut kept = Vec::with_capacity(records.len());
            let mut changes = Vec::with_capacity(records.len() * 2);
            let mut checkpoint: BTreeMap<u32, u64> = BTreeMap::new();
            let mut cut: Vec<u32> = Vec::new();
            for record in records {
                let Position { partition, offset } = record.position;
                if cut.contains(&partition) {
                    continue;
                }
                match missive_events::decode(&record.payload) {
                    Ok(envelope) => {
                        if let Until::Time(time) = until
                            && envelope.occurred_at > *time
                        {
                            scan.end_partition_at(partition, offset);
                            cut.push(partition);
                            continue;
                        }
                        changes.extend(project(&envelope, record.position));
                        done.events += 1;
                    }
                    Err(error) => {
                        // Not recorded: the dead letters are the live projector's (recording
                        // again would reopen one resolved already).
                        tracing::error!(projection = %self.name, position = %record.position, %error, "cannot decode event; skipped (see `missive dlq list`)");
                        done.undecodable += 1;
                    }
                }
                checkpoint.insert(partition, offset + 1);
                kept.push(record);
            }
            if kept.is_empty() {
                continue;
            }
            let checkpoint: Vec<Position> = checkpoint
                .into_iter()
                .map(|(p, o)| Position::new(p, o))
                .collect();
            match self
                .apply_with_retry(changes, &kept, checkpoint.clone(), &mut shutdown)
                .await?
            {
                Applied::Yes => {}
                Applied::ShutDown => break,
                Applied::Refused(error) => {
                    tracing::warn!(projection = %self.name, %error, "batch refused; applying its events one by one");
                    if !self.apply_one_by_one(&kept, &mut shutdown).await? {
                        break;
                    }
                }
            }
            for cp in &checkpoint {
                done.reached.insert(cp.partition, cp.offset);
            }
            observe(RebuildProgress {
                events: done.events + done.undecodable,
                remaining: scan.remaining().unwrap_or(0),
            });
        }
        done.elapsed = started.elapsed();
        done.complete = scan.is_done();
        tracing::info!(projection = %self.name, events = done.events, reached = ?done.reached, complete = done.complete, "rebuild ended");
        Ok(done)
    }
}
