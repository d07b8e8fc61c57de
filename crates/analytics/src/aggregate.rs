//! The pure part: what each event contributes ([`observe`]), and how a batch of events turns
//! into absolute rollup values, set members and first messages ([`Aggregator`]).
//!
//! Definitions (all in event time, `Envelope::occurred_at`, UTC):
//! - **messages**: `MessageSent` events; **channel messages**: `ChannelMessageSent` events.
//! - **conversations started**: a conversation's first `MessageSent` (the lowest offset; a
//!   conversation's events share a partition key, so they are in one partition, in order).
//! - **friend requests / accepts**: `FriendRequested` / `FriendRequestAccepted` events.
//! - **delivery latency**: a `MessageDelivered` event's time minus its message's send time.
//! - **read latency**: a `MessagesRead` event's time minus the send time of its `up_to`
//!   message: how long the newest message a reader reached waited for them. One observation per
//!   read marker, whoever sent `up_to` (the events alone do not say whether it was the reader).
//! - A message's send time is the millisecond timestamp inside its id: message ids are
//!   UUIDv7s made when the send is decided, a moment before `MessageSent.occurred_at`. So no
//!   state is kept per message, and a latency is exact to the millisecond (truncated); one
//!   below zero (clocks of two API nodes apart) counts as 0. Ids of another version have no
//!   time: their deliveries and reads are not measured.
//! - **active users**: a user is active on a day (and in its month) if they are the `actor_id`
//!   of any event of that day, except the events the system decides on a user's behalf:
//!   `NotificationRequested` (the notifier's, with the sender as actor) and
//!   `PresenceChanged` to offline (a session ending or timing out). The nil id is never a user.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};
use missive_events::{Envelope, Event, Presence};
use missive_log::Position;
use uuid::Uuid;

use crate::model::{AnalyticsBatch, Counts, FirstMessage, Granularity, Period, Rollup, RollupKey};

/// What one event contributes, before the aggregator decides whether it starts a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Observation {
    /// The user it shows active.
    pub active: Option<Uuid>,
    /// Its counters (`conversations_started` is decided by the [`Aggregator`]).
    pub counts: Counts,
    /// For a direct message, its conversation: the first one starts it.
    pub sent_in: Option<Uuid>,
    pub delivery_ms: Option<u64>,
    pub read_ms: Option<u64>,
}

impl Observation {
    /// Whether it changes any rollup.
    pub fn touches_rollups(&self) -> bool {
        !self.counts.is_zero()
            || self.sent_in.is_some()
            || self.delivery_ms.is_some()
            || self.read_ms.is_some()
    }
}

/// The send time a message id carries: its UUIDv7 millisecond timestamp.
pub fn send_time(message_id: Uuid) -> Option<DateTime<Utc>> {
    if message_id.get_version_num() != 7 {
        return None;
    }
    let (secs, nanos) = message_id.get_timestamp()?.to_unix();
    DateTime::from_timestamp(i64::try_from(secs).ok()?, nanos)
}

/// Milliseconds from a message's send (by its id) to `at`; `None` for ids without a time.
pub fn latency_ms(message_id: Uuid, at: DateTime<Utc>) -> Option<u64> {
    let sent = send_time(message_id)?;
    Some(u64::try_from((at - sent).num_milliseconds()).unwrap_or(0))
}

/// What `envelope` contributes to the analytics.
pub fn observe(envelope: &Envelope) -> Observation {
    let at = envelope.occurred_at;
    let system = match &envelope.event {
        Event::NotificationRequested { .. } => true,
        Event::PresenceChanged { status, .. } => *status == Presence::Offline,
        _ => false,
    };
    let mut o = Observation {
        active: (!system && !envelope.actor_id.is_nil()).then_some(envelope.actor_id),
        ..Observation::default()
    };
    match &envelope.event {
        Event::MessageSent {
            conversation_id, ..
        } => {
            o.counts.messages = 1;
            o.sent_in = Some(*conversation_id);
        }
        Event::ChannelMessageSent { .. } => o.counts.channel_messages = 1,
        Event::FriendRequested { .. } => o.counts.friend_requests = 1,
        Event::FriendRequestAccepted { .. } => o.counts.friend_accepts = 1,
        Event::MessageDelivered { message_id, .. } => o.delivery_ms = latency_ms(*message_id, at),
        Event::MessagesRead { up_to, .. } => o.read_ms = latency_ms(*up_to, at),
        _ => {}
    }
    o
}

