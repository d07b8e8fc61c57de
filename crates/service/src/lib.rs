//! Missive's application layer: the one place that turns commands into appended events and
//! answers queries from the read models.
//!
//! A command runs as: load the state its decision needs from the read models, call the pure
//! `decide` function of `missive-domain`, encode and append the events, and wait for the
//! durable acknowledgement. Two mechanisms keep decisions consistent while the read models
//! trail the log by a few milliseconds:
//! - Commands whose outcome depends on earlier commands of *any* client on the same key
//!   (a username, a user pair) run under a per-key lock that is released only once the
//!   projector has applied the command's events, so the next decision on that key sees them.
//! - Message sends with a `client_msg_id` claim the key in memory before appending, so a retry
//!   that arrives while the first attempt is in flight (or not yet projected) waits for it and
//!   returns the same message instead of sending a second one.
//!
//! Limitation: both mechanisms are per process. With several API processes on one Kafka log,
//! route a user's requests to one process or accept that two racing registrations of one name
//! may both be acknowledged (the projection keeps the first).
//!
//! # Layout
//! - [`Service`]: commands and queries.
//! - [`ServiceError`]: why one failed, in terms an API can map to a status.
//! - [`locks`]: keyed async locks.
//! - [`notifier`]: offline notifications for an external push service.

pub mod communities;
pub mod locks;
pub mod notifier;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use missive_domain::friends::FriendCommand;
use missive_domain::messages::{Deliverable, Send, SendState, Visible};
use missive_domain::{DomainError, FriendshipState};
use missive_events::{AccountStatus, DeleteScope, Envelope, Event, Presence, codec};
use missive_keys::{KeyVault, VaultError};
use missive_log::{EventLog, LogError, Position, Record};
use missive_projector::Progress;
use missive_store::{
    Conversation, FeedPage, FriendEntry, HistoryQuery, Message, MessageStatus, Page, ReadStore,
    StoreError, User,
};
use parking_lot::Mutex;
use tokio::sync::{OnceCell, watch};
use uuid::Uuid;

use locks::KeyedLocks;

/// Why a command or query failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The command broke a business rule; the message says which.
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// The read models are behind the log (a rebuild, or a stalled projector): deciding now
    /// could contradict an earlier command, so the command is refused (HTTP 503).
    #[error("the read models are still catching up with the event log; retry shortly")]
    NotCaughtUp,
    /// Registration is switched off on this server.
    #[error("registration is closed on this server")]
    RegistrationClosed,
    #[error("the event log refused the append")]
    Log(#[from] LogError),
    #[error("the read models could not be read")]
    Store(#[from] StoreError),
    #[error("an event could not be encoded")]
    Codec(#[from] codec::CodecError),
}

pub type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// The most message ids one acknowledgement may carry.
pub const MAX_ACK_IDS: usize = 1000;

/// What an acknowledgement did, id by id.
#[derive(Debug, Default)]
pub struct Acknowledged {
    /// Delivered now, or already (also read or deleted ones: nothing is left to do).
    pub delivered: Vec<Uuid>,
    /// Refused, with why: unknown to the caller, or not sent to them.
    pub refused: Vec<(Uuid, DomainError)>,
}

/// Settings of the application layer.
#[derive(Debug, Clone)]
pub struct Config {
    pub max_text_chars: usize,
    pub registration_open: bool,
    /// How long a command waits for its events to be projected before releasing its key.
    pub projection_wait: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_text_chars: missive_domain::messages::DEFAULT_MAX_TEXT_CHARS,
            registration_open: true,
            projection_wait: Duration::from_secs(5),
        }
    }
}

/// Who is acting, and the request that carries the action.
#[derive(Debug, Clone, Copy)]
pub struct Actor {
    pub user_id: Uuid,
    pub correlation_id: Uuid,
}

/// The answer to a send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendReceipt {
    pub message_id: Uuid,
    pub conversation_id: Uuid,
    pub sent_at: DateTime<Utc>,
    pub position: Position,
    /// True when this send repeated an earlier one with the same `client_msg_id`.
    pub duplicate: bool,
}

/// The answer to a registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub user_id: Uuid,
    pub username: String,
    pub display_name: String,
    pub position: Position,
}

/// An in-flight or recent send, keyed by sender and `client_msg_id`.
type Claim = Arc<OnceCell<SendReceipt>>;

/// Claims are first pruned once they are this many.
const CLAIMS_PRUNE_AT: usize = 10_000;

