//! Entry points of the fuzz targets in `fuzz/`, also replayed on stable by
//! `tests/fuzz_seeds.rs` (see `fuzz/README.md`).
//!
//! The rule they check: no input makes the server panic or answer 500; bad input gets a clear
//! 4xx. [`decode_event`] feeds bytes to the event decoder the projector runs on every log
//! record; [`parse_command`] feeds a JSON body to one of the commands of the HTTP API (or a
//! frame to the WebSocket session), through the same extractor and the same validation the
//! handler and the service run before they touch storage. Both panic on a broken rule, which
//! is what the fuzzer reports as a crash.
//!
//! Not part of the API: hidden from the docs and free to change with the targets.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::sync::Once;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::ws::Message as WsMessage;
use axum::extract::{DefaultBodyLimit, FromRequest, Request};
use axum::http::{Method, header};
use chrono::{DateTime, Utc};
use missive_domain::communities::{
    self as rules, ChannelRef, ChannelSend, CreateChannel, Invite, Membership, Publish, ServerView,
};
use missive_domain::messages::{self, DEFAULT_MAX_TEXT_CHARS, Deliverable, SendState, Visible};
use missive_domain::{DomainError, Event, FriendshipState, presence, users};
use missive_events::{CodecError, Envelope, Presence, Visibility, codec};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tower::{Layer, Service};
use uuid::Uuid;

use crate::communities::{
    ChannelBody, ChannelSendBody, CreateServerBody, InviteBody, PostBody, VisibilityParam,
};
use crate::error::{ApiError, ApiJson};
use crate::routes::{PresenceBody, PresenceParam, ProfileBody, ReadBody, RegisterBody, SendBody};
use crate::ws::{Answer, answer};

// ---------------------------------------------------------------------------------------------
// The event decoder.

/// Decodes `bytes` as a log record, the way the projector does, and checks what must hold of
/// every record that decodes; returns what [`missive_events::decode`] returned.
///
/// A record in the Confluent Schema Registry's framing (`00`, 4-byte schema id, Avro body) is
/// first decoded as it is (which must fail, naming the framing), then re-framed as the Kafka
/// adapter does once the registry has told it the writer schema: here registry id `i` is the
/// `i`-th kept schema of [`codec::known_schemas`] ([`confluent_framed`] writes such records),
/// and any other id is unknown, so the record stays as it is.
///
/// # Panics
/// When a property fails: decoding panicked, `decode` and `decode_value` disagree, or a decoded
/// envelope does not survive being encoded again, with the current or with its own version.
pub fn decode_event(bytes: &[u8]) -> Result<Envelope, CodecError> {
    cap_decode_allocation();
    let as_is = checked_decode(bytes);
    let Some((schema_id, body)) = codec::confluent_framing(bytes) else {
        return as_is;
    };
    assert!(
        matches!(&as_is, Err(CodecError::ConfluentFramed { schema_id: id }) if *id == schema_id),
        "a record in the registry framing must be refused as such, got {as_is:?}"
    );
    let Some((_, _, fingerprint)) = usize::try_from(schema_id)
        .ok()
        .and_then(|i| codec::known_schemas().nth(i))
    else {
        return as_is;
    };
    let mut record = Vec::with_capacity(codec::HEADER_LEN + body.len());
    record.extend_from_slice(&codec::MARKER);
    record.extend_from_slice(&fingerprint);
    record.extend_from_slice(body);
    checked_decode(&record)
}

/// Re-frames a single-object record in the Confluent Schema Registry's framing, with the
/// registry id [`decode_event`] resolves to its writer schema; `None` if `record` is not a
/// single-object record of a kept schema.
pub fn confluent_framed(record: &[u8]) -> Option<Vec<u8>> {
    let (header, body) = record.split_first_chunk::<{ codec::HEADER_LEN }>()?;
    if header[..2] != codec::MARKER {
        return None;
    }
    let id = codec::known_schemas().position(|(_, _, fp)| fp[..] == header[2..])?;
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(0);
    out.extend_from_slice(&u32::try_from(id).ok()?.to_be_bytes());
    out.extend_from_slice(body);
    Some(out)
}

/// Binaries cap apache-avro's allocations before decoding anything; so do the targets.
fn cap_decode_allocation() {
    static CAP: Once = Once::new();
    CAP.call_once(missive_events::cap_decode_allocation);
}

