//! Sample events shared by Missive's criterion benchmarks (`cargo bench -p missive-benches`).
//!
//! The benchmarks measure the hot paths one layer at a time, with the same realistic events:
//! the Avro codec (`codec.rs`), the pure projection functions (`projection.rs`) and the embedded
//! log's append path (`log_append.rs`). `README.md` in this directory has the commands and the
//! figures.
//!
//! # Layout
//! - [`every_event`]: one realistic envelope of every event type, checked to miss none.
//! - [`message_sent`], [`notification_requested`]: the events the other benchmarks single out
//!   (a direct message is the most frequent event; both have an older schema version).

use chrono::{DateTime, TimeZone, Utc};
use missive_events::{
    AccountStatus, ChannelLeaveReason, DeleteScope, Envelope, Event, InvitationOutcome,
    NotificationKind, Presence, RemovalReason, Visibility,
};
use uuid::Uuid;

/// A direct message of 100 ASCII characters, the size of a typical chat line.
pub const MESSAGE_TEXT: &str = "Are we still on for Thursday? I booked the table at eight; \
                                Sam says he will bring the new guy along.";
const _: () = assert!(MESSAGE_TEXT.len() == 100);

/// A server post of 280 characters.
const POST_CONTENT: &str = "Release notes for 2.4: the scheduler now batches retries, the \
                            dashboard shows p99 latency per route, and the CLI gained a --dry-run \
                            flag. Upgrading is a restart; no migration is needed. Thanks to \
                            everyone who filed issues and tested the betas last month. Happy \
                            hacking, everybody!";
const _: () = assert!(POST_CONTENT.len() == 280);

/// How many event types there are: [`ordinal`] numbers them `0..EVENT_TYPES`.
const EVENT_TYPES: usize = 24;

/// A distinct number per event type. The match is exhaustive, so a new event type does not
/// compile here until it is numbered, and [`every_event`] then refuses to run without a sample.
fn ordinal(event: &Event) -> usize {
    match event {
        Event::UserRegistered { .. } => 0,
        Event::ProfileUpdated { .. } => 1,
        Event::FriendRequested { .. } => 2,
        Event::FriendRequestAccepted { .. } => 3,
        Event::FriendshipRemoved { .. } => 4,
        Event::MessageSent { .. } => 5,
        Event::MessagesRead { .. } => 6,
        Event::MessageDeleted { .. } => 7,
        Event::MessageDelivered { .. } => 8,
        Event::NotificationRequested { .. } => 9,
        Event::PresenceChanged { .. } => 10,
        Event::ServerCreated { .. } => 11,
        Event::ServerSubscribed { .. } => 12,
        Event::ServerUnsubscribed { .. } => 13,
        Event::ServerInvitationSent { .. } => 14,
        Event::ServerInvitationAnswered { .. } => 15,
        Event::PostPublished { .. } => 16,
        Event::ChannelCreated { .. } => 17,
        Event::ChannelDeleted { .. } => 18,
        Event::ChannelJoined { .. } => 19,
        Event::ChannelLeft { .. } => 20,
        Event::ChannelMessageSent { .. } => 21,
        Event::ChannelMessagesRead { .. } => 22,
        Event::AccountStatusChanged { .. } => 23,
    }
}

/// A fixed, distinct UUIDv7-shaped id, so that every run measures the same bytes.
fn id(n: u128) -> Uuid {
    Uuid::from_u128(0x0193_4f2a_7c00_7000_8000_0000_0000_0000 | n)
}

const ALICE: u128 = 1;
const BOB: u128 = 2;
const CONVERSATION: u128 = 10;
const MESSAGE: u128 = 11;
const SERVER: u128 = 20;
const CHANNEL: u128 = 21;

/// 2026-12-03T12:00:00.123456Z: microsecond precision, as the schema keeps it.
fn occurred_at() -> DateTime<Utc> {
    Utc.timestamp_opt(1_796_299_200, 123_456_000)
        .single()
        .expect("a valid timestamp")
}

/// Wraps `event` as `actor` would have caused it.
fn envelope(event: Event, actor: u128) -> Envelope {
    Envelope {
        event_id: id(0xE000 + actor),
        occurred_at: occurred_at(),
        actor_id: id(actor),
        correlation_id: id(0xC000 + actor),
        event,
    }
}

/// Alice's direct message to Bob: [`MESSAGE_TEXT`], with the client's idempotency key when
/// `client_msg_id` is true (schema version 1 cannot hold one).
pub fn message_sent(client_msg_id: bool) -> Envelope {
    envelope(
        Event::MessageSent {
            message_id: id(MESSAGE),
            conversation_id: id(CONVERSATION),
            sender_id: id(ALICE),
            recipient_id: id(BOB),
            text: MESSAGE_TEXT.to_owned(),
            client_msg_id: client_msg_id.then(|| "c-01JDX3F6B2K9".to_owned()),
        },
        ALICE,
    )
}

/// Bob is offline: tell him of Alice's message (a kind schema version 1 can hold).
pub fn notification_requested() -> Envelope {
    envelope(
        Event::NotificationRequested {
            user_id: id(BOB),
            kind: NotificationKind::Message,
            subject_id: id(CONVERSATION),
            item_id: id(MESSAGE),
            from_id: id(ALICE),
        },
        ALICE,
    )
}

