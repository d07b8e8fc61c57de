//! The Avro single-object codec, tested from outside the crate: round trips, the wire format
//! against independently computed fingerprints and hand-built records, old schema versions,
//! and malformed input (which must be an `Err`, never a panic).

use std::collections::BTreeSet;
use std::path::Path;

use chrono::{DateTime, TimeZone, Utc};
use missive_events::codec::{
    self, CodecError, encode_with_version, fingerprint, known_schemas, schema_version,
};
use missive_events::{
    AccountStatus, ChannelLeaveReason, DeleteScope, Envelope, Event, InvitationOutcome,
    NotificationKind, Presence, RemovalReason, Visibility, decode, encode, truncate_to_micros,
};
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// Fixtures.

/// Fingerprints of every kept schema as wire bytes (header bytes 2..10) in hex, computed from
/// the `.avsc` files by fastavro 1.13 (`fastavro.schema.fingerprint(to_parsing_canonical_form(..),
/// "CRC-64-AVRO")`), an implementation independent of this crate.
const INDEPENDENT_FINGERPRINTS: [(&str, u32, &str); 26] = [
    ("AccountStatusChanged", 1, "f502fbdd78966eed"),
    ("ChannelCreated", 1, "54d19003e5c22c1f"),
    ("ChannelDeleted", 1, "f814b14f46c86764"),
    ("ChannelJoined", 1, "33faa576f4ab25e0"),
    ("ChannelLeft", 1, "f6d1a37a22224090"),
    ("ChannelMessageSent", 1, "b01008e2c12e2740"),
    ("ChannelMessagesRead", 1, "460f71781cb2a808"),
    ("FriendRequestAccepted", 1, "e40fbe625f32a5aa"),
    ("FriendRequested", 1, "3f5671ff3b506950"),
    ("FriendshipRemoved", 1, "281640e562d273be"),
    ("MessageDeleted", 1, "242d98954f703623"),
    ("MessageDelivered", 1, "95e1192824be6959"),
    ("MessageSent", 1, "874b23eb52e5f081"),
    ("MessageSent", 2, "3f885b51e756c748"),
    ("MessagesRead", 1, "d09a60adbfcb1beb"),
    ("NotificationRequested", 1, "dabd962d4a0080c8"),
    ("NotificationRequested", 2, "71d285963f3b2353"),
    ("PostPublished", 1, "68c6468c5955baf0"),
    ("PresenceChanged", 1, "51d41e1f82ffc5eb"),
    ("ProfileUpdated", 1, "f267bf317815f7cc"),
    ("ServerCreated", 1, "52d9fbc0aa879664"),
    ("ServerInvitationAnswered", 1, "c07e2a73e733b1d3"),
    ("ServerInvitationSent", 1, "2afe7ec7ca617a8d"),
    ("ServerSubscribed", 1, "4029441ba2089a83"),
    ("ServerUnsubscribed", 1, "e07afdfd5e008bd2"),
    ("UserRegistered", 1, "f22aeb16ac1ab072"),
];

/// The version [`codec::encode`] writes: the highest listed for the type.
fn current_version(event_type: &str) -> i64 {
    INDEPENDENT_FINGERPRINTS
        .iter()
        .filter(|(t, _, _)| *t == event_type)
        .map(|(_, v, _)| i64::from(*v))
        .max()
        .expect("fingerprint listed")
}

fn independent_fingerprint(event_type: &str, version: u32) -> [u8; 8] {
    let (_, _, hex) = INDEPENDENT_FINGERPRINTS
        .iter()
        .find(|(t, v, _)| *t == event_type && *v == version)
        .expect("fingerprint listed");
    let mut out = [0u8; 8];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex");
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn id(n: u128) -> Uuid {
    Uuid::from_u128(0x0193_4f2a_7c00_7000_8000_0000_0000_0000 | n)
}

fn at(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).expect("in range")
}

/// 2024-11-22T00:00:00.123456Z
const NOV_22_MICROS: i64 = 1_732_233_600_123_456;

fn envelope(n: u128, event: Event, micros: i64) -> Envelope {
    Envelope {
        event_id: id(1_000 + n),
        occurred_at: at(micros),
        actor_id: id(1),
        correlation_id: id(2_000 + n),
        event,
    }
}

fn message_sent(client_msg_id: Option<&str>, text: &str) -> Event {
    Event::MessageSent {
        message_id: id(30),
        conversation_id: id(31),
        sender_id: id(1),
        recipient_id: id(2),
        text: text.to_owned(),
        client_msg_id: client_msg_id.map(str::to_owned),
    }
}

fn channel_message_sent(client_msg_id: Option<&str>, text: &str) -> Event {
    Event::ChannelMessageSent {
        message_id: id(60),
        server_id: id(40),
        channel_id: id(50),
        sender_id: id(1),
        text: text.to_owned(),
        client_msg_id: client_msg_id.map(str::to_owned),
    }
}

