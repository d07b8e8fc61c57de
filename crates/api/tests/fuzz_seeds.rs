//! Replays the fuzz targets' seed corpus (`fuzz/seeds/`) on stable, so that CI checks that no
//! seed makes a target panic, without nightly or cargo-fuzz (see `fuzz/README.md`).
//!
//! A seed's file name says what it must do: `ok-*` must be accepted (the record decodes, the
//! command passes every check), `bad-*` must be refused (an error, a 4xx); any other name (a
//! crash the fuzzer found, once fixed) must only not panic.
//!
//! The `ok-` and `bad-` seeds are written by the ignored test `write_seeds`, with the codec
//! itself, so they are real records:
//! `cargo test -p missive-api --test fuzz_seeds -- --ignored write_seeds`.

use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use axum::http::StatusCode;
use missive_api::fuzzing::{self, COMMANDS, Rejected};
use missive_events::codec;
use serde_json::{Value, json};
use uuid::Uuid;

fn seed_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/seeds")
        .join(target)
}

/// Every seed of a target, by file name.
fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = seed_dir(target);
    let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut seeds: Vec<(String, Vec<u8>)> = entries
        .map(|entry| {
            let path = entry.expect("a readable directory entry").path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .expect("seed names are UTF-8")
                .to_owned();
            let bytes = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (name, bytes)
        })
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "{} holds no seeds", dir.display());
    seeds
}