/// What a batch newly counted (not what was found counted already): for the process's
/// Prometheus metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    pub counts: Counts,
    pub delivery_ms: Vec<u64>,
    pub read_ms: Vec<u64>,
}

/// A folded batch: the writes for the store, and what the aggregator learns once they are
/// stored.
#[derive(Debug, Clone, Default)]
pub struct Folded {
    /// The writes (without a checkpoint: the caller adds it).
    pub batch: AnalyticsBatch,
    pub applied: Applied,
    /// Every rollup row the batch passed through, changed or not.
    rows: Vec<Rollup>,
}

/// Keeps, for the partitions one consumer owns, the rollup rows it read or wrote, the first
/// messages of conversations it knows and the active-user members it wrote, so that most
/// batches need no reads. Everything here can be forgotten at any time (it is read again from
/// the store): the consumer calls [`Aggregator::forget`] when partitions are (re)assigned, as
/// another consumer may have written them meanwhile.
#[derive(Debug, Default)]
pub struct Aggregator {
    rollups: HashMap<RollupKey, Rollup>,
    firsts: HashMap<Uuid, u64>,
    active: HashSet<(Period, Uuid)>,
}

/// Past these sizes a cache is dropped whole (and refilled from the store as needed).
const MAX_ROLLUPS: usize = 20_000;
const MAX_FIRSTS: usize = 200_000;
const MAX_ACTIVE: usize = 200_000;

impl Aggregator {
    pub fn new() -> Self {
        Aggregator::default()
    }

    /// What `events` need that is not known here: rollup rows, and the first messages of
    /// conversations with a `MessageSent` among them. The caller reads them from the store and
    /// hands them to [`Aggregator::load`] before [`Aggregator::fold`].
    pub fn missing(&self, events: &[(Position, Envelope)]) -> (Vec<RollupKey>, Vec<Uuid>) {
        let mut keys = BTreeSet::new();
        let mut conversations = BTreeSet::new();
        for (position, envelope) in events {
            let o = observe(envelope);
            if !o.touches_rollups() {
                continue;
            }
            for g in [Granularity::Minute, Granularity::Day] {
                let key = RollupKey::of(g, envelope.occurred_at, position.partition);
                if !self.rollups.contains_key(&key) {
                    keys.insert(key);
                }
            }
            if let Some(c) = o.sent_in
                && !self.firsts.contains_key(&c)
            {
                conversations.insert(c);
            }
        }
        (
            keys.into_iter().collect(),
            conversations.into_iter().collect(),
        )
    }

    /// Takes what the store holds for [`Aggregator::missing`]'s answer: `asked` rollup keys
    /// not among `found` start empty; conversations without a first message stay unknown.
    pub fn load(&mut self, asked: &[RollupKey], found: Vec<Rollup>, firsts: Vec<FirstMessage>) {
        for key in asked {
            self.rollups
                .entry(*key)
                .or_insert_with(|| Rollup::empty(*key));
        }
        for row in found {
            self.rollups.insert(row.key, row);
        }
        for f in firsts {
            let offset = self.firsts.entry(f.conversation_id).or_insert(f.offset);
            *offset = (*offset).min(f.offset);
        }
    }