/// At least one envelope of every variant, every enum value and boolean, `Some` and `None`
/// client message ids, empty, one-item and many-item tags, unicode and empty text, and
/// timestamps from the edges of the representable range.
fn samples() -> Vec<Envelope> {
    let long_text: String = "héllo wörld ✉️ 你好 🦀 ".repeat(500);
    let events = vec![
        Event::UserRegistered {
            user_id: id(1),
            username: "alice".into(),
            display_name: "Alice Ω 🦀".into(),
        },
        Event::UserRegistered {
            user_id: id(3),
            username: String::new(),
            display_name: String::new(),
        },
        Event::ProfileUpdated {
            user_id: id(1),
            display_name: "Zoë 日本語 مرحبا \u{0} e\u{301} \u{202e}".into(),
        },
        Event::FriendRequested {
            requester_id: id(1),
            addressee_id: id(2),
        },
        Event::FriendRequestAccepted {
            requester_id: id(2),
            addressee_id: id(1),
        },
        Event::FriendshipRemoved {
            removed_by: id(2),
            other_id: id(1),
            reason: RemovalReason::Declined,
        },
        Event::FriendshipRemoved {
            removed_by: id(1),
            other_id: id(2),
            reason: RemovalReason::Cancelled,
        },
        Event::FriendshipRemoved {
            removed_by: id(1),
            other_id: id(2),
            reason: RemovalReason::Unfriended,
        },
        message_sent(None, "hi"),
        message_sent(Some("client-7f3a"), "hi again 👋"),
        message_sent(Some(""), ""),
        message_sent(Some("ключ-🔑"), &long_text),
        Event::MessagesRead {
            conversation_id: id(31),
            reader_id: id(2),
            up_to: id(30),
        },
        Event::MessageDeleted {
            message_id: id(30),
            conversation_id: id(31),
            deleted_by: id(2),
            scope: DeleteScope::ForMe,
        },
        Event::MessageDeleted {
            message_id: id(30),
            conversation_id: id(31),
            deleted_by: id(1),
            scope: DeleteScope::ForEveryone,
        },
        Event::PresenceChanged {
            user_id: id(1),
            status: Presence::Online,
        },
        Event::PresenceChanged {
            user_id: id(1),
            status: Presence::Offline,
        },
        Event::AccountStatusChanged {
            user_id: id(2),
            status: AccountStatus::Blocked,
        },
        Event::AccountStatusChanged {
            user_id: id(2),
            status: AccountStatus::Deleted,
        },
        Event::MessageDelivered {
            message_id: id(30),
            conversation_id: id(31),
            sender_id: id(1),
            recipient_id: id(2),
        },
        Event::NotificationRequested {
            user_id: id(2),
            kind: NotificationKind::Message,
            subject_id: id(31),
            item_id: id(30),
            from_id: id(1),
        },
        Event::NotificationRequested {
            user_id: id(3),
            kind: NotificationKind::Invitation,
            subject_id: id(41),
            item_id: id(80),
            from_id: id(2),
        },
        Event::ServerCreated {
            server_id: id(40),
            owner_id: id(1),
            name: "Rustaceans 🦀".into(),
            tags: vec![
                "rust".into(),
                "programmation-français".into(),
                String::new(),
            ],
            visibility: Visibility::Public,
        },
        Event::ServerCreated {
            server_id: id(41),
            owner_id: id(2),
            name: String::new(),
            tags: Vec::new(),
            visibility: Visibility::Private,
        },
        Event::ServerSubscribed {
            server_id: id(40),
            user_id: id(2),
        },
        Event::ServerUnsubscribed {
            server_id: id(40),
            user_id: id(2),
        },
        Event::ServerInvitationSent {
            invitation_id: id(80),
            server_id: id(41),
            inviter_id: id(2),
            invitee_id: id(3),
        },
        Event::ServerInvitationAnswered {
            invitation_id: id(80),
            server_id: id(41),
            invitee_id: id(3),
            outcome: InvitationOutcome::Accepted,
        },
        Event::ServerInvitationAnswered {
            invitation_id: id(81),
            server_id: id(41),
            invitee_id: id(4),
            outcome: InvitationOutcome::Declined,
        },
        Event::PostPublished {
            post_id: id(70),
            server_id: id(40),
            author_id: id(1),
            content: "Première annonce: 日本語 ✉️".into(),
            tags: vec!["announcement".into()],
        },
        Event::PostPublished {
            post_id: id(71),
            server_id: id(40),
            author_id: id(1),
            content: String::new(),
            tags: Vec::new(),
        },
        Event::ChannelCreated {
            channel_id: id(50),
            server_id: id(40),
            name: "général".into(),
            created_by: id(1),
        },
        Event::ChannelDeleted {
            channel_id: id(51),
            server_id: id(40),
            deleted_by: id(1),
        },
        Event::ChannelJoined {
            user_id: id(2),
            server_id: id(40),
            channel_id: id(50),
        },
        Event::ChannelLeft {
            user_id: id(2),
            server_id: id(40),
            channel_id: id(50),
            reason: ChannelLeaveReason::Left,
        },
        Event::ChannelLeft {
            user_id: id(2),
            server_id: id(40),
            channel_id: id(50),
            reason: ChannelLeaveReason::Switched,
        },
        Event::ChannelLeft {
            user_id: id(3),
            server_id: id(41),
            channel_id: id(52),
            reason: ChannelLeaveReason::Unsubscribed,
        },
        channel_message_sent(None, "bonjour 👋"),
        channel_message_sent(Some("client-c41"), ""),
        Event::ChannelMessagesRead {
            server_id: id(40),
            channel_id: id(50),
            reader_id: id(2),
            up_to: id(60),
        },
    ];
    let times = [
        NOV_22_MICROS,
        0,
        -1,
        -62_135_596_800_000_000, // 0001-01-01T00:00:00Z
        truncate_to_micros(DateTime::<Utc>::MAX_UTC).timestamp_micros(),
        truncate_to_micros(DateTime::<Utc>::MIN_UTC).timestamp_micros(),
    ];
    events
        .into_iter()
        .enumerate()
        .map(|(i, event)| envelope(i as u128, event, times[i % times.len()]))
        .collect()
}