/// In-flight and not-yet-projected sends with a `client_msg_id`. Once a claimed message is in
/// the read models, the store answers retries and the claim can go.
#[derive(Debug, Default)]
struct Claims {
    map: HashMap<(Uuid, String), Claim>,
    /// The size at which the next prune runs; doubles with what a prune has to keep, so a
    /// prune is amortised O(1) per claim even when many are pending.
    prune_at: usize,
}

impl Claims {
    /// The claim for `key`, new or shared with a send in flight.
    fn claim(&mut self, key: &(Uuid, String), progress: &Progress) -> Claim {
        if self.map.len() >= self.prune_at.max(CLAIMS_PRUNE_AT) {
            // Keep claims whose message is not projected yet, and uninitialised ones someone
            // is still working on; drop the rest.
            self.map.retain(|_, c| match c.get() {
                Some(r) => !progress.has_applied(r.position),
                None => Arc::strong_count(c) > 1,
            });
            self.prune_at = (self.map.len() * 2).max(CLAIMS_PRUNE_AT);
        }
        self.map.entry(key.clone()).or_default().clone()
    }

    /// Forgets a claim whose send failed, unless another request is waiting on it (that one
    /// will try again and clean up after itself).
    fn release_failed(&mut self, key: &(Uuid, String), claim: &Claim) {
        if let Some(held) = self.map.get(key)
            && Arc::ptr_eq(held, claim)
            && held.get().is_none()
            && Arc::strong_count(held) <= 2
        {
            self.map.remove(key);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }
}

/// Commands and queries over an event log and a read store.
pub struct Service {
    log: Arc<dyn EventLog>,
    store: Arc<dyn ReadStore>,
    progress: watch::Receiver<Progress>,
    config: Config,
    locks: KeyedLocks,
    claims: Mutex<Claims>,
    /// The log's end when the service started: decisions wait until it is projected.
    startup_end: Vec<Position>,
    caught_up: AtomicBool,
    /// Accounts that are not active (blocked or deleted): read from the read models at start,
    /// then kept current by [`Service::note_account`] (this process's own changes, and those
    /// the gateway sees in the log).
    restricted: parking_lot::RwLock<Standings>,
    /// Seals personal fields before they are appended (crypto-shredding, see
    /// [`missive_keys::personal`]); `None` appends them in the clear.
    vault: Option<Arc<dyn KeyVault>>,
}

/// The accounts that are not active, as this process knows them.
#[derive(Debug, Default)]
struct Standings {
    restricted: HashMap<Uuid, AccountStatus>,
    /// Users whose standing changed since start: newer than anything read at start-up.
    noted: std::collections::HashSet<Uuid>,
}

impl Standings {
    fn note(&mut self, user: Uuid, status: AccountStatus) {
        self.noted.insert(user);
        if self.restricted.get(&user) == Some(&AccountStatus::Deleted) {
            return;
        }
        self.restore(user, status);
    }

    /// Sets a standing as it is (also a standing noted ahead of an append that failed).
    fn restore(&mut self, user: Uuid, status: AccountStatus) {
        match status {
            AccountStatus::Active => self.restricted.remove(&user),
            other => self.restricted.insert(user, other),
        };
    }

    /// Replaces what was read at start by `all`, keeping what changed since.
    fn reload(&mut self, all: Vec<(Uuid, AccountStatus)>) {
        let noted = &self.noted;
        self.restricted.retain(|user, _| noted.contains(user));
        for (user, status) in all {
            if !self.noted.contains(&user) {
                self.restricted.insert(user, status);
            }
        }
    }
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("config", &self.config)
            .finish()
    }
}

fn visible(m: &Message) -> Visible {
    Visible {
        message_id: m.message_id,
        conversation_id: m.conversation_id,
        sender_id: m.sender_id,
        deleted_for_everyone: m.deleted_for_everyone,
    }
}

impl Service {
    /// `progress` follows the projector that keeps `store` up to date with `log`.
    pub async fn new(
        log: Arc<dyn EventLog>,
        store: Arc<dyn ReadStore>,
        progress: watch::Receiver<Progress>,
        config: Config,
    ) -> Result<Self> {
        let startup_end = log.end_positions().await?;
        // Read again once the read models caught up (`startup_caught_up`), which commands wait
        // for: a store unreachable now does not keep the process from starting.
        let restricted = Standings {
            restricted: match store.restricted_accounts().await {
                Ok(all) => all.into_iter().collect(),
                Err(error) => {
                    tracing::warn!(%error, "could not read the restricted accounts yet");
                    HashMap::new()
                }
            },
            noted: Default::default(),
        };
        Ok(Service {
            log,
            store,
            progress,
            config,
            locks: KeyedLocks::new(1024),
            claims: Mutex::new(Claims::default()),
            startup_end,
            caught_up: AtomicBool::new(false),
            restricted: parking_lot::RwLock::new(restricted),
            vault: None,
        })
    }

