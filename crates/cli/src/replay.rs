//! `missive replay`: rebuilding the read models from the log.
//!
//! - **Rebuild** into a fresh target (a new SQLite file, a new Scylla keyspace) while the live
//!   system keeps serving from its own store. The target keeps its checkpoints with its read
//!   models, so a rebuild resumes where it stopped and can be caught up again later.
//! - **Swap** (embedded): with the server stopped, the target is caught up to the log's end and
//!   put in place of `read.db` (the old one is kept beside it). The server then carries on from
//!   the target's checkpoints: nothing appended between the rebuild's end and the swap is lost.
//!   With Scylla the swap is a configuration change (`--store` names the new keyspace), for the
//!   same reason equally safe.
//! - **Point in time** (`--until`): the read models as they were at a time or a position.
//! - **Verify**: a scratch rebuild up to the live store's checkpoints, compared row by row.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use missive_log::EventLog;
use missive_projector::{Projector, READ_MODELS, Rebuilt, Until};
use missive_store::ReadStore;

use crate::events::Bound;

/// Turns `--until` into the rebuild's bound: a time, or positions, which are inclusive here
/// (the read models as they were once that event was applied) and must name every partition
/// of the log.
pub async fn until(log: &dyn EventLog, bound: Option<&Bound>) -> anyhow::Result<Until> {
    Ok(match bound {
        None => Until::End,
        Some(Bound::Time(t)) => Until::Time(*t),
        Some(Bound::Positions(positions)) => {
            let ends = log.end_positions().await?;
            // An empty partition has nothing to cut: it need not be named.
            let missing: Vec<String> = ends
                .iter()
                .filter(|e| e.offset > 0 && !positions.contains_key(&e.partition))
                .map(|e| e.partition.to_string())
                .collect();
            anyhow::ensure!(
                missing.is_empty(),
                "--until names positions: name one for every partition of the log that holds \
                 events (missing: {})",
                missing.join(", ")
            );
            for (partition, offset) in positions {
                let Some(end) = ends.iter().find(|e| e.partition == *partition) else {
                    anyhow::bail!("--until: the log has no partition {partition}");
                };
                anyhow::ensure!(
                    *offset < end.offset,
                    "--until {partition}:{offset}: past the log's end ({partition}:{} is the \
                     next to be written)",
                    end.offset
                );
            }
            Until::Before(positions.iter().map(|(p, o)| (*p, o + 1)).collect())
        }
    })
}

/// Rebuilds `store` from the log up to `until`, with a progress bar on stderr.
pub async fn rebuild(
    log: Arc<dyn EventLog>,
    store: Arc<dyn ReadStore>,
    until: &Until,
) -> anyhow::Result<Rebuilt> {
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} rebuilding {bar:30} {pos}/{len} events ({per_sec}, {eta} left)",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let projector = Projector::new(log, store, READ_MODELS);
    let observer = bar.clone();
    let rebuilt = projector
        .rebuild(
            until,
            move |progress| {
                observer.set_length(progress.events + progress.remaining);
                observer.set_position(progress.events);
            },
            interrupted(),
        )
        .await?;
    bar.finish_and_clear();
    Ok(rebuilt)
}

/// Resolves on Ctrl-C: a rebuild stops between batches, its target consistent and resumable.
async fn interrupted() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Rebuilds the analytics rollups into `store` (fresh, or a rebuild to resume) up to the log's
/// end as it is now, with a progress bar on stderr. The consumer reads with a private group and
/// keeps the live consumer's checkpoint name, so the live consumer carries on from the target.
pub async fn rebuild_analytics(
    log: Arc<dyn EventLog>,
    store: Arc<dyn missive_analytics::AnalyticsStore>,
) -> anyhow::Result<Rebuilt> {
    use missive_analytics::{Analytics, CONSUMER_GROUP};
    let started = std::time::Instant::now();
    let ends = missive_log::by_partition(log.end_positions().await?);
    let start = missive_log::by_partition(store.checkpoints(CONSUMER_GROUP).await?);
    let total: u64 = ends
        .iter()
        .map(|(p, end)| end.saturating_sub(start.get(p).copied().unwrap_or(0)))
        .sum();
    let bar = indicatif::ProgressBar::new(total).with_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} rebuilding analytics {bar:30} {pos}/{len} events ({per_sec}, {eta} left)",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let worker = Analytics::new(log, store).with_private_group(&format!(
        "missive-replay-analytics-{}",
        uuid::Uuid::new_v4()
    ));
    let mut progress = worker.progress();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(worker.run(async move {
        let _ = stopped.await;
    }));
    let reached = |p: &missive_analytics::Progress| {
        ends.iter()
            .all(|(part, end)| p.0.get(part).copied().unwrap_or(0) >= *end)
    };
    let applied = |p: &missive_analytics::Progress| -> u64 {
        ends.keys()
            .map(|part| {
                let at = p.0.get(part).copied().unwrap_or(0);
                at.saturating_sub(start.get(part).copied().unwrap_or(0))
            })
            .sum()
    };
    let interrupted = interrupted();
    tokio::pin!(interrupted);
    loop {
        {
            let now = progress.borrow_and_update();
            bar.set_position(applied(&now));
            if reached(&now) {
                break;
            }
        }
        tokio::select! {
            changed = progress.changed() => if changed.is_err() { break },
            _ = &mut interrupted => break,
        }
    }
    let _ = stop.send(());
    task.await.context("the analytics consumer task")??;
    bar.finish_and_clear();
    let last = progress.borrow().clone();
    Ok(Rebuilt {
        events: applied(&last),
        undecodable: 0,
        elapsed: started.elapsed(),
        complete: reached(&last),
        reached: last.0,
    })
}

