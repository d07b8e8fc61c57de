//! The Scylla adapter's statements: each parses with cqlsh's grammar (`tools/cqlcheck.py`;
//! `tools/cqlcheck-setup.sh` installs it into `target/cqlcheck-venv`, as CI does) and names
//! only tables and columns that `projections/0004_analytics.cql` creates. No server needed.

#![cfg(feature = "scylla")]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use missive_analytics::scylla::cql;

fn workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// Table name -> columns, from the analytics schema file.
fn schema() -> BTreeMap<String, BTreeSet<String>> {
    let text = std::fs::read_to_string(workspace_root().join("projections/0004_analytics.cql"))
        .expect("read projections/0004_analytics.cql");
    let mut tables = BTreeMap::new();
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        let Some(rest) = line.strip_prefix("CREATE TABLE IF NOT EXISTS ") else {
            continue;
        };
        let name = rest.trim_end_matches('(').trim().to_owned();
        let mut columns = BTreeSet::new();
        for line in lines.by_ref() {
            if line.starts_with("PRIMARY KEY") || line.starts_with(')') {
                break;
            }
            if let Some(column) = line.split_whitespace().next() {
                columns.insert(column.to_owned());
            }
        }
        tables.insert(name, columns);
    }
    tables
}

const KEYWORDS: &[&str] = &[
    "select",
    "from",
    "where",
    "and",
    "insert",
    "into",
    "values",
    "using",
    "timestamp",
    "count",
];

#[test]
fn every_statement_names_only_schema_columns() {
    let schema = schema();
    assert_eq!(
        schema.keys().cloned().collect::<Vec<_>>(),
        [
            "analytics_active_users",
            "analytics_checkpoints",
            "analytics_conversations",
            "analytics_rollups"
        ]
    );
    for statement in cql::ALL {
        if statement.contains("schema_migrations") {
            continue;
        }
        let words: Vec<String> = statement
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| !w.is_empty() && !w.chars().all(|c| c.is_ascii_digit()))
            .map(str::to_ascii_lowercase)
            .collect();
        let table = words
            .iter()
            .position(|w| w == "from" || w == "into")
            .and_then(|i| words.get(i + 1))
            .unwrap_or_else(|| panic!("no table in {statement}"));
        let columns = schema
            .get(table)
            .unwrap_or_else(|| panic!("unknown table {table} in {statement}"));
        for word in &words {
            assert!(
                KEYWORDS.contains(&word.as_str()) || word == table || columns.contains(word),
                "{word:?} is not a column of {table}: {statement}"
            );
        }
    }
}

#[test]
fn every_statement_parses() {
    let root = workspace_root();
    let python = std::env::var_os("MISSIVE_CQLCHECK").unwrap_or_else(|| {
        let venv = root.join("target/cqlcheck-venv/bin/python3");
        if venv.exists() {
            venv.into()
        } else {
            "python3".into()
        }
    });
    let mut child = Command::new(&python)
        .arg(root.join("tools/cqlcheck.py"))
        .arg("-")
        .current_dir(&root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start the CQL checker ({e}); install it with tools/cqlcheck-setup.sh")
        });
    let input: String = cql::ALL.iter().map(|s| format!("{s};\n")).collect();
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write statements");
    let out = child.wait_with_output().expect("wait for the checker");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "the checker refused a statement (or could not run; see tools/cqlcheck-setup.sh):\n{output}"
    );
}
