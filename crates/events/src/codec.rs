//! Avro single-object encoding of [`Envelope`]s, with every kept schema compiled in.
//!
//! A record is the two marker bytes `C3 01`, then the 8-byte CRC-64-AVRO (Rabin) fingerprint of
//! the writer schema's Parsing Canonical Form, little-endian, then the Avro binary datum. Any
//! Avro implementation can read it: the fingerprint names the writer schema, and
//! `schemas/README.md` lists every fingerprint next to its `.avsc` file.
//!
//! Each event type has one schema file per version (`schemas/<type>.v<N>.avsc`); every version
//! ever written is kept, so [`decode`] reads old records by resolving them to the current
//! schema. [`encode`] always writes the current version.
//!
//! The schemas are parsed once, on first use. They are compiled in, so a broken schema file
//! panics on first use in every test rather than returning errors at run time; no input can
//! make [`encode`] or [`decode`] panic.
//!
//! The fingerprints are computed here, from the Parsing Canonical Form as the Avro spec and the
//! Java reference implementation define it. `apache-avro` 0.21's own `Schema::fingerprint` keeps
//! `{"type":"string"}` for logical types where the spec reduces it to `"string"`, so its value
//! would not match what a Java or fastavro consumer computes from the same `.avsc` file.

use std::fmt;
use std::io::{self, Read};
use std::sync::LazyLock;

use apache_avro::schema::{Name, Namespace, Schema};
use apache_avro::types::Value;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{
    AccountStatus, ChannelLeaveReason, DeleteScope, Envelope, Event, InvitationOutcome,
    NotificationKind, Presence, RemovalReason, Visibility,
};

/// The two bytes that open every single-object encoded record.
pub const MARKER: [u8; 2] = [0xC3, 0x01];
/// Marker plus fingerprint.
pub const HEADER_LEN: usize = 10;
/// Namespace of every event record.
const NAMESPACE: &str = "missive.events";

/// Why an envelope could not be encoded or a record could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The input is shorter than the single-object header.
    #[error(
        "not a Missive event record: {len} bytes is shorter than the 10-byte Avro single-object \
         header (marker C3 01, then an 8-byte schema fingerprint)"
    )]
    TooShort { len: usize },

    /// The input does not start with `C3 01`.
    #[error(
        "not an Avro single-object record: it starts with {} instead of the marker C3 01 \
         (was it written by another encoder, or is it a raw Avro datum without its header?)",
        Hex(.found)
    )]
    BadMarker { found: [u8; 2] },

    /// The input is framed for a Confluent Schema Registry (`00` + 4-byte schema id).
    #[error(
        "record is in the Confluent Schema Registry wire format (byte 00, then schema id \
         {schema_id}), not Avro single-object encoding: only a log configured with the schema \
         registry that issued the id can read it (--schema-registry)"
    )]
    ConfluentFramed { schema_id: u32 },

    /// The writer schema's fingerprint is not one this build keeps.
    #[error(
        "unknown writer schema fingerprint {} (header bytes 2..10, hex): the record was written \
         with a schema this build does not have; deploy a reader that has it (schemas/README.md \
         lists the known fingerprints)",
        Hex(.fingerprint)
    )]
    UnknownFingerprint { fingerprint: [u8; 8] },

    /// The Avro body ended before the record was complete.
    #[error(
        "{event_type} v{version} record is truncated: its Avro body ends before the record does"
    )]
    Truncated {
        event_type: &'static str,
        version: u32,
    },

    /// Bytes follow a complete Avro body.
    #[error(
        "{event_type} v{version} record has {count} unexpected bytes after its Avro body: the \
         record is corrupt, or several records were framed as one"
    )]
    TrailingBytes {
        event_type: &'static str,
        version: u32,
        count: usize,
    },

    /// The body is not a valid Avro datum of the writer schema.
    #[error("{event_type} v{version} record body is not valid Avro for its schema")]
    Malformed {
        event_type: &'static str,
        version: u32,
        #[source]
        source: apache_avro::Error,
    },

    /// The body is valid Avro but a field cannot become part of an [`Envelope`].
    #[error("{event_type} v{version} record field `{field}`: {problem}")]
    InvalidField {
        event_type: &'static str,
        version: u32,
        field: &'static str,
        problem: &'static str,
    },

    /// No schema is compiled in for the envelope's event type.
    #[error(
        "no Avro schema is compiled in for event type {event_type}: add \
         schemas/<type>.v1.avsc and list it in SOURCES in crates/events/src/codec.rs"
    )]
    NoSchema { event_type: &'static str },

    /// [`encode_with_version`] was asked for a version that is not kept.
    #[error(
        "{event_type} has no schema version {version}; the kept versions are listed in \
         schemas/README.md"
    )]
    UnknownVersion {
        event_type: &'static str,
        version: u32,
    },

    /// [`encode_with_version`] was given an event an older schema cannot hold.
    #[error(
        "{event_type} v{version} cannot hold this event: field `{field}` is set, but version \
         {version} has no such field; write it with the current version instead"
    )]
    NotRepresentable {
        event_type: &'static str,
        version: u32,
        field: String,
    },

    /// The value built from the envelope did not match its own schema: a bug in this module.
    #[error(
        "could not encode {event_type} v{version}: the Avro value built for it does not match \
         its schema (a bug in crates/events/src/codec.rs)"
    )]
    Encode {
        event_type: &'static str,
        version: u32,
        #[source]
        source: apache_avro::Error,
    },
}

/// Encodes `envelope` with the current schema version of its event type.
///
/// `occurred_at` is written in whole microseconds (anything finer is dropped, as
/// [`crate::truncate_to_micros`] does); `partition_key` is written for outside consumers.
pub fn encode(envelope: &Envelope) -> Result<Vec<u8>, CodecError> {
    let event_type = envelope.event_type();
    let kept = REGISTRY
        .current(event_type)
        .ok_or(CodecError::NoSchema { event_type })?;
    write(envelope, kept, payload_fields(&envelope.event))
}

/// Encodes `envelope` with a kept, possibly older, schema version.
///
/// This exists so tests can produce records the way an older release wrote them. It fails if
/// the version is not kept, or if the event sets a field that version does not have (a field
/// left at its default, such as a `None` added later, is simply not written).
pub fn encode_with_version(envelope: &Envelope, version: u32) -> Result<Vec<u8>, CodecError> {
    let event_type = envelope.event_type();
    let kept = REGISTRY
        .get(event_type, version)
        .ok_or(CodecError::UnknownVersion {
            event_type,
            version,
        })?;
    let mut payload = payload_fields(&envelope.event);
    if !std::ptr::eq(kept, REGISTRY.current_of(kept)) {
        payload = project(payload, kept)?;
    }
    write(envelope, kept, payload)
}

/// Decodes one single-object encoded record, resolving old schema versions to the current one.
///
/// Every malformed input is an `Err`, never a panic.
pub fn decode(bytes: &[u8]) -> Result<Envelope, CodecError> {
    let (value, event_type, version) = decode_datum(bytes)?;
    envelope_from_value(value, event_type, version)
}

/// A record decoded to its Avro value, for tools that print events (`missive events dump`).
#[derive(Debug, Clone)]
pub struct DecodedValue {
    pub event_type: &'static str,
    /// The schema version the record was written with.
    pub written_version: u32,
    /// The envelope record, upcast to the current schema of its event type, and checked to
    /// be a well-formed envelope.
    pub value: Value,
}

/// Decodes like [`decode`] (same checks, old versions upcast to the current schema), but keeps
/// the Avro value rather than building an [`Envelope`].
pub fn decode_value(bytes: &[u8]) -> Result<DecodedValue, CodecError> {
    let (value, event_type, written_version) = decode_datum(bytes)?;
    envelope_from_value(value.clone(), event_type, written_version)?;
    Ok(DecodedValue {
        event_type,
        written_version,
        value,
    })
}