/// Decodes a single-object record both ways the codec offers and checks the result.
fn checked_decode(bytes: &[u8]) -> Result<Envelope, CodecError> {
    let decoded = missive_events::decode(bytes);
    let value = codec::decode_value(bytes);
    match (&decoded, &value) {
        (Ok(envelope), Ok(value)) => {
            let fingerprint: [u8; 8] = bytes[2..codec::HEADER_LEN]
                .try_into()
                .expect("a decoded record has a header");
            let (event_type, version) = codec::schema_of_fingerprint(&fingerprint)
                .expect("a decoded record names a kept schema");
            assert_eq!(envelope.event_type(), event_type, "event type");
            assert_eq!(value.event_type, event_type, "decode_value event type");
            assert_eq!(value.written_version, version, "decode_value version");
            round_trip(envelope, version);
        }
        (Err(a), Err(b)) => {
            // Both walk the same checks, so they fail the same way; the text must format.
            assert_eq!(
                a.to_string(),
                b.to_string(),
                "decode and decode_value errors"
            );
        }
        _ => panic!(
            "decode and decode_value disagree: {:?} vs {:?}",
            decoded.as_ref().map(|_| ()),
            value.as_ref().map(|_| ())
        ),
    }
    decoded
}

/// A decoded envelope must survive encoding again: with the current version (what a replay
/// or a re-publishing tool writes) and with the version it was written with.
fn round_trip(envelope: &Envelope, written_version: u32) {
    let current = missive_events::encode(envelope)
        .unwrap_or_else(|e| panic!("a decoded envelope does not encode: {e}"));
    let again = missive_events::decode(&current)
        .unwrap_or_else(|e| panic!("a re-encoded envelope does not decode: {e}"));
    assert_eq!(&again, envelope, "decode(encode(envelope))");
    assert_eq!(
        missive_events::encode(&again).ok().as_deref(),
        Some(&current[..]),
        "encoding is deterministic"
    );
    let own = codec::encode_with_version(envelope, written_version).unwrap_or_else(|e| {
        panic!("a v{written_version} envelope does not encode as v{written_version}: {e}")
    });
    let again = missive_events::decode(&own)
        .unwrap_or_else(|e| panic!("a v{written_version} re-encoding does not decode: {e}"));
    assert_eq!(&again, envelope, "decode(encode_with_version(envelope))");
}

// ---------------------------------------------------------------------------------------------
// Commands.

/// The inputs [`parse_command`] understands, by selector: the first byte of its input, modulo
/// the length of this list, picks one; the rest is the request body (or the frame's text).
pub const COMMANDS: &[&str] = &[
    // POST /v1/users
    "register",
    // PATCH /v1/users/me
    "profile",
    // POST /v1/conversations/direct/{peer_id}/messages
    "send",
    // POST /v1/conversations/{id}/read and /v1/servers/{id}/channels/{id}/read
    "read",
    // POST /v1/presence
    "presence",
    // POST /v1/servers
    "create_server",
    // POST /v1/servers/{id}/invitations
    "invite",
    // POST /v1/servers/{id}/posts
    "post",
    // POST /v1/servers/{id}/channels
    "channel",
    // POST /v1/servers/{id}/channels/{id}/messages
    "channel_send",
    // A client frame of a GET /v1/ws session
    "ws_frame",
];

/// The input that makes [`parse_command`] run `command` on `body`; `None` for a name not in
/// [`COMMANDS`].
pub fn command_input(command: &str, body: &[u8]) -> Option<Vec<u8>> {
    let selector = COMMANDS.iter().position(|c| *c == command)?;
    let mut input = vec![u8::try_from(selector).ok()?];
    input.extend_from_slice(body);
    Some(input)
}

/// Why [`parse_command`] refused its input.
#[derive(Debug)]
pub enum Rejected {
    /// The HTTP answer: always a 4xx.
    Http(ApiError),
    /// The WebSocket `error` frame the session sends back: always `bad_frame`.
    Frame(Value),
}

/// Runs one command body through what its handler runs before storage: the [`ApiJson`]
/// extractor under the router's body limit, then the validation and the domain decision, taken
/// in the state where the command succeeds (the caller owns the server, is friends with the
/// peer, ...), so that only the body decides. Events it decides must encode and decode back.
///
/// # Panics
/// When a refusal is not a 4xx (or, for a WebSocket frame, not `bad_frame`), or an event
/// decided from the body does not survive the codec.
pub fn parse_command(bytes: &[u8]) -> Result<(), Rejected> {
    cap_decode_allocation();
    let (selector, body) = match bytes.split_first() {
        Some((&selector, body)) => (usize::from(selector) % COMMANDS.len(), body),
        None => (0, bytes),
    };
    match COMMANDS[selector] {
        "register" => decided(register(extract(body)?)),
        "profile" => decided(update_profile(extract(body)?)),
        "send" => decided(send_message(extract(body)?)),
        "read" => decided(mark_read(extract(body)?)),
        "presence" => decided(set_presence(extract(body)?)),
        "create_server" => decided(create_server(extract(body)?)),
        "invite" => decided(invite(extract(body)?)),
        "post" => decided(publish_post(extract(body)?)),
        "channel" => decided(create_channel(extract(body)?)),
        "channel_send" => decided(send_channel_message(extract(body)?)),
        _ => ws_frame(body),
    }
}

