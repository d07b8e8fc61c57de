//! Crypto-shredding end to end: personal fields (username, display name, message and post
//! texts) reach the log sealed with their owner's key; deleting the account destroys the key,
//! after which neither the live read models nor a full replay of the log into empty read
//! models show any of that user's personal data, while everyone else's stays readable.

mod common;

use common::{Client, Harness};
use missive_cli::server::StoreBackend;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Alice's personal data, distinctive enough that a raw byte search finds nothing else.
const NAME: &str = "wonderland7";
const DISPLAY: &str = "Alice Pleasance Liddell";
const SECRET: &str = "the rabbit hole is behind the hedge";
const POST: &str = "tea party at six, bring jam";
/// Bob's, which must survive Alice's deletion.
const REPLY: &str = "see you there, bring the hatter";
/// Alice's and Bob's messages in a server channel.
const CHANNEL_SECRET: &str = "the cheshire cat grins at the croquet lawn";
const CHANNEL_REPLY: &str = "the queen of hearts lost her flamingo mallet";

/// The log as `missive events dump` prints it (every record, decoded).
async fn dump(h: &Harness) -> String {
    let mut args: Vec<String> = vec!["events".into(), "dump".into()];
    args.push("--data-dir".into());
    args.push(h.config.data_dir.display().to_string());
    if let missive_cli::server::LogBackend::Kafka(config) = &h.config.log {
        args.push("--log".into());
        args.push(format!("kafka://{}", config.brokers));
        args.push("--kafka-topic-prefix".into());
        args.push(config.topic_prefix.clone());
    }
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_missive"))
            .args(&args)
            .env_remove("MISSIVE_LOG")
            .env_remove("MISSIVE_STORE")
            .env("RUST_LOG", "off")
            .output()
            .expect("missive events dump")
    })
    .await
    .expect("joined");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// Every file of the embedded read store, as bytes (empty for Scylla).
fn read_store_bytes(h: &Harness) -> Vec<u8> {
    if !matches!(h.config.store, StoreBackend::Embedded) {
        return Vec::new();
    }
    let mut all = Vec::new();
    for f in ["read.db", "read.db-wal"] {
        all.extend(std::fs::read(h.config.data_dir.join(f)).unwrap_or_default());
    }
    all
}

fn sorted<const N: usize>(texts: [&str; N]) -> Vec<String> {
    let mut texts: Vec<String> = texts.iter().map(|t| (*t).to_owned()).collect();
    texts.sort();
    texts
}

/// Asserts that none of `texts` stands in `haystack` (the log's dump, or the read store's
/// bytes) in the clear; `place` names it.
#[track_caller]
fn assert_absent(haystack: &[u8], texts: &[&str], place: &str) {
    for text in texts {
        assert!(
            !haystack.windows(text.len()).any(|w| w == text.as_bytes()),
            "{text:?} in {place}"
        );
    }
}

/// Deletes `who`'s account with an operator's token issued for `by`.
async fn delete_account(h: &Harness, who: &Client, by: &Client) {
    let deleted = h
        .call(
            Method::DELETE,
            &format!("/v1/admin/users/{}", who.id),
            Some(&h.operator(by)),
            None,
        )
        .await;
    assert_eq!(deleted.status, StatusCode::OK, "{deleted:?}");
}

/// What Bob sees of Alice and of their conversation and server.
struct Seen {
    alice: Value,
    texts: Vec<String>,
    posts: Vec<String>,
    preview: Value,
}

async fn seen_by_bob(h: &Harness, bob: &Client, alice: &Client, server: &str, at: &Value) -> Seen {
    let profile = h.get_at(&format!("/v1/users/{}", alice.id), bob, at).await;
    assert_eq!(profile.status, StatusCode::OK, "{profile:?}");
    let conversation = missive_events::ids::direct_conversation_id(alice.id, bob.id);
    let history = h
        .get_at(
            &format!("/v1/conversations/{conversation}/messages?limit=50"),
            bob,
            at,
        )
        .await;
    assert_eq!(history.status, StatusCode::OK, "{history:?}");
    let posts = h
        .get_at(&format!("/v1/servers/{server}/posts"), bob, at)
        .await;
    assert_eq!(posts.status, StatusCode::OK, "{posts:?}");
    let list = h.get_at("/v1/conversations", bob, at).await;
    assert_eq!(list.status, StatusCode::OK, "{list:?}");
    let mut texts = history.texts();
    texts.sort();
    Seen {
        alice: profile.body,
        texts,
        posts: posts
            .items()
            .iter()
            .map(|p| p["content"].as_str().expect("content").to_owned())
            .collect(),
        preview: list.items()[0]["last_message"]["text"].clone(),
    }
}