    /// Seals personal fields with their owners' keys in `vault` before appending them, and
    /// destroys a user's key when their account is deleted. The read store should be an
    /// [`missive_keys::OpenedStore`] on the same vault.
    pub fn with_vault(mut self, vault: Arc<dyn KeyVault>) -> Self {
        self.vault = Some(vault);
        self
    }

    /// Opens a personal value of `owner`'s read from the log rather than the read models (an
    /// event's post content): empty when it is shredded.
    pub async fn open_personal(&self, owner: Uuid, value: &str) -> Result<String> {
        let Some(vault) = &self.vault else {
            return Ok(value.to_owned());
        };
        let opened = missive_keys::unseal_with(vault.as_ref(), owner, value)
            .await
            .map_err(StoreError::from)?;
        Ok(opened.unwrap_or_default())
    }

    // ----- account standing -----

    /// Records an account's standing as the log says it changed (a deletion is never undone).
    pub fn note_account(&self, user: Uuid, status: AccountStatus) {
        self.restricted.write().note(user, status);
    }

    /// The account's standing as this process knows it.
    pub fn standing(&self, user: Uuid) -> AccountStatus {
        self.restricted
            .read()
            .restricted
            .get(&user)
            .copied()
            .unwrap_or(AccountStatus::Active)
    }

    /// Refuses a blocked or deleted actor.
    pub fn check_actor(&self, user: Uuid) -> Result<()> {
        match self.standing(user) {
            AccountStatus::Active => Ok(()),
            AccountStatus::Blocked => Err(DomainError::AccountBlocked.into()),
            AccountStatus::Deleted => Err(DomainError::AccountDeleted.into()),
        }
    }

    /// As [`Service::check_actor`], once the standings read at start are current (the read
    /// models hold the log as it was then): for what is not a command, such as opening a
    /// WebSocket session. `Err(NotCaughtUp)` until then.
    pub async fn admit(&self, user: Uuid) -> Result<()> {
        self.await_startup().await?;
        self.check_actor(user)
    }

    /// Refuses to reach (message, befriend, invite) a blocked or deleted account.
    pub fn check_reachable(&self, user: Uuid) -> Result<()> {
        match self.standing(user) {
            AccountStatus::Active => Ok(()),
            _ => Err(DomainError::RecipientUnavailable(user).into()),
        }
    }

    /// An operator blocks, unblocks or deletes `user`'s account; returns the account after.
    /// Deleting an account that holds personal data is final.
    pub async fn set_account_status(
        &self,
        operator: Actor,
        user: Uuid,
        status: AccountStatus,
    ) -> Result<(User, Option<Position>)> {
        let _guard = self.locks.lock(&format!("user:{user}")).await;
        self.catch_up().await?;
        let current = self.store.user(user).await?;
        let events = missive_domain::users::decide_account_status(
            current.as_ref().map(|u| u.account),
            user,
            status,
        )?;
        // Restricting takes effect here before the event is even appended, so that no command
        // of the user's lands after it in the log (other processes follow within their gateway's
        // lag); undone if the append fails.
        let before = self.standing(user);
        if !events.is_empty() && status != AccountStatus::Active {
            self.note_account(user, status);
        }
        let position = match self.append_and_project(operator, events).await {
            Ok(position) => position,
            Err(error) => {
                self.restricted.write().restore(user, before);
                return Err(error);
            }
        };
        self.note_account(user, status);
        if status == AccountStatus::Deleted
            && let Some(vault) = &self.vault
        {
            // The projector destroys it too as it projects the deletion (in case this process
            // dies here); doing it now shreds the data before the operator is answered.
            vault.destroy(user).await.map_err(StoreError::from)?;
        }
        let after = self
            .store
            .user(user)
            .await?
            .ok_or(ServiceError::Domain(DomainError::UserNotFound(user)))?;
        Ok((after, position))
    }

