//! Dead letters: events a projection could not apply, listed and re-applied after a fix.

use std::path::Path;

use anyhow::Context;
use base64::Engine;
use missive_log::{DeadLetter, EventLog};
use missive_store::ReadStore;
use missive_store::sqlite::SqliteStore;
use serde_json::json;

/// One dead letter as a JSON line: where it came from, what failed, the raw value (base64).
pub fn to_json(letter: &DeadLetter) -> serde_json::Value {
    json!({
        "projection": letter.projection,
        "source": letter.source.to_string(),
        "event_type": letter.event_type,
        "key": letter.key,
        "error": letter.error,
        "payload_base64": base64::engine::general_purpose::STANDARD.encode(&letter.payload),
    })
}

/// What a retry did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RetryOutcome {
    pub resolved: Vec<DeadLetter>,
    /// Letters that still fail, with the new error (recorded on the letter).
    pub failing: Vec<(DeadLetter, String)>,
}

/// Re-applies every dead letter to the read store: a letter whose event now decodes is
/// projected (idempotently, leaving the checkpoint alone) and marked resolved; one that still
/// fails is recorded again with its new error.
pub async fn retry(log: &dyn EventLog, store: &dyn ReadStore) -> anyhow::Result<RetryOutcome> {
    let mut outcome = RetryOutcome::default();
    for letter in log.dead_letters().await.context("listing dead letters")? {
        match missive_events::decode(&letter.payload) {
            Ok(envelope) => {
                let changes = missive_projector::project(&envelope, letter.source);
                store
                    .apply(&letter.projection, changes, Vec::new())
                    .await
                    .context("applying a dead letter to the read models")?;
                log.resolve_dead_letter(&letter.projection, letter.source)
                    .await
                    .context("marking a dead letter resolved")?;
                outcome.resolved.push(letter);
            }
            Err(error) => {
                let error = error.to_string();
                let again = DeadLetter {
                    error: error.clone(),
                    ..letter.clone()
                };
                log.dead_letter(again)
                    .await
                    .context("recording a dead letter")?;
                outcome.failing.push((letter, error));
            }
        }
    }
    Ok(outcome)
}

/// The embedded read store of a data directory (`missive dlq retry` opens whichever store
/// `--store` names, through [`crate::server::StoreBackend`]).
pub fn open_store(data_dir: &Path) -> anyhow::Result<SqliteStore> {
    crate::server::open_embedded_store(data_dir)
}