/// Runs every seed of `target` through `run` (`Ok` = accepted) and checks what its name
/// promises; reports every seed that broke its promise at once.
fn replay<T, E: std::fmt::Debug>(target: &str, run: impl Fn(&[u8]) -> Result<T, E>) {
    let seeds = seeds(target);
    let mut failures = Vec::new();
    for (name, bytes) in &seeds {
        let outcome = catch_unwind(AssertUnwindSafe(|| run(bytes).map(drop)));
        let failure = match outcome {
            Err(panic) => Some(format!(
                "panicked: {}",
                panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)")
            )),
            Ok(Err(e)) if name.starts_with("ok-") => Some(format!("refused: {e:?}")),
            Ok(Ok(())) if name.starts_with("bad-") => Some("accepted".to_owned()),
            Ok(_) => None,
        };
        if let Some(failure) = failure {
            failures.push(format!("{target}/{name}: {failure}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    for prefix in ["ok-", "bad-"] {
        assert!(
            seeds.iter().any(|(name, _)| name.starts_with(prefix)),
            "{target} has no {prefix} seed"
        );
    }
}

#[test]
fn every_decode_event_seed_keeps_its_promise() {
    replay("decode_event", fuzzing::decode_event);
}

#[test]
fn every_parse_command_seed_keeps_its_promise() {
    replay("parse_command", fuzzing::parse_command);
}

#[test]
fn every_kept_schema_and_every_command_has_seeds() {
    let decode: Vec<String> = seeds("decode_event").into_iter().map(|s| s.0).collect();
    for (event_type, version, _) in codec::known_schemas() {
        let name = format!("ok-{event_type}-v{version}.bin");
        assert!(
            decode.contains(&name),
            "no seed {name}: regenerate the seeds (see fuzz/README.md)"
        );
    }
    let parse: Vec<String> = seeds("parse_command").into_iter().map(|s| s.0).collect();
    for command in COMMANDS {
        for prefix in ["ok", "bad"] {
            let start = format!("{prefix}-{command}-");
            assert!(
                parse.iter().any(|name| name.starts_with(&start)),
                "no parse_command seed {start}*"
            );
        }
    }
}

/// Too big for a seed (libFuzzer would raise its input size limit to match).
#[test]
fn a_body_over_the_limit_is_413() {
    let body = json!({ "text": "x".repeat(missive_api::MAX_BODY_BYTES) }).to_string();
    let input = fuzzing::command_input("send", body.as_bytes()).expect("a command");
    match fuzzing::parse_command(&input) {
        Err(Rejected::Http(e)) => assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE, "{e:?}"),
        other => panic!("expected 413, got {other:?}"),
    }
}

/// Too big for a seed, as above.
#[test]
fn an_acknowledgement_of_too_many_ids_is_a_bad_frame() {
    let ids: Vec<Uuid> = (0..=missive_service::MAX_ACK_IDS as u128)
        .map(Uuid::from_u128)
        .collect();
    let frame = json!({ "type": "ack", "message_ids": ids }).to_string();
    let input = fuzzing::command_input("ws_frame", frame.as_bytes()).expect("a command");
    match fuzzing::parse_command(&input) {
        Err(Rejected::Frame(f)) => assert_eq!(f["code"], "bad_frame", "{f}"),
        other => panic!("expected a bad_frame error, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The seed generator.

/// Writes the `ok-` and `bad-` seeds of both targets (replacing the previous ones; other
/// seeds, such as crashes, are kept). Deterministic: running it again changes nothing unless
/// the codec or the schemas changed.
#[test]
#[ignore = "writes fuzz/seeds; run it after adding a schema or a command"]
fn write_seeds() {
    write("decode_event", decode_seeds());
    write("parse_command", command_seeds());
}

fn write(target: &str, seeds: Vec<(String, Vec<u8>)>) {
    let dir = seed_dir(target);
    fs::create_dir_all(&dir).expect("create the seed directory");
    for entry in fs::read_dir(&dir).expect("read the seed directory") {
        let path = entry.expect("a directory entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("ok-") || name.starts_with("bad-") {
            fs::remove_file(&path).expect("remove an old seed");
        }
    }
    for (name, bytes) in seeds {
        fs::write(dir.join(&name), bytes).expect("write a seed");
    }
}

/// How [`Writer`] fills a record.
#[derive(Clone, Copy, PartialEq)]
enum Fill {
    /// Every string set, unions on their last branch, two items per array, the last symbol.
    Full,
    /// Empty strings and arrays, unions on `null`, the first symbol.
    Minimal,
}

/// The one defect [`Writer`] puts in a record, at the first place it fits.
#[derive(Clone, Copy, PartialEq)]
enum Defect {
    None,
    EnumIndex,
    InvalidUtf8,
    InvalidUuid,
    HugeStringLength,
    OverlongVarint,
    HugeArrayBlock,
    NegativeArrayBlock,
    UnionBranch,
    TimestampOutOfRange,
}

/// Writes the Avro binary body of a record from its schema's JSON, so that every kept schema,
/// old or new, gets a seed without a list of event types to maintain.
struct Writer {
    event_type: &'static str,
    version: u32,
    fill: Fill,
    defect: Defect,
    applied: bool,
    out: Vec<u8>,
}

impl Writer {
    fn record(event_type: &'static str, version: u32, fill: Fill, defect: Defect) -> Vec<u8> {
        let schema: Value =
            serde_json::from_str(codec::schema_json(event_type, version).expect("a kept schema"))
                .expect("a schema is JSON");
        let mut writer = Writer {
            event_type,
            version,
            fill,
            defect,
            applied: defect == Defect::None,
            out: Vec::new(),
        };
        writer.out.extend_from_slice(&codec::MARKER);
        writer
            .out
            .extend_from_slice(&codec::fingerprint(event_type, version).expect("kept"));
        writer.value(&schema, "record");
        assert!(
            writer.applied,
            "{event_type} v{version} has no place for the defect"
        );
        writer.out
    }

    /// Whether to put `defect` here (once).
    fn defect(&mut self, defect: Defect) -> bool {
        let now = !self.applied && self.defect == defect;
        self.applied |= now;
        now
    }

    fn long(&mut self, n: i64) {
        let mut z = ((n << 1) ^ (n >> 63)) as u64;
        loop {
            let byte = (z & 0x7f) as u8;
            z >>= 7;
            if z == 0 {
                self.out.push(byte);
                return;
            }
            self.out.push(byte | 0x80);
        }
    }

    fn bytes(&mut self, bytes: &[u8]) {
        if self.defect(Defect::HugeStringLength) {
            return self.long(1 << 60);
        }
        if self.defect(Defect::OverlongVarint) {
            return self.out.extend_from_slice(&[0xff; 11]);
        }
        self.long(bytes.len() as i64);
        self.out.extend_from_slice(bytes);
    }

    fn value(&mut self, schema: &Value, field: &str) {
        match schema {
            Value::String(name) => self.primitive(name, None, field),
            Value::Array(branches) => {
                let null = branches.iter().position(|b| b == "null");
                if self.defect(Defect::UnionBranch) {
                    return self.long(branches.len() as i64 + 5);
                }
                let branch = match (self.fill, null) {
                    (Fill::Minimal, Some(null)) => null,
                    _ => branches.len() - 1,
                };
                self.long(branch as i64);
                self.value(&branches[branch], field);
            }
            Value::Object(object) => {
                let kind = object["type"].as_str().expect("a type name");
                match kind {
                    "record" => {
                        for f in object["fields"].as_array().expect("fields") {
                            let name = f["name"].as_str().expect("a field name");
                            self.value(&f["type"], name);
                        }
                    }
                    "enum" => {
                        let symbols = object["symbols"].as_array().expect("symbols").len();
                        let index = if self.defect(Defect::EnumIndex) {
                            symbols + 3
                        } else if self.fill == Fill::Full {
                            symbols - 1
                        } else {
                            0
                        };
                        self.long(index as i64);
                    }
                    "array" => {
                        if self.defect(Defect::HugeArrayBlock) {
                            return self.long(1 << 40);
                        }
                        if self.defect(Defect::NegativeArrayBlock) {
                            self.long(-(1 << 40));
                            return self.long(3);
                        }
                        if self.fill == Fill::Full {
                            self.long(2);
                            self.value(&object["items"], "Seed");
                            self.value(&object["items"], "tag_2");
                        }
                        self.long(0);
                    }
                    primitive => self.primitive(primitive, object["logicalType"].as_str(), field),
                }
            }
            other => panic!("{}: unexpected schema {other}", self.event_type),
        }
    }

    fn primitive(&mut self, kind: &str, logical: Option<&str>, field: &str) {
        match (kind, logical) {
            ("null", _) => {}
            ("boolean", _) => self.out.push(1),
            ("string", Some("uuid")) => {
                if self.defect(Defect::InvalidUuid) {
                    return self.bytes(b"not-a-uuid");
                }
                let id = Uuid::new_v5(&Uuid::NAMESPACE_OID, field.as_bytes());
                self.bytes(id.hyphenated().to_string().as_bytes());
            }
            ("string", _) => {
                if self.defect(Defect::InvalidUtf8) {
                    return self.bytes(b"\xff\xfe bad");
                }
                let text = match (field, self.fill) {
                    ("event_type", _) => self.event_type.to_owned(),
                    (_, Fill::Minimal) => String::new(),
                    ("tag_2", _) => "fuzz".to_owned(),
                    (_, Fill::Full) => format!("{field} ✓ naïve 𝄞 text"),
                };
                self.bytes(text.as_bytes());
            }
            ("int", _) if field == "schema_version" => self.long(i64::from(self.version)),
            ("long", Some("timestamp-micros")) => {
                if self.defect(Defect::TimestampOutOfRange) {
                    return self.long(i64::MAX);
                }
                // 2026-01-02T03:04:05.678901Z
                self.long(1_767_323_045_678_901);
            }
            ("int" | "long", _) => self.long(1),
            (other, _) => panic!("{}: unexpected type {other}", self.event_type),
        }
    }
}

/// What a seed record must do.
fn expect_decodes(name: &str, bytes: &[u8]) -> missive_events::Envelope {
    fuzzing::decode_event(bytes).unwrap_or_else(|e| panic!("{name} does not decode: {e}"))
}

fn expect_refused(name: &str, bytes: &[u8]) {
    if let Ok(envelope) = fuzzing::decode_event(bytes) {
        panic!("{name} decodes: {envelope:?}");
    }
}

/// A seed the decoder must refuse.
fn bad(name: String, bytes: Vec<u8>) -> (String, Vec<u8>) {
    expect_refused(&name, &bytes);
    (name, bytes)
}

fn decode_seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds = Vec::new();
    let mut good = Vec::new();
    for (event_type, version, _) in codec::known_schemas() {
        for (fill, suffix) in [(Fill::Full, ""), (Fill::Minimal, "-minimal")] {
            let name = format!("ok-{event_type}-v{version}{suffix}.bin");
            let written = Writer::record(event_type, version, fill, Defect::None);
            // Written again by the codec itself, as the version it is.
            let envelope = expect_decodes(&name, &written);
            let record = codec::encode_with_version(&envelope, version)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            expect_decodes(&name, &record);
            good.push((name, record));
        }
    }
    for (name, record) in &good {
        let Some(stem) = name
            .strip_prefix("ok-")
            .and_then(|n| n.strip_suffix(".bin"))
        else {
            continue;
        };
        if stem.ends_with("-minimal") {
            continue;
        }
        seeds.push(bad(
            format!("bad-truncated-{stem}.bin"),
            record[..record.len() - 1].to_vec(),
        ));
        if ["MessageSent", "NotificationRequested", "ServerCreated"]
            .iter()
            .any(|t| stem.starts_with(&format!("{t}-v")))
        {
            let framed = fuzzing::confluent_framed(record).expect("a kept schema");
            let confluent = format!("ok-confluent-{stem}.bin");
            expect_decodes(&confluent, &framed);
            seeds.push((confluent, framed));
        }
    }
    let current = |event_type: &'static str| {
        let version = codec::schema_version(event_type).expect("a kept event type");
        (event_type, version)
    };
    let defects = [
        (
            "enum-symbol-out-of-range",
            "PresenceChanged",
            Defect::EnumIndex,
        ),
        ("invalid-utf8-string", "UserRegistered", Defect::InvalidUtf8),
        ("invalid-uuid", "MessageSent", Defect::InvalidUuid),
        (
            "huge-string-length",
            "ProfileUpdated",
            Defect::HugeStringLength,
        ),
        ("overlong-varint", "ChannelCreated", Defect::OverlongVarint),
        ("huge-array-block", "ServerCreated", Defect::HugeArrayBlock),
        (
            "negative-array-block",
            "PostPublished",
            Defect::NegativeArrayBlock,
        ),
        (
            "union-branch-out-of-range",
            "MessageSent",
            Defect::UnionBranch,
        ),
        (
            "timestamp-out-of-range",
            "MessagesRead",
            Defect::TimestampOutOfRange,
        ),
    ];
    for (what, event_type, defect) in defects {
        let (event_type, version) = current(event_type);
        let record = Writer::record(event_type, version, Fill::Full, defect);
        seeds.push(bad(format!("bad-{what}-{event_type}.bin"), record));
    }
    let (event_type, version) = current("ChannelJoined");
    let record = Writer::record(event_type, version, Fill::Full, Defect::None);
    let mut trailing = record.clone();
    trailing.push(0);
    seeds.push(bad(format!("bad-trailing-byte-{event_type}.bin"), trailing));
    seeds.push(bad(
        format!("bad-header-only-{event_type}.bin"),
        record[..codec::HEADER_LEN].to_vec(),
    ));
    let mut unknown = record.clone();
    unknown[2..codec::HEADER_LEN].copy_from_slice(&[0; 8]);
    seeds.push(bad("bad-unknown-fingerprint.bin".into(), unknown));
    let mut confluent = vec![0, 0xff, 0xff, 0xff, 0xff];
    confluent.extend_from_slice(&record[codec::HEADER_LEN..]);
    seeds.push(bad("bad-confluent-unknown-schema-id.bin".into(), confluent));
    let (event_type, version) = current("ServerCreated");
    let record = Writer::record(event_type, version, Fill::Full, Defect::None);
    seeds.push(bad(
        format!("bad-truncated-half-{event_type}.bin"),
        record[..record.len() / 2].to_vec(),
    ));
    seeds.push(bad("bad-empty.bin".into(), Vec::new()));
    seeds.push(bad("bad-marker-only.bin".into(), codec::MARKER.to_vec()));
    seeds.push(bad(
        "bad-not-avro-json.bin".into(),
        br#"{"event":1}"#.to_vec(),
    ));
    seeds.extend(good);
    seeds
}

fn command_seeds() -> Vec<(String, Vec<u8>)> {
    let uuid = "0199a8b0-7c6e-7b8a-9f00-1234567890ab";
    let long_text = json!({ "text": "x".repeat(4097) }).to_string();
    let eleven_tags =
        json!({ "name": "Tagged", "tags": (0..11).map(|i| format!("t{i}")).collect::<Vec<_>>() })
            .to_string();
    let long_name = json!({ "display_name": "é".repeat(65) }).to_string();
    let ack = json!({ "type": "ack", "message_ids": [uuid, uuid, Uuid::from_u128(1)] }).to_string();
    let up_to = json!({ "up_to": uuid }).to_string();
    let invitee = json!({ "user_id": uuid }).to_string();
    let cases: &[(&str, &str, &str, &[u8])] = &[
        ("ok", "register", "minimal", br#"{"username":"alice"}"#),
        (
            "ok",
            "register",
            "display-name",
            r#"{"username":"Alice_1.b-c","display_name":"Alice Ø 🌍"}"#.as_bytes(),
        ),
        (
            "bad",
            "register",
            "username-too-short",
            br#"{"username":"al"}"#,
        ),
        (
            "bad",
            "register",
            "username-leading-underscore",
            br#"{"username":"_bob"}"#,
        ),
        (
            "bad",
            "register",
            "username-not-ascii",
            r#"{"username":"bøb"}"#.as_bytes(),
        ),
        (
            "bad",
            "register",
            "display-name-blank",
            br#"{"username":"bob","display_name":"  "}"#,
        ),
        (
            "bad",
            "register",
            "display-name-bidi-override",
            br#"{"username":"bob","display_name":"a\u202Eb"}"#,
        ),
        (
            "bad",
            "register",
            "unknown-field",
            br#"{"username":"bob","admin":true}"#,
        ),
        (
            "bad",
            "register",
            "duplicate-field",
            br#"{"username":"bob","username":"eve"}"#,
        ),
        ("bad", "register", "wrong-type", br#"{"username":1}"#),
        ("bad", "register", "not-an-object", b"[\"bob\"]"),
        ("bad", "register", "null", b"null"),
        ("bad", "register", "truncated-json", br#"{"username":"bo"#),
        ("bad", "register", "empty-body", b""),
        (
            "bad",
            "register",
            "invalid-utf8",
            b"{\"username\":\"\xff\xfe\"}",
        ),
        ("bad", "register", "deep-nesting", &[b'['; 200]),
        (
            "ok",
            "profile",
            "name",
            r#"{"display_name":"Bob ✓"}"#.as_bytes(),
        ),
        ("bad", "profile", "empty-name", br#"{"display_name":""}"#),
        ("bad", "profile", "name-too-long", long_name.as_bytes()),
        ("bad", "profile", "missing-field", b"{}"),
        ("ok", "send", "text", br#"{"text":"hi"}"#),
        (
            "ok",
            "send",
            "client-msg-id",
            "{\"text\":\"multi\\nline\\ttext ✓\",\"client_msg_id\":\"c-1\"}".as_bytes(),
        ),
        ("bad", "send", "blank-text", br#"{"text":"   "}"#),
        (
            "bad",
            "send",
            "control-character",
            br#"{"text":"ring\u0007"}"#,
        ),
        ("bad", "send", "text-too-long", long_text.as_bytes()),
        (
            "bad",
            "send",
            "client-msg-id-with-space",
            br#"{"text":"hi","client_msg_id":"has space"}"#,
        ),
        (
            "bad",
            "send",
            "client-msg-id-empty",
            br#"{"text":"hi","client_msg_id":""}"#,
        ),
        ("bad", "send", "lone-surrogate", br#"{"text":"\ud800"}"#),
        ("ok", "read", "up-to", up_to.as_bytes()),
        ("bad", "read", "not-a-uuid", br#"{"up_to":"nope"}"#),
        ("bad", "read", "null-up-to", br#"{"up_to":null}"#),
        ("ok", "presence", "online", br#"{"status":"online"}"#),
        ("ok", "presence", "offline", br#"{"status":"offline"}"#),
        ("bad", "presence", "unknown-status", br#"{"status":"away"}"#),
        ("bad", "presence", "upper-case", br#"{"status":"ONLINE"}"#),
        (
            "ok",
            "create_server",
            "minimal",
            br#"{"name":"Rustaceans"}"#,
        ),
        (
            "ok",
            "create_server",
            "tags-private",
            r#"{"name":"  Rust Café ","tags":["Rust","rust","web-dev"],"visibility":"private"}"#
                .as_bytes(),
        ),
        (
            "bad",
            "create_server",
            "name-too-short",
            br#"{"name":"ab"}"#,
        ),
        (
            "bad",
            "create_server",
            "tag-with-space",
            br#"{"name":"Okay","tags":["a b"]}"#,
        ),
        (
            "bad",
            "create_server",
            "eleven-tags",
            eleven_tags.as_bytes(),
        ),
        (
            "bad",
            "create_server",
            "unknown-visibility",
            br#"{"name":"Okay","visibility":"secret"}"#,
        ),
        ("ok", "invite", "user", invitee.as_bytes()),
        (
            "bad",
            "invite",
            "self",
            br#"{"user_id":"00000000-0000-0000-0000-00000000000a"}"#,
        ),
        ("bad", "invite", "not-a-uuid", br#"{"user_id":"x"}"#),
        ("ok", "post", "content", br#"{"content":"Hello"}"#),
        (
            "ok",
            "post",
            "tags",
            br#"{"content":"News","tags":["News","release"]}"#,
        ),
        ("bad", "post", "empty-content", br#"{"content":""}"#),
        (
            "bad",
            "post",
            "bad-tag",
            br##"{"content":"x","tags":["#"]}"##,
        ),
        ("ok", "channel", "name", br#"{"name":"general"}"#),
        ("bad", "channel", "upper-case", br#"{"name":"General"}"#),
        ("bad", "channel", "leading-dash", br#"{"name":"-x"}"#),
        ("bad", "channel", "empty", br#"{"name":""}"#),
        ("ok", "channel_send", "text", br#"{"text":"hi"}"#),
        (
            "ok",
            "channel_send",
            "client-msg-id",
            br#"{"text":"hi","client_msg_id":"k"}"#,
        ),
        ("bad", "channel_send", "empty-text", br#"{"text":""}"#),
        (
            "bad",
            "channel_send",
            "client-msg-id-not-ascii",
            r#"{"text":"hi","client_msg_id":"é"}"#.as_bytes(),
        ),
        ("ok", "ws_frame", "ping", br#"{"type":"ping"}"#),
        ("ok", "ws_frame", "ack", ack.as_bytes()),
        (
            "ok",
            "ws_frame",
            "ack-none",
            br#"{"type":"ack","message_ids":[]}"#,
        ),
        ("bad", "ws_frame", "unknown-type", br#"{"type":"pong"}"#),
        ("bad", "ws_frame", "no-type", b"{}"),
        ("bad", "ws_frame", "not-json", b"ping"),
        ("bad", "ws_frame", "binary", b"\xff\xfe\x00\x01"),
        (
            "bad",
            "ws_frame",
            "ack-not-a-uuid",
            br#"{"type":"ack","message_ids":["x"]}"#,
        ),
        ("bad", "ws_frame", "ack-without-ids", br#"{"type":"ack"}"#),
    ];
    cases
        .iter()
        .map(|&(verdict, command, what, body)| {
            let name = format!("{verdict}-{command}-{what}.bin");
            let input = fuzzing::command_input(command, body).expect("a command in COMMANDS");
            let outcome = fuzzing::parse_command(&input);
            assert_eq!(outcome.is_ok(), verdict == "ok", "{name}: {outcome:?}");
            (name, input)
        })
        .collect()
}