/// Checks the framing, reads the datum with its writer schema and resolves it to the current
/// one: the envelope's Avro value, its event type and the version it was written with.
fn decode_datum(bytes: &[u8]) -> Result<(Value, &'static str, u32), CodecError> {
    let too_short = CodecError::TooShort { len: bytes.len() };
    let Some((marker, rest)) = bytes.split_first_chunk::<2>() else {
        return Err(too_short);
    };
    if *marker != MARKER {
        if let Some((schema_id, _)) = confluent_framing(bytes) {
            return Err(CodecError::ConfluentFramed { schema_id });
        }
        return Err(CodecError::BadMarker { found: *marker });
    }
    let Some((fingerprint, body)) = rest.split_first_chunk::<8>() else {
        return Err(too_short);
    };
    let writer = REGISTRY
        .by_fingerprint(fingerprint)
        .ok_or(CodecError::UnknownFingerprint {
            fingerprint: *fingerprint,
        })?;
    let reader = REGISTRY.current_of(writer);
    let (event_type, version) = (writer.event_type, writer.version);
    // apache-avro reserves room for a whole array block as soon as it reads the block's item
    // count: check every count against the bytes left before letting it read the body.
    if writer.has_blocks
        && let Err(BlockCheck::Overrun) = check_blocks(&writer.schema, &mut &body[..])
    {
        return Err(CodecError::Truncated {
            event_type,
            version,
        });
    }

    let mut input = Input {
        rest: body,
        overran: false,
    };
    // Resolving a record to the schema it was written with changes nothing: skip it on the
    // hot path, where nearly every record is of the current version.
    let reader_schema = (!std::ptr::eq(writer, reader)).then_some(&reader.schema);
    let decoded = apache_avro::from_avro_datum(&writer.schema, &mut input, reader_schema);
    // apache-avro turns an end of input inside some values into a default (a string into
    // null, a union into its first branch), so check for it before trusting the value.
    if input.overran {
        return Err(CodecError::Truncated {
            event_type,
            version,
        });
    }
    let value = decoded.map_err(|source| CodecError::Malformed {
        event_type,
        version,
        source,
    })?;
    if !input.rest.is_empty() {
        return Err(CodecError::TrailingBytes {
            event_type,
            version,
            count: input.rest.len(),
        });
    }
    Ok((value, event_type, version))
}

/// The schema version [`encode`] writes for `event_type`, if it has a schema.
pub fn schema_version(event_type: &str) -> Option<u32> {
    REGISTRY.current(event_type).map(|kept| kept.version)
}

/// The single-object fingerprint (the 8 header bytes after `C3 01`) of a kept schema.
pub fn fingerprint(event_type: &str, version: u32) -> Option<[u8; 8]> {
    REGISTRY
        .get(event_type, version)
        .map(|kept| kept.fingerprint)
}

/// Splits a record in the Confluent Schema Registry's wire format (byte `00`, the schema id
/// as 4 bytes big-endian, the Avro body) into its schema id and body; `None` for any other
/// framing.
pub fn confluent_framing(bytes: &[u8]) -> Option<(u32, &[u8])> {
    match bytes.split_first_chunk::<5>() {
        Some((&[0, a, b, c, d], body)) => Some((u32::from_be_bytes([a, b, c, d]), body)),
        _ => None,
    }
}

/// The kept schema (event type, version) a single-object fingerprint names.
pub fn schema_of_fingerprint(fingerprint: &[u8; 8]) -> Option<(&'static str, u32)> {
    REGISTRY
        .by_fingerprint(fingerprint)
        .map(|kept| (kept.event_type, kept.version))
}

/// The `.avsc` text of a kept schema, as compiled in.
pub fn schema_json(event_type: &str, version: u32) -> Option<&'static str> {
    REGISTRY.get(event_type, version).map(|kept| kept.json)
}

/// The full Avro name of an event type's record (`missive.events.<type>`).
pub fn record_name(event_type: &str) -> String {
    format!("{NAMESPACE}.{event_type}")
}

/// The single-object fingerprint of any Avro schema text: CRC-64-AVRO of its Parsing
/// Canonical Form, little-endian. Two texts of the same schema (whitespace, key order, `doc`
/// strings) have the same fingerprint.
pub fn fingerprint_of(schema_json: &str) -> Result<[u8; 8], String> {
    let schema = Schema::parse_str(schema_json).map_err(|e| e.to_string())?;
    schema_fingerprint(&schema)
}

fn schema_fingerprint(schema: &Schema) -> Result<[u8; 8], String> {
    let mut canonical = String::new();
    parsing_canonical_form(schema, &None, &mut canonical)?;
    Ok(rabin(canonical.as_bytes()).to_le_bytes())
}

/// Every kept schema as (event type, version, fingerprint), sorted by type then version.
pub fn known_schemas() -> impl Iterator<Item = (&'static str, u32, [u8; 8])> {
    REGISTRY
        .kept
        .iter()
        .map(|kept| (kept.event_type, kept.version, kept.fingerprint))
}

// ---------------------------------------------------------------------------------------------
// The schema registry.

/// One schema file as compiled in.
struct Source {
    event_type: &'static str,
    version: u32,
    file: &'static str,
    json: &'static str,
}

macro_rules! source {
    ($event_type:literal, $version:literal, $file:literal) => {
        Source {
            event_type: $event_type,
            version: $version,
            file: $file,
            json: include_str!(concat!("../../../schemas/", $file)),
        }
    };
}

/// Every schema version ever written. Files are only ever added to this list, never removed.
const SOURCES: &[Source] = &[
    source!("UserRegistered", 1, "user_registered.v1.avsc"),
    source!("ProfileUpdated", 1, "profile_updated.v1.avsc"),
    source!("FriendRequested", 1, "friend_requested.v1.avsc"),
    source!(
        "FriendRequestAccepted",
        1,
        "friend_request_accepted.v1.avsc"
    ),
    source!("FriendshipRemoved", 1, "friendship_removed.v1.avsc"),
    source!("MessageSent", 1, "message_sent.v1.avsc"),
    source!("MessageSent", 2, "message_sent.v2.avsc"),
    source!("MessagesRead", 1, "messages_read.v1.avsc"),
    source!("MessageDeleted", 1, "message_deleted.v1.avsc"),
    source!("PresenceChanged", 1, "presence_changed.v1.avsc"),
    source!("MessageDelivered", 1, "message_delivered.v1.avsc"),
    source!("NotificationRequested", 1, "notification_requested.v1.avsc"),
    source!("NotificationRequested", 2, "notification_requested.v2.avsc"),
    source!("ServerCreated", 1, "server_created.v1.avsc"),
    source!("ServerSubscribed", 1, "server_subscribed.v1.avsc"),
    source!("ServerUnsubscribed", 1, "server_unsubscribed.v1.avsc"),
    source!("ServerInvitationSent", 1, "server_invitation_sent.v1.avsc"),
    source!(
        "ServerInvitationAnswered",
        1,
        "server_invitation_answered.v1.avsc"
    ),
    source!("PostPublished", 1, "post_published.v1.avsc"),
    source!("ChannelCreated", 1, "channel_created.v1.avsc"),
    source!("ChannelDeleted", 1, "channel_deleted.v1.avsc"),
    source!("ChannelJoined", 1, "channel_joined.v1.avsc"),
    source!("ChannelLeft", 1, "channel_left.v1.avsc"),
    source!("ChannelMessageSent", 1, "channel_message_sent.v1.avsc"),
    source!("ChannelMessagesRead", 1, "channel_messages_read.v1.avsc"),
    source!("AccountStatusChanged", 1, "account_status_changed.v1.avsc"),
];

/// A parsed schema version.
struct Kept {
    event_type: &'static str,
    version: u32,
    /// `version` as the Avro `int` written in the `schema_version` field.
    version_int: i32,
    fingerprint: [u8; 8],
    schema: Schema,
    /// The `.avsc` text.
    json: &'static str,
    /// The payload record's field names, in schema order.
    payload_fields: Vec<String>,
    /// The schema has arrays or maps, whose blocks [`decode`] checks before apache-avro reads
    /// them ([`check_blocks`]).
    has_blocks: bool,
    /// Index in [`Registry::kept`] of the current version of this event type.
    current: usize,
}

struct Registry {
    /// Sorted by event type, then version.
    kept: Vec<Kept>,
}

