//! The Confluent Schema Registry wire format, optional on the Kafka log.
//!
//! Missive's own framing is Avro single-object encoding: `C3 01`, the writer schema's 8-byte
//! fingerprint, the Avro body. Teams that run a Confluent Schema Registry can ask the Kafka log
//! for the registry's framing instead: byte `00`, the writer schema's 4-byte registry id (big
//! endian), the same Avro body. Only the header differs, so [`SchemaRegistry`] re-frames
//! records at the edge of the Kafka adapter and everything above it keeps seeing single-object
//! records.
//!
//! Schemas are registered under the record name strategy: the subject of an event type is its
//! full record name (`missive.events.MessageSent`), since one topic carries several event
//! types. Registering a schema the registry already has returns its existing id, so every
//! process registers the schemas it writes at start-up. Ids it reads but did not register (a
//! record written by another producer) are fetched once by id, and matched to a compiled-in
//! schema by fingerprint.

use std::collections::HashMap;
use std::time::Duration;

use missive_events::codec;
use parking_lot::RwLock;
use serde::Deserialize;

use crate::{LogError, Result};

/// The registry's media type.
const MEDIA_TYPE: &str = "application/vnd.schemaregistry.v1+json";
/// The registry's `error_code` for an unknown schema id.
const SCHEMA_NOT_FOUND: i64 = 40403;
/// The first byte of a record in the registry's framing.
const MAGIC: u8 = 0;
/// Magic byte plus schema id.
const HEADER_LEN: usize = 5;

/// A Confluent Schema Registry client with the id <-> fingerprint mapping it learned.
pub struct SchemaRegistry {
    http: reqwest::Client,
    /// Without credentials, ending in `/`.
    base: reqwest::Url,
    credentials: Option<(String, Option<String>)>,
    ids: RwLock<HashMap<[u8; 8], u32>>,
    fingerprints: RwLock<HashMap<u32, [u8; 8]>>,
}