/// Exhaustive on purpose: a new variant fails to compile here until it gets a sample.
fn variant(event: &Event) -> usize {
    match event {
        Event::UserRegistered { .. } => 0,
        Event::ProfileUpdated { .. } => 1,
        Event::FriendRequested { .. } => 2,
        Event::FriendRequestAccepted { .. } => 3,
        Event::FriendshipRemoved { .. } => 4,
        Event::MessageSent { .. } => 5,
        Event::MessagesRead { .. } => 6,
        Event::MessageDeleted { .. } => 7,
        Event::PresenceChanged { .. } => 8,
        Event::MessageDelivered { .. } => 9,
        Event::NotificationRequested { .. } => 10,
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

/// Deterministic xorshift64*, so a failing input can be reproduced.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// A minimal Avro binary writer, independent of the codec, for hand-built records.
#[derive(Default)]
struct Body(Vec<u8>);

impl Body {
    fn long(mut self, n: i64) -> Self {
        let mut z = ((n << 1) ^ (n >> 63)) as u64;
        while z >= 0x80 {
            self.0.push((z as u8) | 0x80);
            z >>= 7;
        }
        self.0.push(z as u8);
        self
    }

    fn string(self, s: &str) -> Self {
        let mut body = self.long(s.len() as i64);
        body.0.extend_from_slice(s.as_bytes());
        body
    }

    /// An array of strings: one block holding every item, then the empty block that ends it.
    fn strings(self, items: &[String]) -> Self {
        let mut body = self;
        if !items.is_empty() {
            body = body.long(items.len() as i64);
            for item in items {
                body = body.string(item);
            }
        }
        body.long(0)
    }

    fn uuid(self, u: Uuid) -> Self {
        self.string(&u.hyphenated().to_string())
    }

    fn header(self, event_type: &str, version: i64, micros: i64, e: &Envelope) -> Self {
        self.uuid(e.event_id)
            .string(event_type)
            .long(version)
            .long(micros)
            .uuid(e.actor_id)
            .string(&e.partition_key())
            .uuid(e.correlation_id)
    }

    fn framed(self, fingerprint: [u8; 8]) -> Vec<u8> {
        let mut out = vec![0xC3, 0x01];
        out.extend_from_slice(&fingerprint);
        out.extend_from_slice(&self.0);
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Round trips and the wire format.

#[test]
fn every_variant_round_trips() {
    let samples = samples();
    let covered: BTreeSet<usize> = samples.iter().map(|e| variant(&e.event)).collect();
    assert_eq!(
        covered,
        (0..24).collect(),
        "every Event variant has a sample"
    );
    for envelope in &samples {
        let bytes = encode(envelope).expect("encodes");
        let decoded = decode(&bytes).expect("decodes");
        assert_eq!(&decoded, envelope);
        assert_eq!(
            decoded.occurred_at.timestamp_micros(),
            envelope.occurred_at.timestamp_micros()
        );
    }
}

#[test]
fn every_enum_value_round_trips() {
    let mut seen = 0;
    for reason in [
        RemovalReason::Declined,
        RemovalReason::Cancelled,
        RemovalReason::Unfriended,
    ] {
        let event = Event::FriendshipRemoved {
            removed_by: id(1),
            other_id: id(2),
            reason,
        };
        let e = envelope(0, event, NOV_22_MICROS);
        assert_eq!(decode(&encode(&e).unwrap()).unwrap(), e);
        seen += 1;
    }
    for scope in [DeleteScope::ForMe, DeleteScope::ForEveryone] {
        let event = Event::MessageDeleted {
            message_id: id(30),
            conversation_id: id(31),
            deleted_by: id(1),
            scope,
        };
        let e = envelope(0, event, NOV_22_MICROS);
        assert_eq!(decode(&encode(&e).unwrap()).unwrap(), e);
        seen += 1;
    }
    for status in [Presence::Online, Presence::Offline] {
        let e = envelope(
            0,
            Event::PresenceChanged {
                user_id: id(1),
                status,
            },
            0,
        );
        assert_eq!(decode(&encode(&e).unwrap()).unwrap(), e);
        seen += 1;
    }
    for visibility in [Visibility::Public, Visibility::Private] {
        let event = Event::ServerCreated {
            server_id: id(40),
            owner_id: id(1),
            name: "s".into(),
            tags: vec!["t".into()],
            visibility,
        };
        let e = envelope(0, event, NOV_22_MICROS);
        assert_eq!(decode(&encode(&e).unwrap()).unwrap(), e);
        seen += 1;
    }
    for reason in [
        ChannelLeaveReason::Left,
        ChannelLeaveReason::Switched,
        ChannelLeaveReason::Unsubscribed,
    ] {
        let event = Event::ChannelLeft {
            user_id: id(2),
            server_id: id(40),
            channel_id: id(50),
            reason,
        };
        let e = envelope(0, event, NOV_22_MICROS);
        assert_eq!(decode(&encode(&e).unwrap()).unwrap(), e);
        seen += 1;
    }
    assert_eq!(seen, 12);
}

#[test]
fn distinct_enum_values_encode_differently() {
    let a = envelope(
        0,
        Event::PresenceChanged {
            user_id: id(1),
            status: Presence::Online,
        },
        0,
    );
    let b = envelope(
        0,
        Event::PresenceChanged {
            user_id: id(1),
            status: Presence::Offline,
        },
        0,
    );
    assert_ne!(encode(&a).unwrap(), encode(&b).unwrap());
}

#[test]
fn occurred_at_keeps_exactly_microseconds() {
    let precise = Utc.timestamp_opt(1_732_233_600, 123_456_789).unwrap();
    let e = envelope(0, message_sent(None, "t"), 0);
    let e = Envelope {
        occurred_at: precise,
        ..e
    };
    let decoded = decode(&encode(&e).unwrap()).unwrap();
    assert_eq!(decoded.occurred_at, truncate_to_micros(precise));
    assert_eq!(decoded.occurred_at.timestamp_subsec_nanos(), 123_456_000);
}

#[test]
fn records_start_with_the_marker_then_the_current_fingerprint() {
    for envelope in samples() {
        let bytes = encode(&envelope).unwrap();
        let event_type = envelope.event_type();
        let version = schema_version(event_type).expect("has a schema");
        assert_eq!(bytes[..2], [0xC3, 0x01]);
        assert_eq!(bytes[2..10], fingerprint(event_type, version).unwrap());
        assert_eq!(bytes[2..10], independent_fingerprint(event_type, version));
    }
}

/// The record for `e` as the schema files describe it, written without the codec: proves field
/// order, uuids as hyphenated strings, timestamp-micros, union branches, enum symbol indexes and
/// the partition key.
fn hand_built(e: &Envelope) -> Vec<u8> {
    let event_type = e.event_type();
    let version = current_version(event_type);
    let body = Body::default().header(event_type, version, e.occurred_at.timestamp_micros(), e);
    let body = match &e.event {
        Event::UserRegistered {
            user_id,
            username,
            display_name,
        } => body.uuid(*user_id).string(username).string(display_name),
        Event::ProfileUpdated {
            user_id,
            display_name,
        } => body.uuid(*user_id).string(display_name),
        Event::FriendRequested {
            requester_id,
            addressee_id,
        }
        | Event::FriendRequestAccepted {
            requester_id,
            addressee_id,
        } => body.uuid(*requester_id).uuid(*addressee_id),
        Event::FriendshipRemoved {
            removed_by,
            other_id,
            reason,
        } => body.uuid(*removed_by).uuid(*other_id).long(match reason {
            RemovalReason::Declined => 0,
            RemovalReason::Cancelled => 1,
            RemovalReason::Unfriended => 2,
        }),
        Event::MessageSent {
            message_id,
            conversation_id,
            sender_id,
            recipient_id,
            text,
            client_msg_id,
        } => {
            let body = body
                .uuid(*message_id)
                .uuid(*conversation_id)
                .uuid(*sender_id)
                .uuid(*recipient_id)
                .string(text);
            match client_msg_id {
                None => body.long(0),
                Some(id) => body.long(1).string(id),
            }
        }
        Event::MessagesRead {
            conversation_id,
            reader_id,
            up_to,
        } => body.uuid(*conversation_id).uuid(*reader_id).uuid(*up_to),
        Event::MessageDeleted {
            message_id,
            conversation_id,
            deleted_by,
            scope,
        } => body
            .uuid(*message_id)
            .uuid(*conversation_id)
            .uuid(*deleted_by)
            .long(match scope {
                DeleteScope::ForMe => 0,
                DeleteScope::ForEveryone => 1,
            }),
        Event::PresenceChanged { user_id, status } => body.uuid(*user_id).long(match status {
            Presence::Online => 0,
            Presence::Offline => 1,
        }),
        Event::AccountStatusChanged { user_id, status } => body.uuid(*user_id).long(match status {
            AccountStatus::Active => 0,
            AccountStatus::Blocked => 1,
            AccountStatus::Deleted => 2,
        }),
        Event::MessageDelivered {
            message_id,
            conversation_id,
            sender_id,
            recipient_id,
        } => body
            .uuid(*message_id)
            .uuid(*conversation_id)
            .uuid(*sender_id)
            .uuid(*recipient_id),
        Event::NotificationRequested {
            user_id,
            kind,
            subject_id,
            item_id,
            from_id,
        } => body
            .uuid(*user_id)
            .long(match kind {
                NotificationKind::Message => 0,
                NotificationKind::Invitation => 1,
            })
            .uuid(*subject_id)
            .uuid(*item_id)
            .uuid(*from_id),
        Event::ServerCreated {
            server_id,
            owner_id,
            name,
            tags,
            visibility,
        } => body
            .uuid(*server_id)
            .uuid(*owner_id)
            .string(name)
            .strings(tags)
            .long(match visibility {
                Visibility::Public => 0,
                Visibility::Private => 1,
            }),
        Event::ServerSubscribed { server_id, user_id }
        | Event::ServerUnsubscribed { server_id, user_id } => body.uuid(*server_id).uuid(*user_id),
        Event::ServerInvitationSent {
            invitation_id,
            server_id,
            inviter_id,
            invitee_id,
        } => body
            .uuid(*invitation_id)
            .uuid(*server_id)
            .uuid(*inviter_id)
            .uuid(*invitee_id),
        Event::ServerInvitationAnswered {
            invitation_id,
            server_id,
            invitee_id,
            outcome,
        } => body
            .uuid(*invitation_id)
            .uuid(*server_id)
            .uuid(*invitee_id)
            .long(match outcome {
                InvitationOutcome::Accepted => 0,
                InvitationOutcome::Declined => 1,
            }),
        Event::PostPublished {
            post_id,
            server_id,
            author_id,
            content,
            tags,
        } => body
            .uuid(*post_id)
            .uuid(*server_id)
            .uuid(*author_id)
            .string(content)
            .strings(tags),
        Event::ChannelCreated {
            channel_id,
            server_id,
            name,
            created_by,
        } => body
            .uuid(*channel_id)
            .uuid(*server_id)
            .string(name)
            .uuid(*created_by),
        Event::ChannelDeleted {
            channel_id,
            server_id,
            deleted_by,
        } => body.uuid(*channel_id).uuid(*server_id).uuid(*deleted_by),
        Event::ChannelJoined {
            user_id,
            server_id,
            channel_id,
        } => body.uuid(*user_id).uuid(*server_id).uuid(*channel_id),
        Event::ChannelLeft {
            user_id,
            server_id,
            channel_id,
            reason,
        } => body
            .uuid(*user_id)
            .uuid(*server_id)
            .uuid(*channel_id)
            .long(match reason {
                ChannelLeaveReason::Left => 0,
                ChannelLeaveReason::Switched => 1,
                ChannelLeaveReason::Unsubscribed => 2,
            }),
        Event::ChannelMessageSent {
            message_id,
            server_id,
            channel_id,
            sender_id,
            text,
            client_msg_id,
        } => {
            let body = body
                .uuid(*message_id)
                .uuid(*server_id)
                .uuid(*channel_id)
                .uuid(*sender_id)
                .string(text);
            match client_msg_id {
                None => body.long(0),
                Some(id) => body.long(1).string(id),
            }
        }
        Event::ChannelMessagesRead {
            server_id,
            channel_id,
            reader_id,
            up_to,
        } => body
            .uuid(*server_id)
            .uuid(*channel_id)
            .uuid(*reader_id)
            .uuid(*up_to),
    };
    body.framed(independent_fingerprint(event_type, version as u32))
}

#[test]
fn every_sample_encodes_exactly_as_written_by_hand() {
    for e in samples() {
        assert_eq!(encode(&e).unwrap(), hand_built(&e), "{:?}", e.event);
    }
}

#[test]
fn friendship_partition_key_is_the_ordered_pair() {
    let e = envelope(
        6,
        Event::FriendshipRemoved {
            removed_by: id(9),
            other_id: id(4),
            reason: RemovalReason::Unfriended,
        },
        -1,
    );
    assert_eq!(e.partition_key(), format!("{}:{}", id(4), id(9)));
    assert_eq!(encode(&e).unwrap(), hand_built(&e));
}

#[test]
fn partition_key_is_written_but_not_trusted_on_decode() {
    let e = envelope(7, message_sent(None, "x"), 0);
    let mut body = Body::default()
        .uuid(e.event_id)
        .string("MessageSent")
        .long(2)
        .long(0)
        .uuid(e.actor_id)
        .string("not the real key")
        .uuid(e.correlation_id);
    body = body
        .uuid(id(30))
        .uuid(id(31))
        .uuid(id(1))
        .uuid(id(2))
        .string("x")
        .long(0);
    let decoded = decode(&body.framed(independent_fingerprint("MessageSent", 2))).unwrap();
    assert_eq!(decoded, e);
}

// ---------------------------------------------------------------------------------------------
// Schema versions.

#[test]
fn current_versions_are_message_sent_2_notification_requested_2_and_everything_else_1() {
    for (event_type, _, _) in INDEPENDENT_FINGERPRINTS {
        assert_eq!(
            schema_version(event_type),
            Some(current_version(event_type) as u32),
            "{event_type}"
        );
    }
    assert_eq!(schema_version("NoSuchEvent"), None);
    assert_eq!(fingerprint("MessageSent", 3), None);
    assert_eq!(fingerprint("NoSuchEvent", 1), None);
}

#[test]
fn fingerprints_match_an_independent_implementation() {
    let ours: BTreeSet<(String, u32, String)> = known_schemas()
        .map(|(t, v, fp)| (t.to_owned(), v, hex(&fp)))
        .collect();
    let theirs: BTreeSet<(String, u32, String)> = INDEPENDENT_FINGERPRINTS
        .iter()
        .map(|(t, v, fp)| ((*t).to_owned(), *v, (*fp).to_owned()))
        .collect();
    assert_eq!(ours, theirs);
}

#[test]
fn fingerprints_are_distinct() {
    let all: Vec<[u8; 8]> = known_schemas().map(|(_, _, fp)| fp).collect();
    let distinct: BTreeSet<[u8; 8]> = all.iter().copied().collect();
    assert_eq!(all.len(), distinct.len());
    assert_eq!(all.len(), 26);
}

fn schemas_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas")
}

#[test]
fn every_schema_file_is_loaded_by_the_codec() {
    let mut on_disk = BTreeSet::new();
    for entry in std::fs::read_dir(schemas_dir()).expect("schemas/ is readable") {
        let name = entry
            .unwrap()
            .file_name()
            .into_string()
            .expect("utf-8 file name");
        let Some(stem) = name.strip_suffix(".avsc") else {
            continue;
        };
        let (snake, version) = stem
            .rsplit_once(".v")
            .unwrap_or_else(|| panic!("{name} is not named <type>.v<N>.avsc"));
        let version: u32 = version
            .parse()
            .unwrap_or_else(|_| panic!("{name} has no numeric version"));
        let event_type: String = snake
            .split('_')
            .map(|word| {
                let mut chars = word.chars();
                chars
                    .next()
                    .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                    .unwrap_or_default()
            })
            .collect();
        on_disk.insert((event_type, version));
    }
    let loaded: BTreeSet<(String, u32)> =
        known_schemas().map(|(t, v, _)| (t.to_owned(), v)).collect();
    assert_eq!(on_disk, loaded);
}

#[test]
fn schemas_readme_lists_every_fingerprint() {
    let readme = std::fs::read_to_string(schemas_dir().join("README.md")).expect("README");
    for (event_type, version, fp) in known_schemas() {
        assert!(
            readme.contains(&hex(&fp)),
            "schemas/README.md lacks the fingerprint of {event_type} v{version}"
        );
    }
}

#[test]
fn message_sent_written_with_v1_decodes_with_no_client_msg_id() {
    let e = envelope(8, message_sent(None, "from an old release"), NOV_22_MICROS);
    let v1 = encode_with_version(&e, 1).expect("v1 can hold an event without client_msg_id");
    assert_eq!(v1[2..10], independent_fingerprint("MessageSent", 1));
    assert_ne!(v1, encode(&e).unwrap());
    let decoded = decode(&v1).expect("v1 decodes");
    assert_eq!(decoded, e);
    assert!(matches!(
        decoded.event,
        Event::MessageSent {
            client_msg_id: None,
            ..
        }
    ));
}

#[test]
fn a_hand_built_v1_record_decodes_with_current_code() {
    // A v1 record as an old release (or any Avro writer) produced it: no client_msg_id field.
    let e = envelope(9, message_sent(None, "old"), -1);
    let bytes = Body::default()
        .header("MessageSent", 1, -1, &e)
        .uuid(id(30))
        .uuid(id(31))
        .uuid(id(1))
        .uuid(id(2))
        .string("old")
        .framed(independent_fingerprint("MessageSent", 1));
    assert_eq!(encode_with_version(&e, 1).unwrap(), bytes);
    assert_eq!(decode(&bytes).unwrap(), e);
}

#[test]
fn v1_cannot_hold_a_client_msg_id() {
    let e = envelope(10, message_sent(Some("c-9"), "new"), 0);
    match encode_with_version(&e, 1) {
        Err(CodecError::NotRepresentable {
            event_type: "MessageSent",
            version: 1,
            field,
        }) => assert_eq!(field, "client_msg_id"),
        other => panic!("expected NotRepresentable, got {other:?}"),
    }
}

#[test]
fn encoding_with_the_current_version_is_encode() {
    for e in samples() {
        let version = schema_version(e.event_type()).unwrap();
        assert_eq!(
            encode_with_version(&e, version).unwrap(),
            encode(&e).unwrap()
        );
    }
}

#[test]
fn versions_that_are_not_kept_are_rejected() {
    let sent = envelope(11, message_sent(None, "x"), 0);
    let presence = envelope(
        12,
        Event::PresenceChanged {
            user_id: id(1),
            status: Presence::Online,
        },
        0,
    );
    for (e, version) in [
        (&sent, 0),
        (&sent, 3),
        (&presence, 2),
        (&presence, u32::MAX),
    ] {
        assert!(
            matches!(
                encode_with_version(e, version),
                Err(CodecError::UnknownVersion { .. })
            ),
            "{} v{version}",
            e.event_type()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Malformed input.

fn valid() -> Vec<u8> {
    encode(&envelope(
        13,
        message_sent(Some("c"), "valid"),
        NOV_22_MICROS,
    ))
    .unwrap()
}

#[test]
fn too_short_input_is_an_error() {
    for len in 0..10 {
        let bytes = &valid()[..len];
        match decode(bytes) {
            Err(CodecError::TooShort { len: l }) => assert_eq!(l, len),
            other => panic!("{len} bytes: expected TooShort, got {other:?}"),
        }
    }
}

#[test]
fn a_wrong_marker_is_an_error() {
    for marker in [[0xC3, 0x00], [0xC3, 0x02], [0x01, 0xC3], [0x4f, 0x62]] {
        let mut bytes = valid();
        bytes[..2].copy_from_slice(&marker);
        match decode(&bytes) {
            Err(err @ CodecError::BadMarker { found }) => {
                assert_eq!(found, marker);
                assert!(err.to_string().contains("C3 01"), "{err}");
            }
            other => panic!("expected BadMarker, got {other:?}"),
        }
    }
}

#[test]
fn a_confluent_framed_record_is_named_as_such() {
    let mut bytes = vec![0x00, 0x00, 0x00, 0x01, 0x2c];
    bytes.extend_from_slice(&valid()[10..]);
    match decode(&bytes) {
        Err(err @ CodecError::ConfluentFramed { schema_id: 300 }) => {
            assert!(err.to_string().contains("--schema-registry"), "{err}");
        }
        other => panic!("expected ConfluentFramed, got {other:?}"),
    }
}

#[test]
fn fingerprint_of_any_text_of_a_schema_matches_the_kept_one() {
    for (event_type, version, expected) in known_schemas() {
        let json = codec::schema_json(event_type, version).expect("kept schema has its text");
        assert_eq!(
            codec::fingerprint_of(json),
            Ok(expected),
            "{event_type} v{version}"
        );
        // Re-serialised without whitespace and docs, as a schema registry may return it.
        let mut value: serde_json::Value = serde_json::from_str(json).expect("schema is JSON");
        strip_docs(&mut value);
        let compact = value.to_string();
        assert_ne!(compact, json);
        assert_eq!(
            codec::fingerprint_of(&compact),
            Ok(expected),
            "{event_type} v{version}"
        );
    }
    assert!(codec::fingerprint_of("{not json").is_err());
    assert_eq!(
        codec::record_name("MessageSent"),
        "missive.events.MessageSent"
    );
}

fn strip_docs(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.remove("doc");
            map.values_mut().for_each(strip_docs);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_docs),
        _ => {}
    }
}

#[test]
fn an_unknown_fingerprint_is_an_error_that_names_it() {
    let mut bytes = valid();
    bytes[2..10].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef, 0x00, 0x11, 0x22, 0x33]);
    let err = decode(&bytes).expect_err("unknown fingerprint");
    assert!(
        matches!(err, CodecError::UnknownFingerprint { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("deadbeef00112233"), "{err}");
    // The fingerprint that apache-avro 0.21 computes for "int" (same as the spec's) is not ours.
    bytes[2..10].copy_from_slice(&[0x8f, 0x5c, 0x39, 0x3f, 0x1a, 0xd5, 0x75, 0x72]);
    assert!(matches!(
        decode(&bytes),
        Err(CodecError::UnknownFingerprint { .. })
    ));
}

#[test]
fn a_truncated_body_is_an_error() {
    let bytes = valid();
    let err = decode(&bytes[..bytes.len() - 3]).expect_err("truncated");
    assert!(
        matches!(
            err,
            CodecError::Truncated {
                event_type: "MessageSent",
                version: 2
            }
        ),
        "{err:?}"
    );
    assert!(decode(&bytes[..10]).is_err());
}

#[test]
fn dropping_a_trailing_null_union_is_still_truncation() {
    // A record whose last byte is the `null` branch of client_msg_id: apache-avro reads a union
    // at end of input as its first branch, which must not pass for a complete record.
    let bytes = encode(&envelope(14, message_sent(None, "n"), 0)).unwrap();
    assert_eq!(bytes.last(), Some(&0));
    assert!(matches!(
        decode(&bytes[..bytes.len() - 1]),
        Err(CodecError::Truncated { .. })
    ));
}

#[test]
fn trailing_bytes_are_an_error() {
    for extra in [&[0u8][..], &[0xff], &[1, 2, 3], &valid()] {
        let mut bytes = valid();
        bytes.extend_from_slice(extra);
        match decode(&bytes) {
            Err(CodecError::TrailingBytes { count, .. }) => assert_eq!(count, extra.len()),
            other => panic!("expected TrailingBytes, got {other:?}"),
        }
    }
}

#[test]
fn invalid_avro_is_an_error_with_its_cause() {
    // Enum index 5 where PresenceChanged's status has two symbols.
    let e = envelope(
        15,
        Event::PresenceChanged {
            user_id: id(1),
            status: Presence::Online,
        },
        0,
    );
    let bytes = Body::default()
        .header("PresenceChanged", 1, 0, &e)
        .uuid(id(1))
        .long(5)
        .framed(independent_fingerprint("PresenceChanged", 1));
    let err = decode(&bytes).expect_err("bad enum index");
    assert!(matches!(err, CodecError::Malformed { .. }), "{err:?}");
    assert!(
        std::error::Error::source(&err).is_some(),
        "wraps the Avro error"
    );

    // A uuid field that is not a uuid.
    let bytes = Body::default()
        .string("not-a-uuid")
        .framed(independent_fingerprint("PresenceChanged", 1));
    assert!(matches!(decode(&bytes), Err(CodecError::Malformed { .. })));

    // Invalid UTF-8 in a string.
    let mut body = Body::default().uuid(e.event_id).long(2);
    body.0.extend_from_slice(&[0xff, 0xfe]);
    assert!(decode(&body.framed(independent_fingerprint("PresenceChanged", 1))).is_err());

    // A timestamp beyond what chrono represents.
    let bytes = Body::default()
        .header("PresenceChanged", 1, i64::MAX, &e)
        .uuid(id(1))
        .long(0)
        .framed(independent_fingerprint("PresenceChanged", 1));
    match decode(&bytes) {
        Err(
            err @ CodecError::InvalidField {
                field: "occurred_at",
                ..
            },
        ) => {
            assert!(err.to_string().contains("occurred_at"));
        }
        other => panic!("expected InvalidField, got {other:?}"),
    }

    // A string length far beyond the input.
    let bytes = Body::default()
        .long(1 << 40)
        .framed(independent_fingerprint("PresenceChanged", 1));
    assert!(decode(&bytes).is_err());
    let bytes = Body::default()
        .long(-7)
        .framed(independent_fingerprint("PresenceChanged", 1));
    assert!(decode(&bytes).is_err());
}

/// A PostPublished record, up to its `tags` field (which the caller writes).
fn post_published_until_tags(e: &Envelope) -> Body {
    Body::default()
        .header("PostPublished", 1, 0, e)
        .uuid(id(70))
        .uuid(id(40))
        .uuid(id(1))
        .string("c")
}

#[test]
fn tags_written_in_several_blocks_decode() {
    // Avro writers may split an array into blocks, and may write a negative item count
    // followed by the block's size in bytes: a Java or fastavro record reads the same.
    let tags: Vec<String> = vec!["a".into(), "bc".into(), "".into()];
    let e = envelope(
        16,
        Event::PostPublished {
            post_id: id(70),
            server_id: id(40),
            author_id: id(1),
            content: "c".into(),
            tags: tags.clone(),
        },
        0,
    );
    let bytes = post_published_until_tags(&e)
        .long(-2)
        .long(5) // "a" and "bc": 1 + 1 + 1 + 2 bytes
        .string("a")
        .string("bc")
        .long(1)
        .string("")
        .long(0)
        .framed(independent_fingerprint("PostPublished", 1));
    assert_eq!(decode(&bytes).expect("decodes"), e);
}

#[test]
fn an_array_block_claiming_more_items_than_bytes_is_an_error_not_an_allocation() {
    // apache-avro reserves 56 bytes per claimed item before reading any: without the codec's
    // check, the half-billion claims below would try to allocate 28 GB and abort the process.
    let e = envelope(17, message_sent(None, "x"), 0);
    for (count, size) in [
        (500_000_000, None),
        (-500_000_000, Some(1)),
        (i64::MAX, None),
        (i64::MIN + 1, Some(0)),
        (4, None), // three bytes follow
    ] {
        let mut body = post_published_until_tags(&e).long(count);
        if let Some(size) = size {
            body = body.long(size);
        }
        let bytes = body
            .string("a")
            .long(0)
            .framed(independent_fingerprint("PostPublished", 1));
        match decode(&bytes) {
            Err(CodecError::Truncated {
                event_type: "PostPublished",
                version: 1,
            }) => {}
            other => panic!("block of {count} items: expected Truncated, got {other:?}"),
        }
    }
    // The same claims in ServerCreated's tags, which a field follows.
    let bytes = Body::default()
        .header("ServerCreated", 1, 0, &e)
        .uuid(id(40))
        .uuid(id(1))
        .string("s")
        .long(300_000_000)
        .string("t")
        .long(0)
        .long(0)
        .framed(independent_fingerprint("ServerCreated", 1));
    assert!(matches!(decode(&bytes), Err(CodecError::Truncated { .. })));

    // A block of more than 4,096 items is refused even when the bytes are there.
    let mut body = post_published_until_tags(&e).long(5000);
    for _ in 0..5000 {
        body = body.string("a");
    }
    let bytes = body
        .long(0)
        .framed(independent_fingerprint("PostPublished", 1));
    assert!(matches!(decode(&bytes), Err(CodecError::Truncated { .. })));
}

#[test]
fn an_enum_index_beyond_the_symbols_is_an_error() {
    let e = envelope(18, message_sent(None, "x"), 0);
    // ServerInvitationAnswered.outcome has two symbols: index 2 (zig-zag 4) and -1 (1) are not.
    for index in [4u8, 1, 0x7f] {
        let mut body = Body::default()
            .header("ServerInvitationAnswered", 1, 0, &e)
            .uuid(id(80))
            .uuid(id(41))
            .uuid(id(3));
        body.0.push(index);
        let bytes = body.framed(independent_fingerprint("ServerInvitationAnswered", 1));
        assert!(decode(&bytes).is_err(), "enum index byte {index}");
    }
}

#[test]
fn a_v1_notification_decodes_and_v1_cannot_hold_an_invitation() {
    let message = envelope(
        19,
        Event::NotificationRequested {
            user_id: id(2),
            kind: NotificationKind::Message,
            subject_id: id(30),
            item_id: id(31),
            from_id: id(1),
        },
        NOV_22_MICROS,
    );
    let v1 = encode_with_version(&message, 1).expect("v1 holds a MESSAGE notification");
    assert_eq!(
        v1[2..10],
        independent_fingerprint("NotificationRequested", 1)
    );
    assert_eq!(decode(&v1).unwrap(), message);
    let invitation = envelope(
        20,
        Event::NotificationRequested {
            user_id: id(3),
            kind: NotificationKind::Invitation,
            subject_id: id(41),
            item_id: id(80),
            from_id: id(2),
        },
        NOV_22_MICROS,
    );
    assert!(encode_with_version(&invitation, 1).is_err());
    assert_eq!(decode(&encode(&invitation).unwrap()).unwrap(), invitation);
}

#[test]
fn every_truncation_of_every_sample_is_an_error() {
    for e in samples() {
        let bytes = encode(&e).unwrap();
        for len in 0..bytes.len() {
            assert!(
                decode(&bytes[..len]).is_err(),
                "{} cut to {len} of {} bytes decoded",
                e.event_type(),
                bytes.len()
            );
        }
    }
}

#[test]
fn every_bit_flip_of_every_sample_decodes_or_fails_without_panicking() {
    let mut failures = 0;
    for e in samples() {
        let bytes = encode(&e).unwrap();
        if bytes.len() > 1_000 {
            continue; // the long-text sample: its text bytes add time, not coverage
        }
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut flipped = bytes.clone();
                flipped[i] ^= 1 << bit;
                let result = decode(&flipped);
                if i < 10 {
                    assert!(result.is_err(), "flip in header byte {i} bit {bit} decoded");
                }
                failures += usize::from(result.is_err());
            }
        }
    }
    assert!(failures > 0);
}

#[test]
fn random_bytes_are_errors_not_panics() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20_000 {
        let len = rng.below(300);
        let bytes = rng.bytes(len);
        assert!(
            decode(&bytes).is_err(),
            "random input decoded: {}",
            hex(&bytes)
        );
    }
}

#[test]
fn random_bodies_behind_valid_headers_do_not_panic() {
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let fingerprints: Vec<[u8; 8]> = known_schemas().map(|(_, _, fp)| fp).collect();
    let encodings: Vec<Vec<u8>> = samples()
        .iter()
        .map(|e| encode(e).unwrap())
        .filter(|b| b.len() < 1_000)
        .collect();
    for round in 0..20_000 {
        let bytes = if round % 2 == 0 {
            // A known header, then noise.
            let mut bytes = vec![0xC3, 0x01];
            bytes.extend_from_slice(&fingerprints[rng.below(fingerprints.len())]);
            let len = rng.below(200);
            bytes.extend(rng.bytes(len));
            bytes
        } else {
            // A valid prefix of a real record, then noise.
            let valid = &encodings[rng.below(encodings.len())];
            let keep = 10 + rng.below(valid.len() - 10);
            let mut bytes = valid[..keep].to_vec();
            let len = rng.below(40);
            bytes.extend(rng.bytes(len));
            bytes
        };
        // Only the absence of a panic is asserted: noise may happen to be a valid record.
        let _ = decode(&bytes);
    }
}

#[test]
fn errors_can_cross_threads_and_be_wrapped() {
    fn assert_error<E: std::error::Error + Send + Sync + 'static>() {}
    assert_error::<CodecError>();
    // The module path used by other crates.
    let _: fn(&[u8]) -> Result<Envelope, CodecError> = codec::decode;
}