/// The line every rebuild ends with.
pub fn summary(rebuilt: &Rebuilt) -> String {
    let reached: Vec<String> = rebuilt
        .reached
        .iter()
        .map(|(p, o)| format!("{p}:{o}"))
        .collect();
    let undecodable = match rebuilt.undecodable {
        0 => String::new(),
        n => format!(" ({n} undecodable, skipped; see `missive dlq list`)"),
    };
    format!(
        "{} {} events{undecodable} in {:.2} s: {:.0} events/s; checkpoint {}",
        if rebuilt.complete {
            "rebuilt"
        } else {
            "INTERRUPTED after"
        },
        rebuilt.events,
        rebuilt.elapsed.as_secs_f64(),
        rebuilt.events_per_second(),
        if reached.is_empty() {
            "(empty log)".to_owned()
        } else {
            reached.join(",")
        }
    )
}

/// How two stores differ, table by table.
#[derive(Debug, Default)]
pub struct Differences {
    /// Per table: rows only in the live store, rows only in the rebuilt one.
    pub tables: BTreeMap<String, (Vec<String>, Vec<String>)>,
    /// Tables compared and rows read from the live store.
    pub compared_tables: usize,
    pub compared_rows: usize,
}

impl Differences {
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// Keeps only the differences `other` (a later comparison) found too.
    fn retain_in(&mut self, other: &Differences) {
        let empty = (Vec::new(), Vec::new());
        for (table, (live, rebuilt)) in &mut self.tables {
            let (live_again, rebuilt_again) = other.tables.get(table).unwrap_or(&empty);
            live.retain(|row| live_again.contains(row));
            rebuilt.retain(|row| rebuilt_again.contains(row));
        }
        self.tables
            .retain(|_, (live, rebuilt)| !live.is_empty() || !rebuilt.is_empty());
    }

    /// The report `--verify` prints: at most `shown` rows per side and table.
    pub fn report(&self, shown: usize) -> String {
        let mut out = String::new();
        for (table, (live, rebuilt)) in &self.tables {
            out += &format!(
                "table {table}: {} row(s) only in the live store, {} only in the rebuilt one\n",
                live.len(),
                rebuilt.len()
            );
            for row in live.iter().take(shown) {
                out += &format!("  - live:    {row}\n");
            }
            if live.len() > shown {
                out += &format!("  - ... {} more\n", live.len() - shown);
            }
            for row in rebuilt.iter().take(shown) {
                out += &format!("  + rebuilt: {row}\n");
            }
            if rebuilt.len() > shown {
                out += &format!("  + ... {} more\n", rebuilt.len() - shown);
            }
        }
        out
    }
}

/// Compares two stores row by row, every read-model table of either.
pub async fn compare(live: &dyn ReadStore, rebuilt: &dyn ReadStore) -> anyhow::Result<Differences> {
    compare_with(Rows::Store(live), rebuilt).await
}