// What the service checks, then decides, for each command; in the order it does.

fn register(body: RegisterBody) -> Result<Vec<Event>, DomainError> {
    users::validate_username(&body.username)?;
    users::decide_register(false, id(1), &body.username, body.display_name.as_deref())
}

fn update_profile(body: ProfileBody) -> Result<Vec<Event>, DomainError> {
    users::validate_display_name(&body.display_name)?;
    // No valid name has a control character: the name always changes.
    users::decide_update_profile("\u{0}", ACTOR, &body.display_name)
}

fn send_message(body: SendBody) -> Result<Vec<Event>, DomainError> {
    let cmid = body.client_msg_id.as_deref();
    if let Some(cmid) = cmid {
        messages::validate_client_msg_id(cmid)?;
    }
    messages::validate_text(&body.text, DEFAULT_MAX_TEXT_CHARS)?;
    let state = SendState {
        recipient_exists: true,
        friendship: FriendshipState::Friends,
        max_text_chars: DEFAULT_MAX_TEXT_CHARS,
    };
    messages::decide_send(
        state,
        messages::Send {
            message_id: id(2),
            sender: ACTOR,
            recipient: PEER,
            text: &body.text,
            client_msg_id: cmid,
        },
    )
}

fn mark_read(body: ReadBody) -> Result<Vec<Event>, DomainError> {
    let conversation = id(3);
    let visible = Visible {
        message_id: body.up_to,
        conversation_id: conversation,
        sender_id: PEER,
        deleted_for_everyone: false,
    };
    messages::decide_mark_read(ACTOR, conversation, body.up_to, Some(visible))
}

fn set_presence(body: PresenceBody) -> Result<Vec<Event>, DomainError> {
    let status = match body.status {
        PresenceParam::Online => Presence::Online,
        PresenceParam::Offline => Presence::Offline,
    };
    presence::decide_presence(ACTOR, status)
}

fn create_server(body: CreateServerBody) -> Result<Vec<Event>, DomainError> {
    let visibility = match body.visibility {
        Some(VisibilityParam::Private) => Visibility::Private,
        Some(VisibilityParam::Public) | None => Visibility::Public,
    };
    let name = rules::validate_server_name(&body.name)?;
    let tags = rules::normalize_tags(&body.tags)?;
    rules::decide_create_server(SERVER, ACTOR, &name, &tags, visibility, false)
}

fn invite(body: InviteBody) -> Result<Vec<Event>, DomainError> {
    rules::decide_invite(Invite {
        server: Some(owned_server()),
        actor: ACTOR,
        actor_membership: Membership::Owner,
        invitee: body.user_id,
        invitee_membership: Some(Membership::Outsider { invitation: None }),
        invitation_id: id(4),
    })
}

fn publish_post(body: PostBody) -> Result<Vec<Event>, DomainError> {
    rules::decide_publish_post(Publish {
        server: Some(owned_server()),
        actor: ACTOR,
        membership: Membership::Owner,
        post_id: id(5),
        content: &body.content,
        tags: &body.tags,
        max_chars: DEFAULT_MAX_TEXT_CHARS,
    })
}

fn create_channel(body: ChannelBody) -> Result<Vec<Event>, DomainError> {
    rules::decide_create_channel(CreateChannel {
        server: Some(owned_server()),
        actor: ACTOR,
        membership: Membership::Owner,
        channel_id: CHANNEL,
        name: &body.name,
        existing: &[],
    })
}

fn send_channel_message(body: ChannelSendBody) -> Result<Vec<Event>, DomainError> {
    let cmid = body.client_msg_id.as_deref();
    if let Some(cmid) = cmid {
        messages::validate_client_msg_id(cmid)?;
    }
    messages::validate_text(&body.text, DEFAULT_MAX_TEXT_CHARS)?;
    let channel = ChannelRef {
        server_id: SERVER,
        channel_id: CHANNEL,
    };
    rules::decide_send_channel_message(ChannelSend {
        server_id: SERVER,
        channel_id: CHANNEL,
        target: Some(channel),
        actor: ACTOR,
        membership: Membership::Subscriber,
        current: Some(channel),
        message_id: id(6),
        text: &body.text,
        client_msg_id: cmid,
        max_chars: DEFAULT_MAX_TEXT_CHARS,
    })
}

/// The caller of every command.
const ACTOR: Uuid = Uuid::from_u128(0xA);
/// The other user of a direct conversation.
const PEER: Uuid = Uuid::from_u128(0xB);
const SERVER: Uuid = Uuid::from_u128(0xC);
const CHANNEL: Uuid = Uuid::from_u128(0xD);