/// Parsed once, on first use. The schemas are compiled in, so a broken one fails every test.
static REGISTRY: LazyLock<Registry> = LazyLock::new(|| match Registry::load(SOURCES) {
    Ok(registry) => registry,
    Err(problem) => panic!("a compiled-in Avro schema in schemas/ is unusable: {problem}"),
});

impl Registry {
    fn load(sources: &[Source]) -> Result<Registry, String> {
        let mut kept = Vec::with_capacity(sources.len());
        for source in sources {
            let file = source.file;
            let schema = Schema::parse_str(source.json).map_err(|e| format!("{file}: {e}"))?;
            let payload_fields = check_layout(&schema, source.event_type)
                .map_err(|problem| format!("{file}: {problem}"))?;
            let fingerprint =
                schema_fingerprint(&schema).map_err(|problem| format!("{file}: {problem}"))?;
            let has_blocks = has_blocks(&schema);
            if has_blocks {
                blocks_checkable(&schema).map_err(|problem| format!("{file}: {problem}"))?;
            }
            kept.push(Kept {
                event_type: source.event_type,
                version: source.version,
                version_int: i32::try_from(source.version)
                    .map_err(|_| format!("{file}: version {} is not an int", source.version))?,
                fingerprint,
                schema,
                json: source.json,
                payload_fields,
                has_blocks,
                current: 0,
            });
        }
        kept.sort_by(|a, b| (a.event_type, a.version).cmp(&(b.event_type, b.version)));
        for (i, a) in kept.iter().enumerate() {
            for b in &kept[i + 1..] {
                if (a.event_type, a.version) == (b.event_type, b.version) {
                    return Err(format!("{} v{} is listed twice", a.event_type, a.version));
                }
                if a.fingerprint == b.fingerprint {
                    return Err(format!(
                        "{} v{} and {} v{} have the same fingerprint",
                        a.event_type, a.version, b.event_type, b.version
                    ));
                }
            }
        }
        // Sorted by version within a type, so the last of each run is the current one.
        for i in 0..kept.len() {
            let event_type = kept[i].event_type;
            let last = kept
                .iter()
                .rposition(|k| k.event_type == event_type)
                .unwrap_or(i);
            kept[i].current = last;
        }
        Ok(Registry { kept })
    }

    fn get(&self, event_type: &str, version: u32) -> Option<&Kept> {
        self.kept
            .iter()
            .find(|k| k.event_type == event_type && k.version == version)
    }

    fn current(&self, event_type: &str) -> Option<&Kept> {
        self.kept
            .iter()
            .find(|k| k.event_type == event_type)
            .map(|k| self.current_of(k))
    }

    fn current_of<'a>(&'a self, kept: &'a Kept) -> &'a Kept {
        self.kept.get(kept.current).unwrap_or(kept)
    }

    fn by_fingerprint(&self, fingerprint: &[u8; 8]) -> Option<&Kept> {
        self.kept.iter().find(|k| k.fingerprint == *fingerprint)
    }
}

/// The envelope fields every event record starts with, in order; `payload` follows them.
const ENVELOPE_FIELDS: [&str; 7] = [
    "event_id",
    "event_type",
    "schema_version",
    "occurred_at",
    "actor_id",
    "partition_key",
    "correlation_id",
];

/// Checks that a schema is an event record the codec can read and write, and returns the
/// payload's field names.
fn check_layout(schema: &Schema, event_type: &str) -> Result<Vec<String>, String> {
    let Schema::Record(record) = schema else {
        return Err("the top-level schema is not a record".into());
    };
    let fullname = record.name.fullname(None);
    let expected = record_name(event_type);
    if fullname != expected {
        return Err(format!("record is named {fullname}, expected {expected}"));
    }
    let names: Vec<&str> = record.fields.iter().map(|f| f.name.as_str()).collect();
    let expected: Vec<&str> = ENVELOPE_FIELDS.iter().copied().chain(["payload"]).collect();
    if names != expected {
        return Err(format!("fields are {names:?}, expected {expected:?}"));
    }
    match record.fields.last().map(|f| &f.schema) {
        Some(Schema::Record(payload)) => {
            Ok(payload.fields.iter().map(|f| f.name.clone()).collect())
        }
        _ => Err("field `payload` is not a record".into()),
    }
}

// ---------------------------------------------------------------------------------------------
// Fingerprints.

/// The CRC-64-AVRO empty value, from the Avro spec.
const RABIN_EMPTY: u64 = 0xc15d_213a_a4d7_a795;

const RABIN_TABLE: [u64; 256] = {
    let mut table = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let mut fp = i as u64;
        let mut bit = 0;
        while bit < 8 {
            fp = (fp >> 1) ^ (RABIN_EMPTY & 0u64.wrapping_sub(fp & 1));
            bit += 1;
        }
        table[i] = fp;
        i += 1;
    }
    table
};

/// The 64-bit Rabin fingerprint (CRC-64-AVRO) of `bytes`, as the Avro spec defines it.
fn rabin(bytes: &[u8]) -> u64 {
    bytes.iter().fold(RABIN_EMPTY, |fp, &b| {
        (fp >> 8) ^ RABIN_TABLE[usize::from((fp as u8) ^ b)]
    })
}