/// The live side of a comparison: a store read table by table, or a snapshot in hand.
enum Rows<'a> {
    Store(&'a dyn ReadStore),
    Snapshot(&'a BTreeMap<String, Vec<String>>),
}

async fn compare_with(live: Rows<'_>, rebuilt: &dyn ReadStore) -> anyhow::Result<Differences> {
    let mut tables = match &live {
        Rows::Store(store) => store.tables().await?,
        Rows::Snapshot(snapshot) => snapshot.keys().cloned().collect(),
    };
    tables.extend(rebuilt.tables().await?);
    tables.sort();
    tables.dedup();
    let mut differences = Differences::default();
    for table in tables {
        let a = match &live {
            Rows::Store(store) => store
                .table_rows(&table)
                .await
                .with_context(|| format!("reading {table} in the live store"))?,
            Rows::Snapshot(snapshot) => snapshot
                .get(&table)
                .cloned()
                .with_context(|| format!("the live store has no table {table}"))?,
        };
        let b = rebuilt
            .table_rows(&table)
            .await
            .with_context(|| format!("reading {table} in the rebuilt store"))?;
        differences.compared_tables += 1;
        differences.compared_rows += a.len();
        let (only_a, only_b) = sorted_difference(&a, &b);
        if !only_a.is_empty() || !only_b.is_empty() {
            differences.tables.insert(table, (only_a, only_b));
        }
    }
    Ok(differences)
}

/// The rows of each sorted list missing from the other (with repeats counted).
fn sorted_difference(a: &[String], b: &[String]) -> (Vec<String>, Vec<String>) {
    let (mut i, mut j) = (0, 0);
    let (mut only_a, mut only_b) = (Vec::new(), Vec::new());
    while i < a.len() || j < b.len() {
        match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) if x == y => {
                i += 1;
                j += 1;
            }
            (Some(x), Some(y)) if x < y => {
                only_a.push(x.clone());
                i += 1;
            }
            (Some(_), Some(y)) => {
                only_b.push(y.clone());
                j += 1;
            }
            (Some(x), None) => {
                only_a.push(x.clone());
                i += 1;
            }
            (None, Some(y)) => {
                only_b.push(y.clone());
                j += 1;
            }
            (None, None) => break,
        }
    }
    (only_a, only_b)
}

/// A projection's checkpoints by partition.
pub async fn checkpoints(store: &dyn ReadStore) -> anyhow::Result<BTreeMap<u32, u64>> {
    Ok(missive_log::by_partition(
        store.checkpoints(READ_MODELS).await?,
    ))
}

/// What `--verify` found.
#[derive(Debug)]
pub struct Verified {
    pub differences: Differences,
    /// The live checkpoints both sides were compared at.
    pub at: BTreeMap<u32, u64>,
    pub rebuilt: Vec<Rebuilt>,
}

/// How many times `--verify` rebuilds further when the live store moved during a comparison.
const VERIFY_ATTEMPTS: usize = 5;

/// Like [`verify`] for the embedded live store, without retries: its checkpoints and rows are
/// read in one transaction, then the scratch store is rebuilt to exactly those checkpoints.
/// Works however busy the live store is; holds the live store in memory.
pub async fn verify_embedded(
    log: Arc<dyn EventLog>,
    live: &missive_store::sqlite::SqliteStore,
    scratch: Arc<dyn ReadStore>,
) -> anyhow::Result<Verified> {
    let (at, rows) = tokio::task::block_in_place(|| live.snapshot(READ_MODELS))?;
    let at = missive_log::by_partition(at);
    let rebuilt = rebuild(log, scratch.clone(), &Until::Before(at.clone())).await?;
    anyhow::ensure!(rebuilt.complete, "interrupted");
    let scratch_at = checkpoints(scratch.as_ref()).await?;
    anyhow::ensure!(
        scratch_at == at,
        "the rebuild stopped at {scratch_at:?}, short of the live checkpoints {at:?}"
    );
    let differences = compare_with(Rows::Snapshot(&rows), scratch.as_ref()).await?;
    Ok(Verified {
        differences,
        at,
        rebuilt: vec![rebuilt],
    })
}