async fn deleting_an_account_shreds_its_personal_data_also_from_replays() {
    let mut h = Harness::start().await;
    let alice = h.register(NAME).await;
    let bob = h.register("bob").await;
    h.befriend(&alice, &bob).await;
    let renamed = h
        .call(
            Method::PATCH,
            "/v1/users/me",
            Some(&alice.token),
            Some(json!({ "display_name": DISPLAY })),
        )
        .await;
    assert_eq!(renamed.status, StatusCode::OK, "{renamed:?}");
    let server = h
        .post(
            "/v1/servers",
            &alice,
            json!({ "name": "teaparty", "visibility": "public" }),
        )
        .await;
    assert_eq!(server.status, StatusCode::CREATED, "{server:?}");
    let server = server.body["server_id"].as_str().expect("id").to_owned();
    let subscribed = h
        .post(
            &format!("/v1/servers/{server}/subscription"),
            &bob,
            json!({}),
        )
        .await;
    assert!(subscribed.status.is_success(), "{subscribed:?}");
    let posted = h
        .post(
            &format!("/v1/servers/{server}/posts"),
            &alice,
            json!({ "content": POST }),
        )
        .await;
    assert_eq!(posted.status, StatusCode::CREATED, "{posted:?}");
    h.send(&alice, &bob, SECRET).await;
    let last = h.send(&bob, &alice, REPLY).await;

    // Readable by those it was for while the account lives...
    let before = seen_by_bob(&h, &bob, &alice, &server, &last["position"]).await;
    assert_eq!(before.alice["username"], NAME);
    assert_eq!(before.alice["display_name"], DISPLAY);
    assert_eq!(before.texts, sorted([SECRET, REPLY]));
    assert_eq!(before.posts, [POST]);
    assert_eq!(before.preview, REPLY);
    // ...but the log never holds it in the clear, nor does the read store (texts stay sealed
    // there; a username and display name are opened as they are projected).
    let log = dump(&h).await;
    assert_absent(
        log.as_bytes(),
        &[NAME, DISPLAY, SECRET, POST, REPLY],
        "the log",
    );
    assert_absent(
        &read_store_bytes(&h),
        &[SECRET, POST, REPLY],
        "the read store",
    );

    delete_account(&h, &alice, &bob).await;
    let gone = format!("deleted-{}", alice.id.simple());

    // Live read models: nothing of Alice's is readable; Bob's own message is.
    let after = seen_by_bob(&h, &bob, &alice, &server, &last["position"]).await;
    assert_eq!(after.alice["username"], gone.as_str());
    assert_eq!(after.alice["display_name"], "");
    assert_eq!(after.texts, sorted(["", REPLY]));
    assert_eq!(after.posts, [""]);
    assert_eq!(after.preview, REPLY);

    // A full replay of the log into empty read models shows the same, and nothing of Alice's
    // is stored anywhere in them.
    h.restart_with_empty_read_models().await;
    h.get_at("/v1/conversations", &bob, &last["position"]).await;
    let replayed = seen_by_bob(&h, &bob, &alice, &server, &last["position"]).await;
    assert_eq!(replayed.alice["username"], gone.as_str());
    assert_eq!(replayed.alice["display_name"], "");
    assert_eq!(replayed.texts, sorted(["", REPLY]));
    assert_eq!(replayed.posts, [""]);
    assert_absent(
        &read_store_bytes(&h),
        &[NAME, DISPLAY, SECRET, POST],
        "the rebuilt read store",
    );
    // The name is free for someone else, whose data is theirs.
    let newcomer = h.register(NAME).await;
    assert_ne!(newcomer.id, alice.id);
    h.shutdown().await;
}

/// The texts of a channel's history as `who` reads it (at least up to `at`), sorted.
async fn channel_texts(h: &Harness, who: &Client, channel: &str, at: &Value) -> Vec<String> {
    let history = h
        .get_at(&format!("{channel}/messages?limit=50"), who, at)
        .await;
    assert_eq!(history.status, StatusCode::OK, "{history:?}");
    let mut texts = history.texts();
    texts.sort();
    texts
}