/// Writes the Parsing Canonical Form of `schema` (Avro spec, "Transforming into Parsing
/// Canonical Form"), as Java's `SchemaNormalization.toParsingForm` does: full names, only the
/// attributes that matter for parsing, logical types reduced to their underlying type.
///
/// Names and symbols need no JSON escaping: Avro restricts them to `[A-Za-z0-9_.]`.
fn parsing_canonical_form(
    schema: &Schema,
    enclosing: &Namespace,
    out: &mut String,
) -> Result<(), String> {
    let primitive = match schema {
        Schema::Null => "null",
        Schema::Boolean => "boolean",
        Schema::Int | Schema::Date | Schema::TimeMillis => "int",
        Schema::Long
        | Schema::TimeMicros
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => "long",
        Schema::Float => "float",
        Schema::Double => "double",
        Schema::Bytes => "bytes",
        // apache-avro 0.21 parses both string and fixed(16) uuids to `Uuid`; the schemas in
        // this repository use only the string form (see schemas/README.md).
        Schema::String | Schema::Uuid => "string",
        Schema::Array(array) => {
            out.push_str(r#"{"type":"array","items":"#);
            parsing_canonical_form(&array.items, enclosing, out)?;
            out.push('}');
            return Ok(());
        }
        Schema::Map(map) => {
            out.push_str(r#"{"type":"map","values":"#);
            parsing_canonical_form(&map.types, enclosing, out)?;
            out.push('}');
            return Ok(());
        }
        Schema::Union(union) => {
            out.push('[');
            for (i, variant) in union.variants().iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                parsing_canonical_form(variant, enclosing, out)?;
            }
            out.push(']');
            return Ok(());
        }
        Schema::Record(record) => {
            let namespace = named_start(&record.name, enclosing, "record", out);
            out.push_str(r#","fields":["#);
            for (i, field) in record.fields.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(r#"{"name":""#);
                out.push_str(&field.name);
                out.push_str(r#"","type":"#);
                parsing_canonical_form(&field.schema, &namespace, out)?;
                out.push('}');
            }
            out.push_str("]}");
            return Ok(());
        }
        Schema::Enum(enumeration) => {
            named_start(&enumeration.name, enclosing, "enum", out);
            out.push_str(r#","symbols":["#);
            for (i, symbol) in enumeration.symbols.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push('"');
                out.push_str(symbol);
                out.push('"');
            }
            out.push_str("]}");
            return Ok(());
        }
        Schema::Fixed(fixed) => {
            named_start(&fixed.name, enclosing, "fixed", out);
            out.push_str(&format!(r#","size":{}}}"#, fixed.size));
            return Ok(());
        }
        Schema::Ref { name } => {
            out.push('"');
            out.push_str(&name.fullname(enclosing.clone()));
            out.push('"');
            return Ok(());
        }
        other => {
            return Err(format!(
                "the codec cannot compute the canonical form of {other:?}; use only the types \
                 listed in schemas/README.md"
            ));
        }
    };
    out.push('"');
    out.push_str(primitive);
    out.push('"');
    Ok(())
}

/// Writes `{"name":"<fullname>","type":"<kind>"` and returns the namespace for nested names.
fn named_start(name: &Name, enclosing: &Namespace, kind: &str, out: &mut String) -> Namespace {
    let fullname = name.fullname(enclosing.clone());
    out.push_str(r#"{"name":""#);
    out.push_str(&fullname);
    out.push_str(r#"","type":""#);
    out.push_str(kind);
    out.push('"');
    fullname
        .rsplit_once('.')
        .map(|(namespace, _)| namespace.to_owned())
}

/// Formats bytes as lowercase hex, two digits each, no separators.
struct Hex<'a>(&'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding.

/// Builds the record for `kept` around an already built payload and frames it.
fn write(
    envelope: &Envelope,
    kept: &Kept,
    payload: Vec<(String, Value)>,
) -> Result<Vec<u8>, CodecError> {
    let (event_type, version) = (kept.event_type, kept.version);
    let record = Value::Record(vec![
        field("event_id", Value::Uuid(envelope.event_id)),
        field("event_type", Value::String(event_type.to_owned())),
        field("schema_version", Value::Int(kept.version_int)),
        field(
            "occurred_at",
            Value::TimestampMicros(envelope.occurred_at.timestamp_micros()),
        ),
        field("actor_id", Value::Uuid(envelope.actor_id)),
        field("partition_key", Value::String(envelope.partition_key())),
        field("correlation_id", Value::Uuid(envelope.correlation_id)),
        field("payload", Value::Record(payload)),
    ]);
    let datum =
        apache_avro::to_avro_datum(&kept.schema, record).map_err(|source| CodecError::Encode {
            event_type,
            version,
            source,
        })?;
    let mut out = Vec::with_capacity(HEADER_LEN + datum.len());
    out.extend_from_slice(&MARKER);
    out.extend_from_slice(&kept.fingerprint);
    out.extend_from_slice(&datum);
    Ok(out)
}

fn field(name: &str, value: Value) -> (String, Value) {
    (name.to_owned(), value)
}

fn uuid(name: &str, id: Uuid) -> (String, Value) {
    field(name, Value::Uuid(id))
}

fn string(name: &str, text: &str) -> (String, Value) {
    field(name, Value::String(text.to_owned()))
}

fn optional_string(name: &str, text: Option<&str>) -> (String, Value) {
    let value = match text {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(text) => Value::Union(1, Box::new(Value::String(text.to_owned()))),
    };
    field(name, value)
}

/// An Avro `{"type":"array","items":"string"}`.
fn strings(name: &str, items: &[String]) -> (String, Value) {
    let items = items.iter().map(|s| Value::String(s.clone())).collect();
    field(name, Value::Array(items))
}

/// The payload fields of the current schema version, in schema order.
fn payload_fields(event: &Event) -> Vec<(String, Value)> {
    match event {
        Event::UserRegistered {
            user_id,
            username,
            display_name,
        } => vec![
            uuid("user_id", *user_id),
            string("username", username),
            string("display_name", display_name),
        ],
        Event::ProfileUpdated {
            user_id,
            display_name,
        } => vec![
            uuid("user_id", *user_id),
            string("display_name", display_name),
        ],
        Event::FriendRequested {
            requester_id,
            addressee_id,
        }
        | Event::FriendRequestAccepted {
            requester_id,
            addressee_id,
        } => vec![
            uuid("requester_id", *requester_id),
            uuid("addressee_id", *addressee_id),
        ],
        Event::FriendshipRemoved {
            removed_by,
            other_id,
            reason,
        } => vec![
            uuid("removed_by", *removed_by),
            uuid("other_id", *other_id),
            field("reason", enum_value(removal_reason_symbols(), reason)),
        ],
        Event::MessageSent {
            message_id,
            conversation_id,
            sender_id,
            recipient_id,
            text,
            client_msg_id,
        } => vec![
            uuid("message_id", *message_id),
            uuid("conversation_id", *conversation_id),
            uuid("sender_id", *sender_id),
            uuid("recipient_id", *recipient_id),
            string("text", text),
            optional_string("client_msg_id", client_msg_id.as_deref()),
        ],
        Event::MessagesRead {
            conversation_id,
            reader_id,
            up_to,
        } => vec![
            uuid("conversation_id", *conversation_id),
            uuid("reader_id", *reader_id),
            uuid("up_to", *up_to),
        ],
        Event::MessageDeleted {
            message_id,
            conversation_id,
            deleted_by,
            scope,
        } => vec![
            uuid("message_id", *message_id),
            uuid("conversation_id", *conversation_id),
            uuid("deleted_by", *deleted_by),
            field("scope", enum_value(delete_scope_symbols(), scope)),
        ],
        Event::PresenceChanged { user_id, status } => vec![
            uuid("user_id", *user_id),
            field("status", enum_value(presence_symbols(), status)),
        ],
        Event::AccountStatusChanged { user_id, status } => vec![
            uuid("user_id", *user_id),
            field("status", enum_value(account_status_symbols(), status)),
        ],
        Event::MessageDelivered {
            message_id,
            conversation_id,
            sender_id,
            recipient_id,
        } => vec![
            uuid("message_id", *message_id),
            uuid("conversation_id", *conversation_id),
            uuid("sender_id", *sender_id),
            uuid("recipient_id", *recipient_id),
        ],
        Event::NotificationRequested {
            user_id,
            kind,
            subject_id,
            item_id,
            from_id,
        } => vec![
            uuid("user_id", *user_id),
            field("kind", enum_value(notification_kind_symbols(), kind)),
            uuid("subject_id", *subject_id),
            uuid("item_id", *item_id),
            uuid("from_id", *from_id),
        ],
        Event::ServerCreated {
            server_id,
            owner_id,
            name,
            tags,
            visibility,
        } => vec![
            uuid("server_id", *server_id),
            uuid("owner_id", *owner_id),
            string("name", name),
            strings("tags", tags),
            field("visibility", enum_value(visibility_symbols(), visibility)),
        ],
        Event::ServerSubscribed { server_id, user_id }
        | Event::ServerUnsubscribed { server_id, user_id } => {
            vec![uuid("server_id", *server_id), uuid("user_id", *user_id)]
        }
        Event::ServerInvitationSent {
            invitation_id,
            server_id,
            inviter_id,
            invitee_id,
        } => vec![
            uuid("invitation_id", *invitation_id),
            uuid("server_id", *server_id),
            uuid("inviter_id", *inviter_id),
            uuid("invitee_id", *invitee_id),
        ],
        Event::ServerInvitationAnswered {
            invitation_id,
            server_id,
            invitee_id,
            outcome,
        } => vec![
            uuid("invitation_id", *invitation_id),
            uuid("server_id", *server_id),
            uuid("invitee_id", *invitee_id),
            field("outcome", enum_value(invitation_outcome_symbols(), outcome)),
        ],
        Event::PostPublished {
            post_id,
            server_id,
            author_id,
            content,
            tags,
        } => vec![
            uuid("post_id", *post_id),
            uuid("server_id", *server_id),
            uuid("author_id", *author_id),
            string("content", content),
            strings("tags", tags),
        ],
        Event::ChannelCreated {
            channel_id,
            server_id,
            name,
            created_by,
        } => vec![
            uuid("channel_id", *channel_id),
            uuid("server_id", *server_id),
            string("name", name),
            uuid("created_by", *created_by),
        ],
        Event::ChannelDeleted {
            channel_id,
            server_id,
            deleted_by,
        } => vec![
            uuid("channel_id", *channel_id),
            uuid("server_id", *server_id),
            uuid("deleted_by", *deleted_by),
        ],
        Event::ChannelJoined {
            user_id,
            server_id,
            channel_id,
        } => vec![
            uuid("user_id", *user_id),
            uuid("server_id", *server_id),
            uuid("channel_id", *channel_id),
        ],
        Event::ChannelLeft {
            user_id,
            server_id,
            channel_id,
            reason,
        } => vec![
            uuid("user_id", *user_id),
            uuid("server_id", *server_id),
            uuid("channel_id", *channel_id),
            field("reason", enum_value(channel_leave_reason_symbols(), reason)),
        ],
        Event::ChannelMessageSent {
            message_id,
            server_id,
            channel_id,
            sender_id,
            text,
            client_msg_id,
        } => vec![
            uuid("message_id", *message_id),
            uuid("server_id", *server_id),
            uuid("channel_id", *channel_id),
            uuid("sender_id", *sender_id),
            string("text", text),
            optional_string("client_msg_id", client_msg_id.as_deref()),
        ],
        Event::ChannelMessagesRead {
            server_id,
            channel_id,
            reader_id,
            up_to,
        } => vec![
            uuid("server_id", *server_id),
            uuid("channel_id", *channel_id),
            uuid("reader_id", *reader_id),
            uuid("up_to", *up_to),
        ],
    }
}

/// Rearranges current-version payload fields into the layout of an older kept version.
///
/// A field the older version lacks may only be dropped while it holds the null branch of a
/// union (the default every added field has); anything else would be silently lost.
fn project(
    mut current: Vec<(String, Value)>,
    kept: &Kept,
) -> Result<Vec<(String, Value)>, CodecError> {
    let (event_type, version) = (kept.event_type, kept.version);
    let mut projected = Vec::with_capacity(kept.payload_fields.len());
    for name in &kept.payload_fields {
        let Some(at) = current.iter().position(|(n, _)| n == name) else {
            return Err(CodecError::NotRepresentable {
                event_type,
                version,
                field: name.clone(),
            });
        };
        projected.push(current.swap_remove(at));
    }
    for (name, value) in current {
        let is_null = matches!(&value, Value::Union(_, inner) if **inner == Value::Null);
        if !is_null {
            return Err(CodecError::NotRepresentable {
                event_type,
                version,
                field: name,
            });
        }
    }
    Ok(projected)
}

/// The Avro symbols of a Rust enum, in schema order.
type Symbols<T> = &'static [(T, &'static str)];

fn removal_reason_symbols() -> Symbols<RemovalReason> {
    &[
        (RemovalReason::Declined, "DECLINED"),
        (RemovalReason::Cancelled, "CANCELLED"),
        (RemovalReason::Unfriended, "UNFRIENDED"),
    ]
}

fn delete_scope_symbols() -> Symbols<DeleteScope> {
    &[
        (DeleteScope::ForMe, "FOR_ME"),
        (DeleteScope::ForEveryone, "FOR_EVERYONE"),
    ]
}

fn presence_symbols() -> Symbols<Presence> {
    &[(Presence::Online, "ONLINE"), (Presence::Offline, "OFFLINE")]
}

fn account_status_symbols() -> Symbols<AccountStatus> {
    &[
        (AccountStatus::Active, "ACTIVE"),
        (AccountStatus::Blocked, "BLOCKED"),
        (AccountStatus::Deleted, "DELETED"),
    ]
}

fn notification_kind_symbols() -> Symbols<NotificationKind> {
    &[
        (NotificationKind::Message, "MESSAGE"),
        (NotificationKind::Invitation, "INVITATION"),
    ]
}

fn invitation_outcome_symbols() -> Symbols<InvitationOutcome> {
    &[
        (InvitationOutcome::Accepted, "ACCEPTED"),
        (InvitationOutcome::Declined, "DECLINED"),
    ]
}

fn visibility_symbols() -> Symbols<Visibility> {
    &[
        (Visibility::Public, "PUBLIC"),
        (Visibility::Private, "PRIVATE"),
    ]
}

fn channel_leave_reason_symbols() -> Symbols<ChannelLeaveReason> {
    &[
        (ChannelLeaveReason::Left, "LEFT"),
        (ChannelLeaveReason::Switched, "SWITCHED"),
        (ChannelLeaveReason::Unsubscribed, "UNSUBSCRIBED"),
    ]
}

fn enum_value<T: PartialEq>(symbols: Symbols<T>, value: &T) -> Value {
    // Every variant is listed, so the fallback (rejected by schema validation) is never taken.
    let (index, symbol) = symbols
        .iter()
        .zip(0u32..)
        .find_map(|((v, symbol), index)| (v == value).then_some((index, *symbol)))
        .unwrap_or((u32::MAX, ""));
    Value::Enum(index, symbol.to_owned())
}

// ---------------------------------------------------------------------------------------------
// Array and map blocks.
//
// Avro writes an array (or map) as blocks, each an item count followed by the items. apache-avro
// reserves room for a block's items (56 bytes each) as soon as it reads the count, before it
// reads any item, so a record of a hundred bytes claiming half a billion tags would make it
// allocate 28 GB, and abort the process. Every item takes at least one byte, so a block that
// claims more items than bytes remain cannot be read: [`check_blocks`] walks the body and
// rejects such a block before apache-avro sees it.

/// Whether `schema` has an array or a map.
fn has_blocks(schema: &Schema) -> bool {
    match schema {
        Schema::Array(_) | Schema::Map(_) => true,
        Schema::Union(union) => union.variants().iter().any(has_blocks),
        Schema::Record(record) => record.fields.iter().any(|f| has_blocks(&f.schema)),
        _ => false,
    }
}

/// Checks that [`check_blocks`] can walk every type in `schema`, and that every array item
/// takes at least one byte (what bounds a block's count by the bytes left).
fn blocks_checkable(schema: &Schema) -> Result<(), String> {
    match schema {
        Schema::Array(array) if !takes_a_byte(&array.items) => Err(
            "an array's items must take at least one byte each (the codec bounds an array block's \
             item count by the bytes left in the record)"
                .into(),
        ),
        Schema::Array(array) => blocks_checkable(&array.items),
        Schema::Map(map) => blocks_checkable(&map.types),
        Schema::Union(union) => union.variants().iter().try_for_each(blocks_checkable),
        Schema::Record(record) => record
            .fields
            .iter()
            .try_for_each(|f| blocks_checkable(&f.schema)),
        Schema::Null
        | Schema::Boolean
        | Schema::Int
        | Schema::Long
        | Schema::Float
        | Schema::Double
        | Schema::Bytes
        | Schema::String
        | Schema::Uuid
        | Schema::Enum(_)
        | Schema::Fixed(_)
        | Schema::Date
        | Schema::TimeMillis
        | Schema::TimeMicros
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => Ok(()),
        other => Err(format!(
            "a schema with arrays or maps may not use {other:?}: the codec cannot check its \
             array blocks"
        )),
    }
}

/// Whether every value of `schema` takes at least one byte of Avro binary.
fn takes_a_byte(schema: &Schema) -> bool {
    match schema {
        Schema::Null => false,
        Schema::Fixed(fixed) => fixed.size > 0,
        Schema::Record(record) => record.fields.iter().any(|f| takes_a_byte(&f.schema)),
        _ => true,
    }
}

/// Why [`check_blocks`] stopped before the end of the value.
enum BlockCheck {
    /// An array or map block claims more items than bytes remain.
    Overrun,
    /// The body is not valid Avro here; apache-avro fails at the same place, before any later
    /// block, so nothing after it needs checking.
    Invalid,
}

/// Walks one Avro binary value of `schema` at the start of `input`, checking that no array or
/// map block claims more items than bytes remain. Only schemas [`blocks_checkable`] accepts.
fn check_blocks(schema: &Schema, input: &mut &[u8]) -> Result<(), BlockCheck> {
    match schema {
        Schema::Null => Ok(()),
        Schema::Boolean => skip(input, 1),
        Schema::Float => skip(input, 4),
        Schema::Double => skip(input, 8),
        Schema::Fixed(fixed) => skip(input, fixed.size),
        Schema::Int
        | Schema::Long
        | Schema::Enum(_)
        | Schema::Date
        | Schema::TimeMillis
        | Schema::TimeMicros
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => varint(input).map(drop),
        // apache-avro reads a uuid as length-prefixed bytes, like a string.
        Schema::Bytes | Schema::String | Schema::Uuid => {
            let len = usize::try_from(varint(input)?).map_err(|_| BlockCheck::Invalid)?;
            skip(input, len)
        }
        Schema::Union(union) => {
            let branch = usize::try_from(varint(input)?)
                .ok()
                .and_then(|i| union.variants().get(i))
                .ok_or(BlockCheck::Invalid)?;
            check_blocks(branch, input)
        }
        Schema::Record(record) => record
            .fields
            .iter()
            .try_for_each(|f| check_blocks(&f.schema, input)),
        Schema::Array(array) => check_block_items(input, |input| check_blocks(&array.items, input)),
        Schema::Map(map) => check_block_items(input, |input| {
            check_blocks(&Schema::String, input)?;
            check_blocks(&map.types, input)
        }),
        // Rejected by `blocks_checkable` when the registry loads.
        _ => Err(BlockCheck::Invalid),
    }
}

/// The most items an array or map block may claim, whatever the record's size: with the
/// bound by the bytes left alone, a record of B bytes could still make apache-avro reserve
/// about 56 × B bytes. Far above what any event holds (10 tags).
const MAX_BLOCK_ITEMS: u64 = 4096;

/// Walks the blocks of an array or map, ending with the empty block.
fn check_block_items(
    input: &mut &[u8],
    mut item: impl FnMut(&mut &[u8]) -> Result<(), BlockCheck>,
) -> Result<(), BlockCheck> {
    loop {
        let count = match varint(input)? {
            0 => return Ok(()),
            // A negative count is followed by the block's size in bytes.
            n if n < 0 => {
                varint(input)?;
                n.checked_neg().ok_or(BlockCheck::Invalid)?
            }
            n => n,
        };
        // Each item (each map key, at least) takes a byte or more.
        if count.unsigned_abs() > (input.len() as u64).min(MAX_BLOCK_ITEMS) {
            return Err(BlockCheck::Overrun);
        }
        for _ in 0..count {
            item(input)?;
        }
    }
}

/// Reads a zig-zag varint as apache-avro does: at most 10 bytes.
fn varint(input: &mut &[u8]) -> Result<i64, BlockCheck> {
    let mut z = 0u64;
    for shift in 0..10 {
        let (&byte, rest) = input.split_first().ok_or(BlockCheck::Invalid)?;
        *input = rest;
        z |= u64::from(byte & 0x7f) << (shift * 7);
        if byte & 0x80 == 0 {
            return Ok(((z >> 1) as i64) ^ -((z & 1) as i64));
        }
    }
    Err(BlockCheck::Invalid)
}

fn skip(input: &mut &[u8], len: usize) -> Result<(), BlockCheck> {
    *input = input.get(len..).ok_or(BlockCheck::Invalid)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Decoding.

/// The record body being decoded. apache-avro reads it with `read_exact`; running past its end
/// is remembered, because apache-avro turns some of those failures into default values.
struct Input<'a> {
    rest: &'a [u8],
    overran: bool,
}

impl Read for Input<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.rest.is_empty() && !buf.is_empty() {
            self.overran = true;
            return Ok(0);
        }
        self.rest.read(buf)
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        if buf.len() > self.rest.len() {
            self.overran = true;
            self.rest = &[];
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.rest.read_exact(buf)
    }
}

/// The fields of a decoded record, taken in schema order.
struct Fields {
    fields: std::vec::IntoIter<(String, Value)>,
    event_type: &'static str,
    version: u32,
}

impl Fields {
    fn of(
        value: Value,
        event_type: &'static str,
        version: u32,
        name: &'static str,
    ) -> Result<Fields, CodecError> {
        match value {
            Value::Record(fields) => Ok(Fields {
                fields: fields.into_iter(),
                event_type,
                version,
            }),
            _ => Err(invalid(event_type, version, name, "is not a record")),
        }
    }

    fn invalid(&self, field: &'static str, problem: &'static str) -> CodecError {
        invalid(self.event_type, self.version, field, problem)
    }

    /// The next field, which must be called `name`.
    fn next(&mut self, name: &'static str) -> Result<Value, CodecError> {
        match self.fields.next() {
            Some((n, value)) if n == name => Ok(value),
            _ => Err(self.invalid(name, "is missing or out of order")),
        }
    }

    fn end(mut self) -> Result<(), CodecError> {
        match self.fields.next() {
            None => Ok(()),
            Some(_) => {
                Err(self.invalid("payload", "is followed by fields the codec does not know"))
            }
        }
    }

    fn uuid(&mut self, name: &'static str) -> Result<Uuid, CodecError> {
        match self.next(name)? {
            Value::Uuid(id) => Ok(id),
            _ => Err(self.invalid(name, "is not a uuid")),
        }
    }

    fn string(&mut self, name: &'static str) -> Result<String, CodecError> {
        match self.next(name)? {
            Value::String(text) => Ok(text),
            _ => Err(self.invalid(name, "is not a string")),
        }
    }

    fn optional_string(&mut self, name: &'static str) -> Result<Option<String>, CodecError> {
        match self.next(name)? {
            Value::Union(_, inner) => match *inner {
                Value::Null => Ok(None),
                Value::String(text) => Ok(Some(text)),
                _ => Err(self.invalid(name, "is not null or a string")),
            },
            _ => Err(self.invalid(name, "is not a [null, string] union")),
        }
    }

    /// An `{"type":"array","items":"string"}` field.
    fn strings(&mut self, name: &'static str) -> Result<Vec<String>, CodecError> {
        match self.next(name)? {
            Value::Array(items) => items
                .into_iter()
                .map(|item| match item {
                    Value::String(text) => Ok(text),
                    _ => Err(self.invalid(name, "is an array with an item that is not a string")),
                })
                .collect(),
            _ => Err(self.invalid(name, "is not an array of strings")),
        }
    }

    fn int(&mut self, name: &'static str) -> Result<i32, CodecError> {
        match self.next(name)? {
            Value::Int(n) => Ok(n),
            _ => Err(self.invalid(name, "is not an int")),
        }
    }

    fn timestamp(&mut self, name: &'static str) -> Result<DateTime<Utc>, CodecError> {
        match self.next(name)? {
            Value::TimestampMicros(micros) => DateTime::from_timestamp_micros(micros)
                .ok_or_else(|| self.invalid(name, "is outside the representable time range")),
            _ => Err(self.invalid(name, "is not a timestamp-micros")),
        }
    }

    fn enumeration<T: Copy>(
        &mut self,
        name: &'static str,
        symbols: Symbols<T>,
    ) -> Result<T, CodecError> {
        match self.next(name)? {
            Value::Enum(_, symbol) => symbols
                .iter()
                .find(|(_, s)| *s == symbol)
                .map(|(v, _)| *v)
                .ok_or_else(|| self.invalid(name, "has a symbol the codec does not know")),
            _ => Err(self.invalid(name, "is not an enum")),
        }
    }

    fn record(&mut self, name: &'static str) -> Result<Fields, CodecError> {
        let value = self.next(name)?;
        Fields::of(value, self.event_type, self.version, name)
    }
}

fn invalid(
    event_type: &'static str,
    version: u32,
    field: &'static str,
    problem: &'static str,
) -> CodecError {
    CodecError::InvalidField {
        event_type,
        version,
        field,
        problem,
    }
}

fn envelope_from_value(
    value: Value,
    event_type: &'static str,
    version: u32,
) -> Result<Envelope, CodecError> {
    let mut record = Fields::of(value, event_type, version, "record")?;
    let event_id = record.uuid("event_id")?;
    // The type and version are known from the fingerprint and the partition key is derived
    // from the event: these are written for outside consumers and only checked for shape.
    record.string("event_type")?;
    record.int("schema_version")?;
    let occurred_at = record.timestamp("occurred_at")?;
    let actor_id = record.uuid("actor_id")?;
    record.string("partition_key")?;
    let correlation_id = record.uuid("correlation_id")?;
    let payload = record.record("payload")?;
    record.end()?;
    Ok(Envelope {
        event_id,
        occurred_at,
        actor_id,
        correlation_id,
        event: event_from_payload(payload)?,
    })
}

fn event_from_payload(mut p: Fields) -> Result<Event, CodecError> {
    let event = match p.event_type {
        "UserRegistered" => {
            let user_id = p.uuid("user_id")?;
            let username = p.string("username")?;
            let display_name = p.string("display_name")?;
            Event::UserRegistered {
                user_id,
                username,
                display_name,
            }
        }
        "ProfileUpdated" => {
            let user_id = p.uuid("user_id")?;
            let display_name = p.string("display_name")?;
            Event::ProfileUpdated {
                user_id,
                display_name,
            }
        }
        "FriendRequested" => {
            let requester_id = p.uuid("requester_id")?;
            let addressee_id = p.uuid("addressee_id")?;
            Event::FriendRequested {
                requester_id,
                addressee_id,
            }
        }
        "FriendRequestAccepted" => {
            let requester_id = p.uuid("requester_id")?;
            let addressee_id = p.uuid("addressee_id")?;
            Event::FriendRequestAccepted {
                requester_id,
                addressee_id,
            }
        }
        "FriendshipRemoved" => {
            let removed_by = p.uuid("removed_by")?;
            let other_id = p.uuid("other_id")?;
            let reason = p.enumeration("reason", removal_reason_symbols())?;
            Event::FriendshipRemoved {
                removed_by,
                other_id,
                reason,
            }
        }
        "MessageSent" => {
            let message_id = p.uuid("message_id")?;
            let conversation_id = p.uuid("conversation_id")?;
            let sender_id = p.uuid("sender_id")?;
            let recipient_id = p.uuid("recipient_id")?;
            let text = p.string("text")?;
            let client_msg_id = p.optional_string("client_msg_id")?;
            Event::MessageSent {
                message_id,
                conversation_id,
                sender_id,
                recipient_id,
                text,
                client_msg_id,
            }
        }
        "MessagesRead" => {
            let conversation_id = p.uuid("conversation_id")?;
            let reader_id = p.uuid("reader_id")?;
            let up_to = p.uuid("up_to")?;
            Event::MessagesRead {
                conversation_id,
                reader_id,
                up_to,
            }
        }
        "MessageDeleted" => {
            let message_id = p.uuid("message_id")?;
            let conversation_id = p.uuid("conversation_id")?;
            let deleted_by = p.uuid("deleted_by")?;
            let scope = p.enumeration("scope", delete_scope_symbols())?;
            Event::MessageDeleted {
                message_id,
                conversation_id,
                deleted_by,
                scope,
            }
        }
        "PresenceChanged" => {
            let user_id = p.uuid("user_id")?;
            let status = p.enumeration("status", presence_symbols())?;
            Event::PresenceChanged { user_id, status }
        }
        "AccountStatusChanged" => {
            let user_id = p.uuid("user_id")?;
            let status = p.enumeration("status", account_status_symbols())?;
            Event::AccountStatusChanged { user_id, status }
        }
        "MessageDelivered" => {
            let message_id = p.uuid("message_id")?;
            let conversation_id = p.uuid("conversation_id")?;
            let sender_id = p.uuid("sender_id")?;
            let recipient_id = p.uuid("recipient_id")?;
            Event::MessageDelivered {
                message_id,
                conversation_id,
                sender_id,
                recipient_id,
            }
        }
        "NotificationRequested" => {
            let user_id = p.uuid("user_id")?;
            let kind = p.enumeration("kind", notification_kind_symbols())?;
            let subject_id = p.uuid("subject_id")?;
            let item_id = p.uuid("item_id")?;
            let from_id = p.uuid("from_id")?;
            Event::NotificationRequested {
                user_id,
                kind,
                subject_id,
                item_id,
                from_id,
            }
        }
        "ServerCreated" => {
            let server_id = p.uuid("server_id")?;
            let owner_id = p.uuid("owner_id")?;
            let name = p.string("name")?;
            let tags = p.strings("tags")?;
            let visibility = p.enumeration("visibility", visibility_symbols())?;
            Event::ServerCreated {
                server_id,
                owner_id,
                name,
                tags,
                visibility,
            }
        }
        "ServerSubscribed" => {
            let server_id = p.uuid("server_id")?;
            let user_id = p.uuid("user_id")?;
            Event::ServerSubscribed { server_id, user_id }
        }
        "ServerUnsubscribed" => {
            let server_id = p.uuid("server_id")?;
            let user_id = p.uuid("user_id")?;
            Event::ServerUnsubscribed { server_id, user_id }
        }
        "ServerInvitationSent" => {
            let invitation_id = p.uuid("invitation_id")?;
            let server_id = p.uuid("server_id")?;
            let inviter_id = p.uuid("inviter_id")?;
            let invitee_id = p.uuid("invitee_id")?;
            Event::ServerInvitationSent {
                invitation_id,
                server_id,
                inviter_id,
                invitee_id,
            }
        }
        "ServerInvitationAnswered" => {
            let invitation_id = p.uuid("invitation_id")?;
            let server_id = p.uuid("server_id")?;
            let invitee_id = p.uuid("invitee_id")?;
            let outcome = p.enumeration("outcome", invitation_outcome_symbols())?;
            Event::ServerInvitationAnswered {
                invitation_id,
                server_id,
                invitee_id,
                outcome,
            }
        }
        "PostPublished" => {
            let post_id = p.uuid("post_id")?;
            let server_id = p.uuid("server_id")?;
            let author_id = p.uuid("author_id")?;
            let content = p.string("content")?;
            let tags = p.strings("tags")?;
            Event::PostPublished {
                post_id,
                server_id,
                author_id,
                content,
                tags,
            }
        }
        "ChannelCreated" => {
            let channel_id = p.uuid("channel_id")?;
            let server_id = p.uuid("server_id")?;
            let name = p.string("name")?;
            let created_by = p.uuid("created_by")?;
            Event::ChannelCreated {
                channel_id,
                server_id,
                name,
                created_by,
            }
        }
        "ChannelDeleted" => {
            let channel_id = p.uuid("channel_id")?;
            let server_id = p.uuid("server_id")?;
            let deleted_by = p.uuid("deleted_by")?;
            Event::ChannelDeleted {
                channel_id,
                server_id,
                deleted_by,
            }
        }
        "ChannelJoined" => {
            let user_id = p.uuid("user_id")?;
            let server_id = p.uuid("server_id")?;
            let channel_id = p.uuid("channel_id")?;
            Event::ChannelJoined {
                user_id,
                server_id,
                channel_id,
            }
        }
        "ChannelLeft" => {
            let user_id = p.uuid("user_id")?;
            let server_id = p.uuid("server_id")?;
            let channel_id = p.uuid("channel_id")?;
            let reason = p.enumeration("reason", channel_leave_reason_symbols())?;
            Event::ChannelLeft {
                user_id,
                server_id,
                channel_id,
                reason,
            }
        }
        "ChannelMessageSent" => {
            let message_id = p.uuid("message_id")?;
            let server_id = p.uuid("server_id")?;
            let channel_id = p.uuid("channel_id")?;
            let sender_id = p.uuid("sender_id")?;
            let text = p.string("text")?;
            let client_msg_id = p.optional_string("client_msg_id")?;
            Event::ChannelMessageSent {
                message_id,
                server_id,
                channel_id,
                sender_id,
                text,
                client_msg_id,
            }
        }
        "ChannelMessagesRead" => {
            let server_id = p.uuid("server_id")?;
            let channel_id = p.uuid("channel_id")?;
            let reader_id = p.uuid("reader_id")?;
            let up_to = p.uuid("up_to")?;
            Event::ChannelMessagesRead {
                server_id,
                channel_id,
                reader_id,
                up_to,
            }
        }
        _ => {
            return Err(p.invalid(
                "payload",
                "belongs to an event type the codec does not know",
            ));
        }
    };
    p.end()?;
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rabin_matches_the_spec_test_vector_for_int() {
        // Avro's own fingerprint tests: the schema "int" has CRC-64-AVRO 0x7275d51a3f395c8f
        // (8247732601305521295), so its single-object header is C3 01 8F 5C 39 3F 1A D5 75 72.
        assert_eq!(rabin(br#""int""#), 0x7275_d51a_3f39_5c8f);
        assert_eq!(
            rabin(br#""int""#).to_le_bytes(),
            [0x8f, 0x5c, 0x39, 0x3f, 0x1a, 0xd5, 0x75, 0x72]
        );
        // The empty string fingerprints to the algorithm's initial value.
        assert_eq!(rabin(b""), RABIN_EMPTY);
    }

    #[test]
    fn rabin_matches_apache_avro_where_their_canonical_forms_agree() {
        // Without logical types apache-avro's canonical form is the spec's, so both must agree.
        let json = r#"{"type":"record","name":"R","namespace":"a.b","fields":[
            {"name":"e","type":{"type":"enum","name":"E","symbols":["X","Y"]}},
            {"name":"o","type":["null","string"],"default":null},
            {"name":"l","type":{"type":"array","items":"long"}},
            {"name":"m","type":{"type":"map","values":"E"}},
            {"name":"f","type":{"type":"fixed","name":"F","size":4}}]}"#;
        let schema = Schema::parse_str(json).expect("test schema parses");
        let mut ours = String::new();
        parsing_canonical_form(&schema, &None, &mut ours).expect("canonical form");
        assert_eq!(ours, schema.canonical_form());
        let theirs = schema.fingerprint::<apache_avro::rabin::Rabin>().bytes;
        assert_eq!(rabin(ours.as_bytes()).to_le_bytes().to_vec(), theirs);
    }

    #[test]
    fn canonical_form_reduces_logical_types_to_their_primitive() {
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"R","namespace":"n","doc":"dropped","fields":[
                {"name":"u","type":{"type":"string","logicalType":"uuid"},"doc":"dropped"},
                {"name":"t","type":{"type":"long","logicalType":"timestamp-micros"}}]}"#,
        )
        .expect("test schema parses");
        let mut form = String::new();
        parsing_canonical_form(&schema, &None, &mut form).expect("canonical form");
        assert_eq!(
            form,
            r#"{"name":"n.R","type":"record","fields":[{"name":"u","type":"string"},{"name":"t","type":"long"}]}"#
        );
    }

    #[test]
    fn message_sent_v2_canonical_form_is_the_spec_form() {
        let kept = REGISTRY.get("MessageSent", 2).expect("kept");
        let mut form = String::new();
        parsing_canonical_form(&kept.schema, &None, &mut form).expect("canonical form");
        assert_eq!(
            form,
            concat!(
                r#"{"name":"missive.events.MessageSent","type":"record","fields":["#,
                r#"{"name":"event_id","type":"string"},{"name":"event_type","type":"string"},"#,
                r#"{"name":"schema_version","type":"int"},{"name":"occurred_at","type":"long"},"#,
                r#"{"name":"actor_id","type":"string"},{"name":"partition_key","type":"string"},"#,
                r#"{"name":"correlation_id","type":"string"},{"name":"payload","type":"#,
                r#"{"name":"missive.events.MessageSentPayload","type":"record","fields":["#,
                r#"{"name":"message_id","type":"string"},{"name":"conversation_id","type":"string"},"#,
                r#"{"name":"sender_id","type":"string"},{"name":"recipient_id","type":"string"},"#,
                r#"{"name":"text","type":"string"},{"name":"client_msg_id","type":["null","string"]}]}}]}"#,
            )
        );
    }

    #[test]
    fn registry_current_versions_are_the_highest_kept() {
        for kept in &REGISTRY.kept {
            let current = REGISTRY.current_of(kept);
            assert_eq!(current.event_type, kept.event_type);
            assert!(current.version >= kept.version);
            assert_eq!(
                Some(current.version),
                REGISTRY
                    .kept
                    .iter()
                    .filter(|k| k.event_type == kept.event_type)
                    .map(|k| k.version)
                    .max()
            );
        }
    }

    #[test]
    fn registry_rejects_duplicate_and_misnamed_schemas() {
        let twice = [
            source!("MessageSent", 1, "message_sent.v1.avsc"),
            source!("MessageSent", 1, "message_sent.v1.avsc"),
        ];
        assert!(Registry::load(&twice).is_err());
        let misnamed = [source!("MessageDeleted", 1, "message_sent.v1.avsc")];
        let problem = Registry::load(&misnamed)
            .err()
            .expect("misnamed schema is rejected");
        assert!(
            problem.contains("expected missive.events.MessageDeleted"),
            "{problem}"
        );
    }

    fn payload(fields: Vec<(&str, Value)>) -> Fields {
        let fields = fields.into_iter().map(|(n, v)| field(n, v)).collect();
        Fields::of(Value::Record(fields), "PostPublished", 1, "payload").expect("a record")
    }

    #[test]
    fn string_arrays_of_the_wrong_shape_are_named_errors() {
        let ok = payload(vec![(
            "tags",
            Value::Array(vec![
                Value::String("a".into()),
                Value::String(String::new()),
            ]),
        )])
        .strings("tags");
        assert_eq!(ok.ok(), Some(vec!["a".to_owned(), String::new()]));
        assert_eq!(
            payload(vec![("tags", Value::Array(Vec::new()))])
                .strings("tags")
                .ok(),
            Some(Vec::new())
        );
        for (value, problem) in [
            (
                Value::Array(vec![Value::String("a".into()), Value::Int(1)]),
                "is an array with an item that is not a string",
            ),
            (Value::String("a".into()), "is not an array of strings"),
            (Value::Null, "is not an array of strings"),
        ] {
            match payload(vec![("tags", value)]).strings("tags") {
                Err(CodecError::InvalidField {
                    field: "tags",
                    problem: p,
                    ..
                }) => assert_eq!(p, problem),
                other => panic!("expected InvalidField, got {other:?}"),
            }
        }
    }

    #[test]
    fn only_schemas_with_arrays_have_their_blocks_checked() {
        for (event_type, expected) in [
            ("ServerCreated", true),
            ("PostPublished", true),
            ("MessageSent", false),
            ("ServerInvitationAnswered", false),
        ] {
            let kept = REGISTRY.current(event_type).expect("kept");
            assert_eq!(kept.has_blocks, expected, "{event_type}");
        }
        let nulls = Schema::parse_str(
            r#"{"type":"record","name":"R","fields":[
                {"name":"n","type":{"type":"array","items":"null"}}]}"#,
        )
        .expect("test schema parses");
        assert!(has_blocks(&nulls));
        assert!(blocks_checkable(&nulls).is_err());
    }

    #[test]
    fn block_check_walks_maps_unions_and_negative_counts() {
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"R","fields":[
                {"name":"o","type":["null","string"]},
                {"name":"m","type":{"type":"map","values":{"type":"array","items":"long"}}},
                {"name":"b","type":"boolean"}]}"#,
        )
        .expect("test schema parses");
        assert!(has_blocks(&schema));
        blocks_checkable(&schema).expect("checkable");
        // o = "x"; m = {"k": [1, 2]} as one block of count -1 and size 6; b = true.
        let good = [2, 2, b'x', 1, 12, 2, b'k', 4, 2, 4, 0, 0, 1];
        let value =
            apache_avro::from_avro_datum(&schema, &mut &good[..], None).expect("valid datum");
        assert!(matches!(value, Value::Record(_)));
        assert!(check_blocks(&schema, &mut &good[..]).is_ok());
        // The map claims 20 entries, with 8 bytes left.
        let over = [2, 2, b'x', 40, 2, b'k', 4, 2, 4, 0, 0, 1];
        assert!(matches!(
            check_blocks(&schema, &mut &over[..]),
            Err(BlockCheck::Overrun)
        ));
        // A union branch that does not exist stops the walk: apache-avro reports it.
        let bad_branch = [8, 0, 1];
        assert!(matches!(
            check_blocks(&schema, &mut &bad_branch[..]),
            Err(BlockCheck::Invalid)
        ));
    }

    #[test]
    fn input_remembers_reading_past_its_end() {
        let mut input = Input {
            rest: &[1, 2],
            overran: false,
        };
        let mut two = [0u8; 2];
        input.read_exact(&mut two).expect("two bytes are there");
        assert!(!input.overran);
        let mut one = [0u8; 1];
        assert!(input.read_exact(&mut one).is_err());
        assert!(input.overran);
    }
}
