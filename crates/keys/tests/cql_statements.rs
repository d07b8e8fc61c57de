//! The Scylla vault's statements: each parses with cqlsh's grammar (`tools/cqlcheck.py`;
//! `tools/cqlcheck-setup.sh` installs it into `target/cqlcheck-venv`, as CI does) and names
//! only the columns that `projections/0005_user_keys.cql` creates. No server needed.

#![cfg(feature = "scylla")]

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use missive_keys::scylla::cql;

fn workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// The columns of `user_keys`, from the schema file.
fn columns() -> BTreeSet<String> {
    let text = std::fs::read_to_string(workspace_root().join("projections/0005_user_keys.cql"))
        .expect("read projections/0005_user_keys.cql");
    let mut lines = text.lines().map(str::trim);
    lines
        .by_ref()
        .find(|l| *l == "CREATE TABLE IF NOT EXISTS user_keys (")
        .expect("the user_keys table");
    lines
        .take_while(|l| !l.starts_with(')'))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

const KEYWORDS: &[&str] = &[
    "select",
    "from",
    "where",
    "insert",
    "into",
    "values",
    "if",
    "not",
    "exists",
    "update",
    "set",
    "null",
    "user_keys",
];

#[test]
fn every_statement_names_only_schema_columns() {
    let columns = columns();
    assert_eq!(
        columns.iter().map(String::as_str).collect::<Vec<_>>(),
        ["destroyed_at", "key", "user_id"]
    );
    for statement in cql::ALL {
        for word in statement
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| !w.is_empty())
            .map(str::to_ascii_lowercase)
        {
            assert!(
                KEYWORDS.contains(&word.as_str()) || columns.contains(&word),
                "{word:?} is not a column of user_keys: {statement}"
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