    /// Waits until the event at `position` is applied to the read models, at most `timeout`.
    /// Returns whether it was.
    pub async fn wait_for(&self, position: Position, timeout: Duration) -> bool {
        let mut rx = self.progress.clone();
        tokio::time::timeout(timeout, rx.wait_for(|p| p.has_applied(position)))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Whether the event at `position` is applied to the read models.
    pub fn applied(&self, position: Position) -> bool {
        self.progress.borrow().has_applied(position)
    }

    /// Waits until every event of `positions` is applied to the read models, at most
    /// `timeout` in all. Returns whether they were.
    pub async fn wait_for_all(&self, positions: &[Position], timeout: Duration) -> bool {
        let mut rx = self.progress.clone();
        let all = async {
            for &position in positions {
                if rx.wait_for(|p| p.has_applied(position)).await.is_err() {
                    return false;
                }
            }
            true
        };
        tokio::time::timeout(timeout, all).await.unwrap_or(false)
    }

    /// Waits until every position in `ends` (next offsets) is applied.
    async fn wait_for_ends(&self, ends: &[Position], timeout: Duration) -> bool {
        let last: Vec<Position> = ends
            .iter()
            .filter(|end| end.offset > 0)
            .map(|end| Position::new(end.partition, end.offset - 1))
            .collect();
        self.wait_for_all(&last, timeout).await
    }

    /// The first of `positions` that names no event the log holds (it is at or beyond the end
    /// of its partition, or in no partition): the read models can never reach it. Asks the
    /// log for its end once.
    pub async fn beyond_log_end(&self, positions: &[Position]) -> Result<Option<Position>> {
        let ends = self.log.end_positions().await?;
        Ok(positions.iter().copied().find(|p| {
            !ends
                .iter()
                .any(|end| end.partition == p.partition && p.offset < end.offset)
        }))
    }

    /// Whether the read models hold everything the log held at startup, waiting up to `wait`.
    async fn startup_caught_up(&self, wait: Duration) -> bool {
        if self.caught_up.load(Ordering::Acquire) {
            return true;
        }
        let done = self.wait_for_ends(&self.startup_end, wait).await;
        if done {
            // The standings read at start may predate the read models (a rebuild): read
            // again now that they hold the log as it was then.
            match self.store.restricted_accounts().await {
                Ok(all) => self.restricted.write().reload(all),
                Err(error) => {
                    tracing::warn!(%error, "could not read the restricted accounts; retrying");
                    return false;
                }
            }
            self.caught_up.store(true, Ordering::Release);
        }
        done
    }

    /// True once the read models hold everything the log held at startup.
    pub async fn ready(&self) -> bool {
        self.startup_caught_up(Duration::ZERO).await
    }

    /// Decisions read the read models: before the first one, they must hold the whole log as
    /// it was at startup.
    async fn await_startup(&self) -> Result<()> {
        if self.startup_caught_up(self.config.projection_wait).await {
            Ok(())
        } else {
            Err(ServiceError::NotCaughtUp)
        }
    }

    /// Waits until the read models hold everything appended so far, so a decision sees the
    /// caller's own earlier commands.
    async fn catch_up(&self) -> Result<()> {
        self.await_startup().await?;
        let ends = self.log.end_positions().await?;
        if self.wait_for_ends(&ends, self.config.projection_wait).await {
            Ok(())
        } else {
            Err(ServiceError::NotCaughtUp)
        }
    }

    /// Encodes and appends events decided for `actor`; returns the last event's position.
    async fn append(
        &self,
        actor: Actor,
        events: Vec<Event>,
        now: DateTime<Utc>,
    ) -> Result<Option<Position>> {
        Ok(self.append_all(actor, events, now).await?.last().copied())
    }

    /// Encodes and appends events decided for `actor`; returns every event's position.
    async fn append_all(
        &self,
        actor: Actor,
        events: Vec<Event>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Position>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        // Every command of a blocked or deleted user ends here, refused; going offline and an
        // operator's decisions are not the user's commands.
        let own = events.iter().any(|e| {
            !matches!(
                e,
                Event::AccountStatusChanged { .. }
                    | Event::PresenceChanged {
                        status: Presence::Offline,
                        ..
                    }
            )
        });
        if own {
            self.check_actor(actor.user_id)?;
        }
        let mut records = Vec::with_capacity(events.len());
        let mut event_ids = Vec::with_capacity(events.len());
        for mut event in events {
            if let Some(vault) = &self.vault {
                missive_keys::seal_event(vault.as_ref(), &mut event)
                    .await
                    .map_err(|error| match error {
                        // Deleted by an operator since the standing check above.
                        VaultError::Destroyed => ServiceError::Domain(DomainError::AccountDeleted),
                        other => ServiceError::Store(other.into()),
                    })?;
            }
            let envelope = Envelope::new(event, actor.user_id, actor.correlation_id, now);
            let event_type = envelope.event_type();
            event_ids.push(envelope.event_id);
            records.push(Record {
                stream: envelope.stream(),
                key: envelope.partition_key(),
                event_type,
                schema_version: codec::schema_version(event_type).unwrap_or(1),
                payload: codec::encode(&envelope)?,
            });
        }
        // What is logged while appending (a broker's refusal, a retry) names the events; the
        // request's span around it names the request (its id is the events' correlation id).
        // At most a few ids (an acknowledgement may append a thousand events).
        const NAMED: usize = 8;
        let span = tracing::info_span!(
            "append",
            actor = %actor.user_id,
            correlation_id = %actor.correlation_id,
            events = event_ids.len(),
            event_ids = ?&event_ids[..event_ids.len().min(NAMED)],
        );
        let positions =
            tracing::Instrument::instrument(self.log.append(records), span.clone()).await?;
        span.in_scope(|| tracing::debug!(?positions, "appended"));
        Ok(positions)
    }

    /// Appends events stamped now (to the microsecond, as the log keeps it); the time and the
    /// last event's position (the log's start when nothing was decided).
    async fn append_now(
        &self,
        actor: Actor,
        events: Vec<Event>,
    ) -> Result<(DateTime<Utc>, Position)> {
        let now = missive_events::truncate_to_micros(Utc::now());
        let position = self
            .append(actor, events, now)
            .await?
            .unwrap_or(Position::new(0, 0));
        Ok((now, position))
    }

    /// Appends events decided under a key lock, then waits (bounded) until they are all
    /// projected (a command's events may sit in several partitions), so the caller can read its
    /// own write at once. Returns the last event's position. Correctness does not rest on this
    /// wait: the next command on the key calls [`Service::catch_up`] under the lock first.
    async fn append_and_project(
        &self,
        actor: Actor,
        events: Vec<Event>,
    ) -> Result<Option<Position>> {
        let positions = self.append_all(actor, events, Utc::now()).await?;
        if !self
            .wait_for_all(&positions, self.config.projection_wait)
            .await
        {
            tracing::warn!(?positions, "events appended but not projected in time");
        }
        Ok(positions.last().copied())
    }

    // ----- users -----

    pub async fn register(
        &self,
        actor_correlation: Uuid,
        username: &str,
        display_name: Option<&str>,
    ) -> Result<Registered> {
        if !self.config.registration_open {
            return Err(ServiceError::RegistrationClosed);
        }
        missive_domain::users::validate_username(username)?;
        let _guard = self
            .locks
            .lock(&format!("username:{}", username.to_lowercase()))
            .await;
        self.catch_up().await?;
        let taken = self.store.user_by_username(username).await?.is_some();
        let user_id = Uuid::now_v7();
        let events =
            missive_domain::users::decide_register(taken, user_id, username, display_name)?;
        let display = match &events[..] {
            [Event::UserRegistered { display_name, .. }] => display_name.clone(),
            _ => username.to_owned(),
        };
        let actor = Actor {
            user_id,
            correlation_id: actor_correlation,
        };
        let position = self
            .append_and_project(actor, events)
            .await?
            .unwrap_or(Position::new(0, 0));
        Ok(Registered {
            user_id,
            username: username.to_owned(),
            display_name: display,
            position,
        })
    }

    pub async fn user(&self, id: Uuid) -> Result<User> {
        self.store
            .user(id)
            .await?
            .ok_or(ServiceError::Domain(DomainError::UserNotFound(id)))
    }

    pub async fn update_profile(
        &self,
        actor: Actor,
        display_name: &str,
    ) -> Result<(User, Option<Position>)> {
        missive_domain::users::validate_display_name(display_name)?;
        let _guard = self.locks.lock(&format!("user:{}", actor.user_id)).await;
        self.catch_up().await?;
        let me = self.user(actor.user_id).await?;
        let events = missive_domain::users::decide_update_profile(
            &me.display_name,
            actor.user_id,
            display_name,
        )?;
        let position = self.append_and_project(actor, events).await?;
        Ok((
            User {
                display_name: display_name.to_owned(),
                ..me
            },
            position,
        ))
    }

    // ----- friends -----

    /// Runs a friend command; returns the pair's state afterwards.
    pub async fn friend(
        &self,
        actor: Actor,
        other: Uuid,
        command: FriendCommand,
    ) -> Result<(FriendshipState, Option<Position>)> {
        let _guard = self
            .locks
            .lock(&missive_events::ids::pair_key(actor.user_id, other))
            .await;
        self.catch_up().await?;
        if matches!(command, FriendCommand::Request | FriendCommand::Accept) {
            self.check_actor(actor.user_id)?;
            self.check_reachable(other)?;
        }
        if self.store.user(actor.user_id).await?.is_none() {
            return Err(DomainError::Forbidden(
                "your account does not exist on this server; register first",
            )
            .into());
        }
        let state = self.store.friendship(actor.user_id, other).await?;
        let other_exists = actor.user_id == other || self.store.user(other).await?.is_some();
        let events =
            missive_domain::friends::decide(state, actor.user_id, other, other_exists, command)?;
        let after = events
            .last()
            .and_then(missive_domain::friends::evolve)
            .unwrap_or(state);
        let position = self.append_and_project(actor, events).await?;
        Ok((after, position))
    }

    pub async fn friends(&self, actor: Actor) -> Result<Vec<FriendEntry>> {
        Ok(self.store.friends(actor.user_id).await?)
    }

    // ----- messages -----

    /// Sends a direct message. With a `client_msg_id`, a retry returns the original message.
    pub async fn send(
        &self,
        actor: Actor,
        peer: Uuid,
        text: &str,
        client_msg_id: Option<&str>,
    ) -> Result<SendReceipt> {
        let Some(cmid) = client_msg_id else {
            return self.send_new(actor, peer, text, None).await;
        };
        missive_domain::messages::validate_client_msg_id(cmid)?;
        missive_domain::messages::validate_text(text, self.config.max_text_chars)?;
        let receipt = self
            .send_once(
                // Direct and channel messages have separate idempotency keys.
                (actor.user_id, format!("dm:{cmid}")),
                || async {
                    let earlier = self.store.message_by_client_id(actor.user_id, cmid).await?;
                    Ok(earlier.map(|m| SendReceipt {
                        message_id: m.message_id,
                        conversation_id: m.conversation_id,
                        sent_at: m.sent_at,
                        position: m.position,
                        duplicate: true,
                    }))
                },
                || self.send_new(actor, peer, text, Some(cmid)),
            )
            .await?;
        // A retry repeats the same send; the same key for another peer is a client's bug, and
        // answering with the first message would drop this one unseen.
        if receipt.conversation_id
            != missive_events::ids::direct_conversation_id(actor.user_id, peer)
        {
            return Err(DomainError::Conflict(format!(
                "client_msg_id {cmid:?} was used for a message to another user; use a new key \
                 for a new message"
            ))
            .into());
        }
        Ok(receipt)
    }

    /// Runs `send` once per `key` (sender and idempotency key): a retry gets the receipt of
    /// the first attempt, from memory while it is in flight or not yet projected, else from
    /// the read models (`earlier`).
    async fn send_once<E, EF, S, SF>(
        &self,
        key: (Uuid, String),
        earlier: E,
        send: S,
    ) -> Result<SendReceipt>
    where
        E: FnOnce() -> EF,
        EF: std::future::Future<Output = Result<Option<SendReceipt>>>,
        S: FnOnce() -> SF,
        SF: std::future::Future<Output = Result<SendReceipt>>,
    {
        self.await_startup().await?;
        let claim = self.claims.lock().claim(&key, &self.progress.borrow());
        let mut fresh = false;
        let receipt = claim
            .get_or_try_init(|| async {
                if let Some(receipt) = earlier().await? {
                    return Ok::<_, ServiceError>(receipt);
                }
                fresh = true;
                send().await
            })
            .await;
        let receipt = match receipt {
            Ok(r) => r,
            Err(e) => {
                self.claims.lock().release_failed(&key, &claim);
                return Err(e);
            }
        };
        Ok(SendReceipt {
            duplicate: !fresh,
            ..receipt.clone()
        })
    }

    async fn send_new(
        &self,
        actor: Actor,
        peer: Uuid,
        text: &str,
        client_msg_id: Option<&str>,
    ) -> Result<SendReceipt> {
        let max = self.config.max_text_chars;
        missive_domain::messages::validate_text(text, max)?;
        self.await_startup().await?;
        self.check_actor(actor.user_id)?;
        self.check_reachable(peer)?;
        // Friends always exist, so the common case costs one read; only a refusal needs to
        // know whether the peer exists at all (404 rather than 403).
        let (recipient_exists, friendship) = if peer == actor.user_id {
            (true, FriendshipState::None)
        } else {
            match self.store.friendship(actor.user_id, peer).await? {
                FriendshipState::Friends => (true, FriendshipState::Friends),
                other => (self.store.user(peer).await?.is_some(), other),
            }
        };
        let message_id = Uuid::now_v7();
        let state = SendState {
            recipient_exists,
            friendship,
            max_text_chars: max,
        };
        let events = missive_domain::messages::decide_send(
            state,
            Send {
                message_id,
                sender: actor.user_id,
                recipient: peer,
                text,
                client_msg_id,
            },
        )?;
        let conversation_id = missive_events::ids::direct_conversation_id(actor.user_id, peer);
        let (now, position) = self.append_now(actor, events).await?;
        Ok(SendReceipt {
            message_id,
            conversation_id,
            sent_at: now,
            position,
            duplicate: false,
        })
    }

    /// The participants of a conversation `actor` takes part in; 404 for anyone else, so that
    /// conversation ids do not leak.
    async fn my_conversation(&self, actor: Actor, conversation: Uuid) -> Result<(Uuid, Uuid)> {
        match self.store.participants(conversation).await? {
            Some((a, b)) if a == actor.user_id || b == actor.user_id => Ok((a, b)),
            _ => Err(
                DomainError::NotFound(format!("no conversation {conversation} of yours")).into(),
            ),
        }
    }

    pub async fn conversations(
        &self,
        actor: Actor,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<Conversation>> {
        Ok(self
            .store
            .conversations(actor.user_id, cursor, limit)
            .await?)
    }

    pub async fn history(
        &self,
        actor: Actor,
        conversation: Uuid,
        query: HistoryQuery,
    ) -> Result<Page<Message>> {
        self.my_conversation(actor, conversation).await?;
        Ok(self
            .store
            .history(actor.user_id, conversation, query)
            .await?)
    }

    pub async fn messages_since(
        &self,
        actor: Actor,
        since: DateTime<Utc>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<FeedPage> {
        Ok(self
            .store
            .messages_since(actor.user_id, since, after, limit)
            .await?)
    }

    pub async fn mark_read(
        &self,
        actor: Actor,
        conversation: Uuid,
        up_to: Uuid,
    ) -> Result<Position> {
        self.catch_up().await?;
        self.my_conversation(actor, conversation).await?;
        let message = self.store.message(actor.user_id, up_to).await?;
        let events = missive_domain::messages::decide_mark_read(
            actor.user_id,
            conversation,
            up_to,
            message.as_ref().map(visible),
        )?;
        Ok(self
            .append(actor, events, Utc::now())
            .await?
            .unwrap_or(Position::new(0, 0)))
    }

    /// Deletes a message for the actor or for everyone; returns the event's position, or none
    /// when nothing changed (deleting a tombstone again).
    pub async fn delete(
        &self,
        actor: Actor,
        message_id: Uuid,
        scope: DeleteScope,
    ) -> Result<Option<Position>> {
        self.catch_up().await?;
        let message = self.store.message(actor.user_id, message_id).await?;
        let events = missive_domain::messages::decide_delete(
            actor.user_id,
            message_id,
            message.as_ref().map(visible),
            scope,
        )?;
        self.append(actor, events, Utc::now()).await
    }

    /// Waits until the read models hold everything appended so far (bounded by the
    /// configured projection wait); a WebSocket session does before it reads what is pending,
    /// so that its own device's earlier acknowledgements count.
    pub async fn caught_up(&self) -> Result<()> {
        self.catch_up().await
    }

    /// Messages waiting for the actor: sent to them and not acknowledged, read, hidden or
    /// deleted; oldest first.
    pub async fn pending(
        &self,
        actor: Actor,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Message>> {
        Ok(self.store.pending(actor.user_id, after, limit).await?)
    }

    /// A device of the actor acknowledges messages it received: each one sent to the actor
    /// and still pending becomes delivered by one `MessageDelivered` event. Acknowledging again
    /// changes nothing. The actor's acknowledgements are decided one at a time and each waits
    /// for its events to be projected, so two devices acknowledging the same message append
    /// one event.
    pub async fn acknowledge(&self, actor: Actor, message_ids: &[Uuid]) -> Result<Acknowledged> {
        if message_ids.len() > MAX_ACK_IDS {
            return Err(DomainError::Invalid {
                field: "message_ids",
                rule: format!("at most {MAX_ACK_IDS} ids per acknowledgement"),
            }
            .into());
        }
        let mut ids = message_ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let _guard = self.locks.lock(&format!("ack:{}", actor.user_id)).await;
        // A message pushed by the gateway may be a moment ahead of the read models.
        self.catch_up().await?;
        let mut outcome = Acknowledged::default();
        let mut events = Vec::new();
        for id in ids {
            let message = self.store.message(actor.user_id, id).await?;
            let deliverable = message.map(|m| Deliverable {
                message_id: m.message_id,
                conversation_id: m.conversation_id,
                sender_id: m.sender_id,
                recipient_id: m.recipient_id,
                delivered: m.status != MessageStatus::Pending,
                deleted_for_everyone: m.deleted_for_everyone,
            });
            match missive_domain::messages::decide_acknowledge(actor.user_id, id, deliverable) {
                Ok(decided) => {
                    events.extend(decided);
                    outcome.delivered.push(id);
                }
                Err(refusal) => outcome.refused.push((id, refusal)),
            }
        }
        self.append_and_project(actor, events).await?;
        Ok(outcome)
    }

    pub async fn set_presence(
        &self,
        actor: Actor,
        status: Presence,
    ) -> Result<(DateTime<Utc>, Position)> {
        let events = missive_domain::presence::decide_presence(actor.user_id, status)?;
        let (now, position) = self.append_now(actor, events).await?;
        Ok((now, position))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use missive_log::sqlite::{Durability, SqliteLog};
    use missive_store::sqlite::SqliteStore;

    fn receipt(offset: u64) -> SendReceipt {
        SendReceipt {
            message_id: Uuid::now_v7(),
            conversation_id: Uuid::now_v7(),
            sent_at: Utc::now(),
            position: Position::new(0, offset),
            duplicate: false,
        }
    }

    #[test]
    fn failed_claims_are_released_and_prunes_keep_only_pending_ones() {
        let mut claims = Claims::default();
        let progress = Progress([(0, 100)].into_iter().collect());
        let key = |n: usize| (Uuid::from_u128(1), format!("k{n}"));

        // A failed send leaves nothing behind.
        let failed = claims.claim(&key(0), &progress);
        claims.release_failed(&key(0), &failed);
        assert_eq!(claims.len(), 0);
        // ...unless someone else waits on the same claim.
        let first = claims.claim(&key(1), &progress);
        let waiter = claims.claim(&key(1), &progress);
        claims.release_failed(&key(1), &first);
        assert_eq!(claims.len(), 1);
        drop((first, waiter)); // now an orphan: the next prune drops it

        // Fill to the prune threshold (the next claim prunes) with projected, unprojected
        // and orphaned claims.
        for n in 2..CLAIMS_PRUNE_AT + 1 {
            let c = claims.claim(&key(n), &progress);
            match n % 3 {
                0 => c.set(receipt(50)).expect("set"),  // projected: can go
                1 => c.set(receipt(500)).expect("set"), // not projected yet: kept
                _ => {}                                 // orphaned: can go
            }
        }
        assert_eq!(claims.len(), CLAIMS_PRUNE_AT);
        let pending = (2..CLAIMS_PRUNE_AT + 1).filter(|n| n % 3 == 1).count();
        claims.claim(&key(usize::MAX), &progress);
        assert_eq!(
            claims.len(),
            pending + 1,
            "only unprojected claims and the new one remain"
        );
        assert!(claims.prune_at >= CLAIMS_PRUNE_AT);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commands_are_refused_while_the_read_models_lag_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log =
            Arc::new(SqliteLog::open(&dir.path().join("log.db"), Durability::Normal).expect("log"));
        let store = Arc::new(SqliteStore::open(&dir.path().join("read.db")).expect("store"));
        log.append(vec![Record {
            stream: missive_events::Stream::Social,
            key: "k".into(),
            event_type: "UserRegistered",
            schema_version: 1,
            payload: vec![1],
        }])
        .await
        .expect("append");
        // No projector runs: the read models never reach the log's end.
        let (_tx, progress) = watch::channel(Progress::default());
        let config = Config {
            projection_wait: Duration::from_millis(50),
            ..Config::default()
        };
        let service = Service::new(log, store, progress, config)
            .await
            .expect("service");
        assert!(!service.ready().await);
        let actor = Actor {
            user_id: Uuid::now_v7(),
            correlation_id: Uuid::now_v7(),
        };
        assert!(matches!(
            service.register(Uuid::now_v7(), "bob", None).await,
            Err(ServiceError::NotCaughtUp)
        ));
        assert!(matches!(
            service.send(actor, Uuid::now_v7(), "hi", None).await,
            Err(ServiceError::NotCaughtUp)
        ));
        assert!(matches!(
            service.send(actor, Uuid::now_v7(), "hi", Some("c1")).await,
            Err(ServiceError::NotCaughtUp)
        ));
        // Nor is a session opened on standings that may be stale.
        assert!(matches!(
            service.admit(actor.user_id).await,
            Err(ServiceError::NotCaughtUp)
        ));
        assert!(matches!(
            service
                .friend(actor, Uuid::now_v7(), FriendCommand::Request)
                .await,
            Err(ServiceError::NotCaughtUp)
        ));
        assert_eq!(
            service.claims.lock().len(),
            0,
            "a refused send leaves no claim"
        );
    }
}