    /// Folds `events` (in log order per partition) into the rows and sets they change. An
    /// event at an offset below its row's `through` is counted there already and adds
    /// nothing. Needs what [`Aggregator::missing`] named to be [`Aggregator::load`]ed.
    pub fn fold(&self, events: &[(Position, Envelope)]) -> Folded {
        let mut rows: BTreeMap<RollupKey, (Rollup, bool)> = BTreeMap::new();
        let mut firsts: HashMap<Uuid, u64> = HashMap::new();
        let mut active = BTreeSet::new();
        let mut folded = Folded::default();
        for (position, envelope) in events {
            let o = observe(envelope);
            if let Some(user) = o.active {
                for period in [
                    Period::day_of(envelope.occurred_at),
                    Period::month_of(envelope.occurred_at),
                ] {
                    if !self.active.contains(&(period, user)) && active.insert((period, user)) {
                        folded.batch.active_users.push((period, user));
                    }
                }
            }
            if !o.touches_rollups() {
                continue;
            }
            let mut counts = o.counts;
            if let Some(conversation) = o.sent_in {
                let known = firsts
                    .get(&conversation)
                    .or_else(|| self.firsts.get(&conversation))
                    .copied();
                match known {
                    None => {
                        firsts.insert(conversation, position.offset);
                        folded.batch.first_messages.push(FirstMessage {
                            conversation_id: conversation,
                            partition: position.partition,
                            offset: position.offset,
                        });
                        counts.conversations_started = 1;
                    }
                    Some(first) if first == position.offset => counts.conversations_started = 1,
                    Some(_) => {}
                }
            }
            for g in [Granularity::Minute, Granularity::Day] {
                let key = RollupKey::of(g, envelope.occurred_at, position.partition);
                let (row, changed) = rows.entry(key).or_insert_with(|| {
                    let row = self
                        .rollups
                        .get(&key)
                        .cloned()
                        .unwrap_or_else(|| Rollup::empty(key));
                    (row, false)
                });
                if position.offset < row.through {
                    continue;
                }
                row.through = position.offset + 1;
                row.counts += counts;
                if let Some(ms) = o.delivery_ms {
                    row.delivery.observe(ms);
                }
                if let Some(ms) = o.read_ms {
                    row.read.observe(ms);
                }
                *changed = true;
                if g == Granularity::Minute {
                    folded.applied.counts += counts;
                    folded.applied.delivery_ms.extend(o.delivery_ms);
                    folded.applied.read_ms.extend(o.read_ms);
                }
            }
        }
        for (_, (row, changed)) in rows {
            if changed {
                folded.batch.rollups.push(row.clone());
            }
            folded.rows.push(row);
        }
        folded
    }

    /// Remembers what a folded batch wrote, once the store has it.
    pub fn commit(&mut self, folded: &Folded) {
        for row in &folded.rows {
            self.rollups.insert(row.key, row.clone());
        }
        for f in &folded.batch.first_messages {
            self.firsts.entry(f.conversation_id).or_insert(f.offset);
        }
        self.active
            .extend(folded.batch.active_users.iter().copied());
        if self.rollups.len() > MAX_ROLLUPS {
            self.rollups.clear();
        }
        if self.firsts.len() > MAX_FIRSTS {
            self.firsts.clear();
        }
        if self.active.len() > MAX_ACTIVE {
            self.active.clear();
        }
    }

    /// Forgets everything (partitions were reassigned: read them again from the store).
    pub fn forget(&mut self) {
        *self = Aggregator::default();
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;
    use missive_events::Presence;
    use uuid::{NoContext, Timestamp};

    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().expect("time")
    }

    fn id_at(t: DateTime<Utc>) -> Uuid {
        let ms = t.timestamp_millis() as u64;
        Uuid::new_v7(Timestamp::from_unix(
            NoContext,
            ms / 1000,
            (ms % 1000) as u32 * 1_000_000,
        ))
    }

    fn env(event: Event, actor: Uuid, t: DateTime<Utc>) -> Envelope {
        Envelope {
            event_id: id_at(t),
            occurred_at: t,
            actor_id: actor,
            correlation_id: Uuid::nil(),
            event,
        }
    }