impl std::fmt::Debug for SchemaRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaRegistry")
            .field("url", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Registered {
    id: u32,
}

#[derive(Deserialize)]
struct Fetched {
    schema: String,
    #[serde(rename = "schemaType")]
    schema_type: Option<String>,
}

#[derive(Deserialize)]
struct Refusal {
    error_code: Option<i64>,
    message: Option<String>,
}

/// What resolving a registry-framed record came to.
enum Resolved {
    Fingerprint([u8; 8]),
    /// The registry does not know the id, or it is not an Avro schema: not retryable.
    Never(String),
}

impl SchemaRegistry {
    /// Connects to the registry at `url` (`http://` or `https://`; credentials in the URL,
    /// `https://key:secret@host`, are sent as HTTP basic auth) and registers the schema every
    /// event type is written with today.
    pub async fn connect(url: &str, timeout: Duration) -> Result<Self> {
        let invalid = |reason: String| LogError::SchemaRegistry {
            action: "reading its URL",
            reason,
        };
        let shown = redacted(url);
        let mut base = reqwest::Url::parse(url).map_err(|e| invalid(format!("{shown}: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(invalid(format!(
                "{shown} is not an http:// or https:// URL"
            )));
        }
        let credentials = (!base.username().is_empty()).then(|| {
            (
                base.username().to_owned(),
                base.password().map(str::to_owned),
            )
        });
        let _ = base.set_username("");
        let _ = base.set_password(None);
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| invalid(e.to_string()))?;
        let registry = SchemaRegistry {
            http,
            base,
            credentials,
            ids: RwLock::new(HashMap::new()),
            fingerprints: RwLock::new(HashMap::new()),
        };
        for (event_type, version, _) in codec::known_schemas() {
            if codec::schema_version(event_type) == Some(version) {
                registry.register(event_type, version).await?;
            }
        }
        Ok(registry)
    }

    /// The registry URL, without credentials.
    pub fn url(&self) -> &str {
        self.base.as_str()
    }

    /// Re-frames a single-object record for the registry: `00`, schema id, body.
    pub async fn to_registry_framing(&self, record: &[u8]) -> Result<Vec<u8>> {
        let refuse = |reason: String| LogError::SchemaRegistry {
            action: "framing a record",
            reason,
        };
        let Some((header, body)) = record.split_first_chunk::<{ codec::HEADER_LEN }>() else {
            return Err(refuse("the record is not single-object encoded".into()));
        };
        if header[..2] != codec::MARKER {
            return Err(refuse("the record is not single-object encoded".into()));
        }
        let fingerprint: [u8; 8] = header[2..].try_into().unwrap_or_default();
        let known = self.ids.read().get(&fingerprint).copied();
        let id = match known {
            Some(id) => id,
            None => {
                let (event_type, version) = codec::schema_of_fingerprint(&fingerprint)
                    .ok_or_else(|| refuse("its writer schema is not compiled in".into()))?;
                self.register(event_type, version).await?
            }
        };
        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        out.push(MAGIC);
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(body);
        Ok(out)
    }

    /// Re-frames a registry-framed record as single-object encoding, so the codec can read it.
    /// Records in any other framing are returned as they are.
    ///
    /// An id the registry does not know, or that names a schema that is not Avro, leaves the
    /// record as it is: decoding it then fails with an error that says so, and the projector
    /// dead-letters it. An unreachable registry is retried with backoff until it answers.
    pub async fn to_single_object(&self, record: Vec<u8>) -> Vec<u8> {
        let Some((id, body)) = codec::confluent_framing(&record) else {
            return record;
        };
        let mut backoff = Duration::from_millis(100);
        let fingerprint = loop {
            match self.fingerprint_of_id(id).await {
                Ok(Resolved::Fingerprint(fp)) => break fp,
                Ok(Resolved::Never(reason)) => {
                    tracing::warn!(schema_id = id, %reason, "cannot resolve a record's schema id");
                    return record;
                }
                Err(error) => {
                    tracing::warn!(schema_id = id, %error, ?backoff, "schema registry unavailable; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        let mut out = Vec::with_capacity(codec::HEADER_LEN + body.len());
        out.extend_from_slice(&codec::MARKER);
        out.extend_from_slice(&fingerprint);
        out.extend_from_slice(body);
        out
    }

    async fn fingerprint_of_id(&self, id: u32) -> Result<Resolved> {
        if let Some(fp) = self.fingerprints.read().get(&id) {
            return Ok(Resolved::Fingerprint(*fp));
        }
        let action = "fetching a schema by id";
        let url = self.endpoint(&format!("schemas/ids/{id}"), action)?;
        let response = self
            .authorized(self.http.get(url))
            .send()
            .await
            .map_err(|e| unavailable(action, e))?;
        let status = response.status();
        if !status.is_success() {
            // Only the registry's own "schema not found" (40403) is final; any other answer
            // (a wrong path, a proxy, a follower not caught up) is retried.
            return match refused(action, response).await {
                (Some(SCHEMA_NOT_FOUND), _) => {
                    Ok(Resolved::Never(format!("the registry has no schema {id}")))
                }
                (_, error) => Err(error),
            };
        }
        let fetched: Fetched = response.json().await.map_err(|e| unavailable(action, e))?;
        if let Some(kind) = fetched.schema_type.filter(|t| t != "AVRO") {
            return Ok(Resolved::Never(format!("schema {id} is {kind}, not Avro")));
        }
        match codec::fingerprint_of(&fetched.schema) {
            Ok(fp) => {
                self.learn(id, fp);
                Ok(Resolved::Fingerprint(fp))
            }
            Err(problem) => Ok(Resolved::Never(format!(
                "schema {id} is not a valid Avro schema: {problem}"
            ))),
        }
    }

    /// Registers a compiled-in schema under its record name and returns its id.
    async fn register(&self, event_type: &str, version: u32) -> Result<u32> {
        let action = "registering a schema";
        let (Some(json), Some(fp)) = (
            codec::schema_json(event_type, version),
            codec::fingerprint(event_type, version),
        ) else {
            return Err(LogError::SchemaRegistry {
                action,
                reason: format!("{event_type} v{version} is not compiled in"),
            });
        };
        let subject = codec::record_name(event_type);
        let url = self.endpoint(&format!("subjects/{subject}/versions"), action)?;
        let response = self
            .authorized(self.http.post(url))
            .header(reqwest::header::CONTENT_TYPE, MEDIA_TYPE)
            .json(&serde_json::json!({ "schema": json }))
            .send()
            .await
            .map_err(|e| unavailable(action, e))?;
        if !response.status().is_success() {
            return Err(refused(action, response).await.1);
        }
        let Registered { id } = response.json().await.map_err(|e| unavailable(action, e))?;
        self.learn(id, fp);
        tracing::debug!(%subject, id, "schema registered");
        Ok(id)
    }

    fn learn(&self, id: u32, fingerprint: [u8; 8]) {
        self.fingerprints.write().insert(id, fingerprint);
        // Several ids can name one schema (registered under different subjects or texts);
        // the producer keeps the first it learned.
        self.ids.write().entry(fingerprint).or_insert(id);
    }

    fn endpoint(&self, path: &str, action: &'static str) -> Result<reqwest::Url> {
        self.base.join(path).map_err(|e| LogError::SchemaRegistry {
            action,
            reason: e.to_string(),
        })
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        let request = request.header(reqwest::header::ACCEPT, MEDIA_TYPE);
        match &self.credentials {
            Some((user, password)) => request.basic_auth(user, password.as_deref()),
            None => request,
        }
    }
}

/// A registry URL fit for logs and errors: any credentials (`user:secret@`) replaced by `***@`.
pub fn redacted(url: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let authority_end = url[start..].find('/').map_or(url.len(), |i| start + i);
    match url[start..authority_end].rfind('@') {
        Some(at) => format!("{}***{}", &url[..start], &url[start + at..]),
        None => url.to_owned(),
    }
}

fn unavailable(action: &'static str, error: reqwest::Error) -> LogError {
    LogError::SchemaRegistry {
        action,
        reason: error.without_url().to_string(),
    }
}

/// The registry's own explanation of a refusal, e.g. an incompatible schema (409).
/// Also returns the registry's `error_code`, when it gave one.
async fn refused(action: &'static str, response: reqwest::Response) -> (Option<i64>, LogError) {
    let status = response.status();
    let (code, reason) = match response.json::<Refusal>().await {
        Ok(Refusal {
            error_code,
            message: Some(message),
        }) => (
            error_code,
            format!(
                "HTTP {status}, error {}: {message}",
                error_code.unwrap_or_default()
            ),
        ),
        _ => (None, format!("HTTP {status}")),
    };
    (code, LogError::SchemaRegistry { action, reason })
}