/// Rebuilds `scratch` (empty) up to the live store's checkpoints and compares the two. The live
/// store may keep moving: when its checkpoints changed while it was read, the scratch store is
/// caught up to the new ones and compared again, a few times at most.
pub async fn verify(
    log: Arc<dyn EventLog>,
    live: &dyn ReadStore,
    scratch: Arc<dyn ReadStore>,
) -> anyhow::Result<Verified> {
    let mut rebuilds = Vec::new();
    for _ in 0..VERIFY_ATTEMPTS {
        let at = checkpoints(live).await?;
        let rebuilt = rebuild(log.clone(), scratch.clone(), &Until::Before(at.clone())).await?;
        anyhow::ensure!(rebuilt.complete, "interrupted");
        rebuilds.push(rebuilt);
        let mut differences = compare(live, scratch.as_ref()).await?;
        if !differences.is_empty() {
            // A store without transactions (Scylla) shows a batch's rows before its
            // checkpoint: only what differs twice at the same checkpoints is a difference.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let again = compare(live, scratch.as_ref()).await?;
            differences.retain_in(&again);
        }
        let after = checkpoints(live).await?;
        if after == at {
            let scratch_at = checkpoints(scratch.as_ref()).await?;
            anyhow::ensure!(
                scratch_at == at,
                "the rebuild stopped at {scratch_at:?}, short of the live checkpoints {at:?} \
                 (interrupted?)"
            );
            return Ok(Verified {
                differences,
                at,
                rebuilt: rebuilds,
            });
        }
        tracing::info!(
            ?at,
            ?after,
            "the live read models moved while compared; again"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!(
        "the live read models kept moving during {VERIFY_ATTEMPTS} comparisons: run --verify \
         at a quieter moment"
    )
}

/// Where an embedded rebuild goes by default: `read.rebuild.db` in the data directory.
pub fn default_embedded_target(data_dir: &Path) -> PathBuf {
    data_dir.join("read.rebuild.db")
}

/// Whether two paths name the same file, written differently or not (`./d/read.db`, a link to
/// the directory); neither needs to exist.
pub fn same_path(a: &Path, b: &Path) -> bool {
    let canonical = |p: &Path| -> PathBuf {
        match (p.parent(), p.file_name()) {
            (Some(dir), Some(name)) => {
                let dir = if dir.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    dir
                };
                std::fs::canonicalize(dir)
                    .map(|d| d.join(name))
                    .unwrap_or_else(|_| p.to_owned())
            }
            _ => p.to_owned(),
        }
    };
    canonical(a) == canonical(b)
}

/// Puts the embedded `target` in place of the data directory's `live` file (`read.db`,
/// `analytics.db`), keeping the old one as `<live>.replaced-<time>` (with its WAL files). The
/// caller holds the data directory exclusively and has closed every connection to `target`.
/// Returns where the old store went. If a step fails, what was moved is moved back.
pub fn swap_embedded(
    data_dir: &Path,
    target: &Path,
    live: &str,
) -> anyhow::Result<Option<PathBuf>> {
    // Fold the target's WAL into its main file, so that the one file moved holds everything;
    // refuse if anything else still has it open (the WAL could not be folded in whole).
    {
        let conn = rusqlite::Connection::open(target)
            .with_context(|| format!("opening {}", target.display()))?;
        let (busy, log, folded): (i64, i64, i64) = conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .with_context(|| format!("checkpointing {}", target.display()))?;
        anyhow::ensure!(
            busy == 0 && log == folded,
            "{} is in use by another process (another `missive replay`?): try again once it \
             is done",
            target.display()
        );
        conn.execute_batch("PRAGMA journal_mode = DELETE")
            .with_context(|| format!("closing the WAL of {}", target.display()))?;
    }
    let with = |path: &Path, suffix: &str| PathBuf::from(format!("{}{suffix}", path.display()));
    let name = live;
    let live = data_dir.join(name);
    // First into the data directory (a copy across file systems), so that the last step is a
    // rename there.
    let incoming = data_dir.join(format!("{name}.incoming"));
    if std::fs::rename(target, &incoming).is_err() {
        std::fs::copy(target, &incoming)
            .with_context(|| format!("copying {} to {}", target.display(), incoming.display()))?;
        std::fs::remove_file(target).with_context(|| format!("removing {}", target.display()))?;
    }
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let kept = data_dir.join(format!("{name}.replaced-{stamp}"));
    let mut moved = Vec::new();
    let mut outcome = Ok(());
    for suffix in ["", "-wal", "-shm"] {
        let from = with(&live, suffix);
        if from.exists() {
            let to = with(&kept, suffix);
            if let Err(e) = std::fs::rename(&from, &to) {
                outcome = Err(e)
                    .with_context(|| format!("moving {} to {}", from.display(), to.display()));
                break;
            }
            moved.push((from, to));
        }
    }
    if outcome.is_ok() {
        outcome = std::fs::rename(&incoming, &live)
            .with_context(|| format!("moving {} to {}", incoming.display(), live.display()));
    }
    if let Err(error) = outcome {
        for (from, to) in moved.iter().rev() {
            let _ = std::fs::rename(to, from);
        }
        return Err(error.context(format!(
            "the swap was undone; the rebuilt store is at {}",
            incoming.display()
        )));
    }
    Ok((!moved.is_empty()).then_some(kept))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_file_written_differently_is_the_same_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::create_dir(d.join("data")).expect("mkdir");
        assert!(same_path(
            &d.join("data/read.db"),
            &d.join("data/./read.db")
        ));
        assert!(same_path(
            &d.join("data/read.db"),
            &d.join("data/../data/read.db")
        ));
        assert!(!same_path(
            &d.join("data/read.db"),
            &d.join("data/read.rebuild.db")
        ));
    }

    #[test]
    fn differences_of_sorted_rows() {
        let rows = |r: &[&str]| r.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let (a, b) = sorted_difference(&rows(&["a", "b", "b", "d"]), &rows(&["b", "c", "d", "e"]));
        assert_eq!(a, rows(&["a", "b"]));
        assert_eq!(b, rows(&["c", "e"]));
        let (a, b) = sorted_difference(&rows(&["x"]), &rows(&["x"]));
        assert!(a.is_empty() && b.is_empty());
    }
}