    fn sent(conversation: Uuid, id: Uuid, sender: Uuid, t: DateTime<Utc>) -> Envelope {
        env(
            Event::MessageSent {
                message_id: id,
                conversation_id: conversation,
                sender_id: sender,
                recipient_id: Uuid::from_u128(99),
                text: "hi".into(),
                client_msg_id: None,
            },
            sender,
            t,
        )
    }

    /// Loads what the aggregator asks for from a map standing in for the store.
    fn load_from(
        agg: &mut Aggregator,
        store: &HashMap<RollupKey, Rollup>,
        events: &[(Position, Envelope)],
    ) {
        let (keys, _) = agg.missing(events);
        let found = keys.iter().filter_map(|k| store.get(k).cloned()).collect();
        agg.load(&keys, found, Vec::new());
    }

    #[test]
    fn latencies_come_from_the_v7_ids_and_never_go_negative() {
        let t = at("2026-03-31T10:03:00Z");
        let id = id_at(t);
        assert_eq!(send_time(id), Some(t));
        assert_eq!(
            latency_ms(id, t + Duration::microseconds(250_900)),
            Some(250)
        );
        assert_eq!(latency_ms(id, t - Duration::seconds(1)), Some(0));
        assert_eq!(latency_ms(Uuid::new_v4(), t), None);
        let delivered = observe(&env(
            Event::MessageDelivered {
                message_id: id,
                conversation_id: Uuid::nil(),
                sender_id: Uuid::nil(),
                recipient_id: Uuid::from_u128(2),
            },
            Uuid::from_u128(2),
            t + Duration::milliseconds(1500),
        ));
        assert_eq!(delivered.delivery_ms, Some(1500));
        assert_eq!(delivered.active, Some(Uuid::from_u128(2)));
        let read = observe(&env(
            Event::MessagesRead {
                conversation_id: Uuid::nil(),
                reader_id: Uuid::from_u128(2),
                up_to: id,
            },
            Uuid::from_u128(2),
            t + Duration::minutes(2),
        ));
        assert_eq!(read.read_ms, Some(120_000));
    }

    #[test]
    fn system_events_do_not_make_users_active() {
        let t = at("2026-03-31T10:00:00Z");
        let user = Uuid::from_u128(7);
        let offline = env(
            Event::PresenceChanged {
                user_id: user,
                status: Presence::Offline,
            },
            user,
            t,
        );
        assert_eq!(observe(&offline).active, None);
        let online = env(
            Event::PresenceChanged {
                user_id: user,
                status: Presence::Online,
            },
            user,
            t,
        );
        assert_eq!(observe(&online).active, Some(user));
        let notification = env(
            Event::NotificationRequested {
                user_id: Uuid::from_u128(8),
                kind: missive_events::NotificationKind::Message,
                subject_id: Uuid::nil(),
                item_id: Uuid::nil(),
                from_id: user,
            },
            user,
            t,
        );
        assert_eq!(observe(&notification).active, None);
        assert!(!observe(&online).touches_rollups());
    }

    #[test]
    fn first_messages_start_conversations_once() {
        let t = at("2026-03-31T10:03:00Z");
        let (a, c) = (Uuid::from_u128(1), Uuid::from_u128(50));
        let events = vec![
            (Position::new(0, 10), sent(c, id_at(t), a, t)),
            (
                Position::new(0, 11),
                sent(c, id_at(t), a, t + Duration::seconds(1)),
            ),
        ];
        let mut agg = Aggregator::new();
        let (keys, conversations) = agg.missing(&events);
        assert_eq!(keys.len(), 2, "one minute row and one day row");
        assert_eq!(conversations, [c]);
        agg.load(&keys, Vec::new(), Vec::new());
        let folded = agg.fold(&events);
        assert_eq!(folded.applied.counts.messages, 2);
        assert_eq!(folded.applied.counts.conversations_started, 1);
        assert_eq!(
            folded.batch.first_messages,
            [FirstMessage {
                conversation_id: c,
                partition: 0,
                offset: 10
            }]
        );
        // The store knows the first message (a crash after it was written, before the rows):
        // the same event starts the conversation again, a later one does not.
        let mut fresh = Aggregator::new();
        fresh.load(
            &keys,
            Vec::new(),
            vec![FirstMessage {
                conversation_id: c,
                partition: 0,
                offset: 10,
            }],
        );
        let again = fresh.fold(&events);
        assert_eq!(again.applied.counts.conversations_started, 1);
        assert!(again.batch.first_messages.is_empty(), "known already");
        let later = fresh.fold(&events[1..]);
        assert_eq!(later.applied.counts.conversations_started, 0);
    }