/// One realistic envelope of every event type, in the order of [`Event`]'s variants.
///
/// # Panics
/// If an event type has no sample here (after a new one was added to [`Event`]).
pub fn every_event() -> Vec<Envelope> {
    let events = vec![
        envelope(
            Event::UserRegistered {
                user_id: id(ALICE),
                username: "alice_w".into(),
                display_name: "Alice Wong".into(),
            },
            ALICE,
        ),
        envelope(
            Event::ProfileUpdated {
                user_id: id(ALICE),
                display_name: "Alice W. (away until Monday)".into(),
            },
            ALICE,
        ),
        envelope(
            Event::FriendRequested {
                requester_id: id(ALICE),
                addressee_id: id(BOB),
            },
            ALICE,
        ),
        envelope(
            Event::FriendRequestAccepted {
                requester_id: id(ALICE),
                addressee_id: id(BOB),
            },
            BOB,
        ),
        envelope(
            Event::FriendshipRemoved {
                removed_by: id(BOB),
                other_id: id(ALICE),
                reason: RemovalReason::Unfriended,
            },
            BOB,
        ),
        message_sent(true),
        envelope(
            Event::MessagesRead {
                conversation_id: id(CONVERSATION),
                reader_id: id(BOB),
                up_to: id(MESSAGE),
            },
            BOB,
        ),
        envelope(
            Event::MessageDeleted {
                message_id: id(MESSAGE),
                conversation_id: id(CONVERSATION),
                deleted_by: id(ALICE),
                scope: DeleteScope::ForEveryone,
            },
            ALICE,
        ),
        envelope(
            Event::MessageDelivered {
                message_id: id(MESSAGE),
                conversation_id: id(CONVERSATION),
                sender_id: id(ALICE),
                recipient_id: id(BOB),
            },
            BOB,
        ),
        notification_requested(),
        envelope(
            Event::PresenceChanged {
                user_id: id(BOB),
                status: Presence::Online,
            },
            BOB,
        ),
        envelope(
            Event::AccountStatusChanged {
                user_id: id(BOB),
                status: AccountStatus::Blocked,
            },
            ALICE,
        ),
        envelope(
            Event::ServerCreated {
                server_id: id(SERVER),
                owner_id: id(ALICE),
                name: "Rust Paris Meetup".into(),
                tags: vec!["rust".into(), "paris".into(), "meetup".into()],
                visibility: Visibility::Public,
            },
            ALICE,
        ),
        envelope(
            Event::ServerSubscribed {
                server_id: id(SERVER),
                user_id: id(BOB),
            },
            BOB,
        ),
        envelope(
            Event::ServerUnsubscribed {
                server_id: id(SERVER),
                user_id: id(BOB),
            },
            BOB,
        ),
        envelope(
            Event::ServerInvitationSent {
                invitation_id: id(30),
                server_id: id(SERVER),
                inviter_id: id(ALICE),
                invitee_id: id(BOB),
            },
            ALICE,
        ),
        envelope(
            Event::ServerInvitationAnswered {
                invitation_id: id(30),
                server_id: id(SERVER),
                invitee_id: id(BOB),
                outcome: InvitationOutcome::Accepted,
            },
            BOB,
        ),
        envelope(
            Event::PostPublished {
                post_id: id(31),
                server_id: id(SERVER),
                author_id: id(ALICE),
                content: POST_CONTENT.into(),
                tags: vec!["release".into(), "announcement".into()],
            },
            ALICE,
        ),
        envelope(
            Event::ChannelCreated {
                channel_id: id(CHANNEL),
                server_id: id(SERVER),
                name: "general".into(),
                created_by: id(ALICE),
            },
            ALICE,
        ),
        envelope(
            Event::ChannelDeleted {
                channel_id: id(CHANNEL),
                server_id: id(SERVER),
                deleted_by: id(ALICE),
            },
            ALICE,
        ),
        envelope(
            Event::ChannelJoined {
                user_id: id(BOB),
                server_id: id(SERVER),
                channel_id: id(CHANNEL),
            },
            BOB,
        ),
        envelope(
            Event::ChannelLeft {
                user_id: id(BOB),
                server_id: id(SERVER),
                channel_id: id(CHANNEL),
                reason: ChannelLeaveReason::Switched,
            },
            BOB,
        ),
        envelope(
            Event::ChannelMessageSent {
                message_id: id(32),
                server_id: id(SERVER),
                channel_id: id(CHANNEL),
                sender_id: id(BOB),
                text: MESSAGE_TEXT.into(),
                client_msg_id: Some("c-01JDX3G0QWEA".into()),
            },
            BOB,
        ),
        envelope(
            Event::ChannelMessagesRead {
                server_id: id(SERVER),
                channel_id: id(CHANNEL),
                reader_id: id(ALICE),
                up_to: id(32),
            },
            ALICE,
        ),
    ];
    let mut seen = [false; EVENT_TYPES];
    for e in &events {
        seen[ordinal(&e.event)] = true;
    }
    if let Some(missing) = seen.iter().position(|s| !s) {
        panic!("every_event() has no sample of the event type numbered {missing} by ordinal()");
    }
    events
}