/// An id for what a command creates.
const fn id(n: u128) -> Uuid {
    Uuid::from_u128(0x100 + n)
}

/// A public server the caller owns.
fn owned_server() -> ServerView {
    ServerView {
        server_id: SERVER,
        owner_id: ACTOR,
        visibility: Visibility::Public,
    }
}

/// Runs `body` through [`ApiJson`] as a JSON request under the router's body limit.
fn extract<T: DeserializeOwned>(body: &[u8]) -> Result<T, Rejected> {
    let request = Request::builder()
        .method(Method::POST)
        .uri("/")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_vec()))
        .expect("a request built from constants is valid");
    // The extractor reads the limit the router's layer leaves in the request.
    let mut limited = DefaultBodyLimit::max(crate::MAX_BODY_BYTES).layer(Identity);
    let request = match limited.call(request).into_inner() {
        Ok(request) => request,
        Err(never) => match never {},
    };
    // The body is in memory: the extractor completes without a runtime to drive I/O.
    match futures::executor::block_on(ApiJson::<T>::from_request(request, &())) {
        Ok(ApiJson(value)) => Ok(value),
        Err(error) => Err(refused(error)),
    }
}

/// A service that hands back its request: what the body limit layer wraps here.
#[derive(Clone, Copy)]
struct Identity;

impl Service<Request> for Identity {
    type Response = Request;
    type Error = Infallible;
    type Future = Ready<Result<Request, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        ready(Ok(request))
    }
}

/// Checks that a refusal is the client's fault.
fn refused(error: ApiError) -> Rejected {
    assert!(
        error.status.is_client_error(),
        "a bad body must be a 4xx, got {} {}: {}",
        error.status,
        error.code,
        error.message
    );
    Rejected::Http(error)
}

/// What the service answers for a decision: the refusal as its HTTP error, or the events,
/// which must survive the codec as the log stores them.
fn decided(decision: Result<Vec<Event>, DomainError>) -> Result<(), Rejected> {
    let events = decision.map_err(|e| refused(ApiError::from(e)))?;
    for event in events {
        let envelope = Envelope {
            event_id: id(0),
            occurred_at: DateTime::<Utc>::from_timestamp_micros(1_767_225_600_000_000)
                .expect("2026-01-01 is representable"),
            actor_id: ACTOR,
            correlation_id: id(7),
            event,
        };
        let record = missive_events::encode(&envelope)
            .unwrap_or_else(|e| panic!("an accepted command's event does not encode: {e}"));
        let decoded = missive_events::decode(&record)
            .unwrap_or_else(|e| panic!("an accepted command's event does not decode: {e}"));
        assert_eq!(
            decoded, envelope,
            "decode(encode(event of an accepted command))"
        );
    }
    Ok(())
}

/// A client frame of a WebSocket session: text if it is UTF-8 (a WebSocket text frame must
/// be), binary otherwise. An acknowledgement is checked as the service checks it before it
/// reads the read models.
fn ws_frame(body: &[u8]) -> Result<(), Rejected> {
    let message = match std::str::from_utf8(body) {
        Ok(text) => WsMessage::Text(text.into()),
        Err(_) => WsMessage::Binary(body.to_vec().into()),
    };
    match answer(message) {
        Answer::Now(replies) => {
            for reply in replies {
                match reply["type"].as_str() {
                    Some("pong") => {}
                    Some("error") => {
                        assert_eq!(reply["code"], "bad_frame", "error frame: {reply}");
                        return Err(Rejected::Frame(reply));
                    }
                    _ => panic!("unexpected reply to a client frame: {reply}"),
                }
            }
            Ok(())
        }
        Answer::Ack(mut ids) => {
            if ids.len() > missive_service::MAX_ACK_IDS {
                let error = DomainError::Invalid {
                    field: "message_ids",
                    rule: format!(
                        "at most {} ids per acknowledgement",
                        missive_service::MAX_ACK_IDS
                    ),
                };
                return Err(Rejected::Frame(json!({
                    "type": "error", "code": "bad_frame", "message": error.to_string(),
                })));
            }
            ids.sort_unstable();
            ids.dedup();
            let mut events = Vec::new();
            for message_id in ids {
                let deliverable = Deliverable {
                    message_id,
                    conversation_id: id(3),
                    sender_id: PEER,
                    recipient_id: ACTOR,
                    delivered: false,
                    deleted_for_everyone: false,
                };
                // A refused id is reported in the `acked` reply, not as an error.
                if let Ok(decided) =
                    messages::decide_acknowledge(ACTOR, message_id, Some(deliverable))
                {
                    events.extend(decided);
                }
            }
            decided(Ok(events))
        }
    }
}