    #[test]
    fn events_below_a_rows_watermark_are_not_counted_again() {
        let t = at("2026-03-31T23:59:30Z");
        let a = Uuid::from_u128(1);
        let events: Vec<(Position, Envelope)> = (0..6)
            .map(|i| {
                let when = t + Duration::seconds(10 * i);
                let event = Event::FriendRequested {
                    requester_id: a,
                    addressee_id: Uuid::from_u128(100 + i as u128),
                };
                (Position::new(3, 20 + i as u64), env(event, a, when))
            })
            .collect();
        // Everything at once, into an empty store.
        let mut store: HashMap<RollupKey, Rollup> = HashMap::new();
        let mut once = Aggregator::new();
        load_from(&mut once, &store, &events);
        let all = once.fold(&events);
        assert_eq!(all.applied.counts.friend_requests, 6);
        for row in &all.batch.rollups {
            store.insert(row.key, row.clone());
        }
        let expected = store.clone();
        // Two minutes (23:59, 00:00) and two days: one row each.
        assert_eq!(store.len(), 4);
        let day2 = RollupKey::of(Granularity::Day, at("2026-04-01T00:00:00Z"), 3);
        assert_eq!(store[&day2].counts.friend_requests, 3);
        assert_eq!(store[&day2].through, 26);

        // Redelivered in overlapping chunks, by fresh aggregators (restarts): nothing changes.
        for chunk in [&events[0..4], &events[2..6], &events[..]] {
            let mut agg = Aggregator::new();
            load_from(&mut agg, &store, chunk);
            let folded = agg.fold(chunk);
            assert_eq!(folded.applied, Applied::default());
            assert!(folded.batch.rollups.is_empty());
        }
        assert_eq!(store, expected);

        // A crash wrote the day rows but not the minute rows: reprocessing completes the rest.
        let mut partial: HashMap<RollupKey, Rollup> = expected
            .iter()
            .filter(|(k, _)| k.granularity == Granularity::Day)
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        let mut agg = Aggregator::new();
        load_from(&mut agg, &partial, &events);
        let folded = agg.fold(&events);
        assert_eq!(
            folded.applied.counts.friend_requests, 6,
            "minute rows counted"
        );
        for row in &folded.batch.rollups {
            assert_eq!(row.key.granularity, Granularity::Minute);
            partial.insert(row.key, row.clone());
        }
        assert_eq!(partial, expected);
    }

    #[test]
    fn active_users_are_named_once_per_day_and_month() {
        let t = at("2026-03-31T23:59:00Z");
        let a = Uuid::from_u128(1);
        let online = |t| {
            env(
                Event::PresenceChanged {
                    user_id: a,
                    status: Presence::Online,
                },
                a,
                t,
            )
        };
        let events = vec![
            (Position::new(0, 0), online(t)),
            (Position::new(0, 1), online(t + Duration::seconds(30))),
            (Position::new(0, 2), online(t + Duration::minutes(2))),
        ];
        let mut agg = Aggregator::new();
        let folded = agg.fold(&events);
        let periods: Vec<String> = folded
            .batch
            .active_users
            .iter()
            .map(|(p, _)| p.key())
            .collect();
        assert_eq!(periods, ["2026-03-31", "2026-03", "2026-04-01", "2026-04"]);
        assert!(folded.batch.rollups.is_empty(), "presence counts nothing");
        agg.commit(&folded);
        assert!(agg.fold(&events).batch.active_users.is_empty());
    }
}