/// Channel messages are shredded like direct messages: Alice's text in a server channel never
/// reaches the log or the read store in the clear, Bob reads it while her account lives, and
/// once it is deleted he (live, and after a full replay) reads it as an empty text beside his
/// own message, which stays readable.
async fn deleting_an_account_shreds_its_channel_messages() {
    let mut h = Harness::start().await;
    let alice = h.register(NAME).await;
    let bob = h.register("bob").await;
    let server = h
        .post(
            "/v1/servers",
            &bob,
            json!({ "name": "croquet", "visibility": "public" }),
        )
        .await;
    assert_eq!(server.status, StatusCode::CREATED, "{server:?}");
    let server = format!(
        "/v1/servers/{}",
        server.body["server_id"].as_str().expect("id")
    );
    let channel = h
        .post(
            &format!("{server}/channels"),
            &bob,
            json!({ "name": "lawn" }),
        )
        .await;
    assert_eq!(channel.status, StatusCode::CREATED, "{channel:?}");
    let channel = format!(
        "{server}/channels/{}",
        channel.body["channel_id"].as_str().expect("id")
    );
    let subscribed = h
        .post(&format!("{server}/subscription"), &alice, json!(null))
        .await;
    assert!(subscribed.status.is_success(), "{subscribed:?}");
    for who in [&alice, &bob] {
        let joined = h.post(&format!("{channel}/join"), who, json!(null)).await;
        assert_eq!(joined.status, StatusCode::OK, "{joined:?}");
    }
    let hers = h
        .post(
            &format!("{channel}/messages"),
            &alice,
            json!({ "text": CHANNEL_SECRET }),
        )
        .await;
    assert_eq!(hers.status, StatusCode::CREATED, "{hers:?}");
    let his = h
        .post(
            &format!("{channel}/messages"),
            &bob,
            json!({ "text": CHANNEL_REPLY }),
        )
        .await;
    assert_eq!(his.status, StatusCode::CREATED, "{his:?}");
    let last = &his.body["position"];

    // Readable by the channel's members while the account lives...
    assert_eq!(
        channel_texts(&h, &bob, &channel, last).await,
        sorted([CHANNEL_SECRET, CHANNEL_REPLY])
    );
    // ...but neither the log nor the read store holds either text in the clear.
    let log = dump(&h).await;
    assert!(
        log.contains("ChannelMessageSent"),
        "the dump lists them: {log}"
    );
    assert_absent(log.as_bytes(), &[CHANNEL_SECRET, CHANNEL_REPLY], "the log");
    assert_absent(
        &read_store_bytes(&h),
        &[CHANNEL_SECRET, CHANNEL_REPLY],
        "the read store",
    );

    delete_account(&h, &alice, &bob).await;

    // Live read models: Alice's message is still listed, as hers, with an empty text; Bob's
    // own reads as he wrote it.
    let history = h
        .get_at(&format!("{channel}/messages?limit=50"), &bob, last)
        .await;
    assert_eq!(history.status, StatusCode::OK, "{history:?}");
    let by = |id: &Value| {
        history
            .items()
            .iter()
            .find(|m| m["message_id"] == *id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} listed: {history:?}"))
    };
    let shredded = by(&hers.body["message_id"]);
    assert_eq!(shredded["sender_id"], json!(alice.id), "{shredded}");
    assert_eq!(shredded["text"], "", "{shredded}");
    assert_eq!(by(&his.body["message_id"])["text"], CHANNEL_REPLY);
    assert_absent(
        dump(&h).await.as_bytes(),
        &[CHANNEL_SECRET],
        "the log after deletion",
    );

    // A full replay of the log into empty read models shows the same, and stores nothing of
    // Alice's text.
    h.restart_with_empty_read_models().await;
    assert_eq!(
        channel_texts(&h, &bob, &channel, last).await,
        sorted(["", CHANNEL_REPLY])
    );
    assert_absent(
        &read_store_bytes(&h),
        &[CHANNEL_SECRET],
        "the rebuilt read store",
    );
    h.shutdown().await;
}

both_logs!(
    deleting_an_account_shreds_its_personal_data_also_from_replays,
    deleting_an_account_shreds_its_channel_messages,
);
