//! CQL syntax check without a Cassandra/Scylla server: runs `tools/cqlcheck.py` (cqlsh's own
//! grammar) on the production store's schema files and on statement strings.
//!
//! Needs cqlsh: `tools/cqlcheck-setup.sh` installs it into `target/cqlcheck-venv` (CI does this in
//! `.ci/run`); `MISSIVE_CQLCHECK` may name another python interpreter that has cqlsh==6.2.2.
//! When the checker cannot run, these tests fail (they never skip).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// Runs the checker with `args` (and `stdin`, if any) from the workspace root. Returns whether
/// every statement parsed, and the checker's output. Panics if the checker itself could not run.
fn run_checker(args: &[&str], stdin: Option<String>) -> (bool, String) {
    let root = workspace_root();
    // The checker re-executes itself under the cqlsh venv (or $MISSIVE_CQLCHECK); any python3
    // can start it.
    let python = std::env::var_os("MISSIVE_CQLCHECK").unwrap_or_else(|| {
        let venv_python = root.join("target/cqlcheck-venv/bin/python3");
        if venv_python.exists() {
            venv_python.into()
        } else {
            "python3".into()
        }
    });
    let mut child = Command::new(&python)
        .arg(root.join("tools/cqlcheck.py"))
        .args(args)
        .current_dir(&root)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start the CQL checker with {}: {e}\n\
                 Install it with tools/cqlcheck-setup.sh (needs Python >= 3.10), or set \
                 MISSIVE_CQLCHECK to a python interpreter that has cqlsh==6.2.2.",
                python.to_string_lossy()
            )
        });
    let writer = stdin.map(|input| {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        std::thread::spawn(move || pipe.write_all(input.as_bytes()))
    });
    let out = child.wait_with_output().expect("wait for the CQL checker");
    if let Some(writer) = writer {
        // A checker that exits early (e.g. cqlsh missing) closes its stdin: judge it by its
        // exit status below, not by the broken pipe.
        let _ = writer.join().expect("stdin writer thread");
    }
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match out.status.code() {
        Some(0) => (true, output),
        Some(1) => (false, output),
        _ => panic!(
            "the CQL checker could not run ({}); run tools/cqlcheck-setup.sh (CI runs it in \
             .ci/run) or set MISSIVE_CQLCHECK to a python interpreter that has cqlsh==6.2.2.\n\
             --- checker output ---\n{output}",
            out.status
        ),
    }
}

/// Syntax-checks CQL statements (without their final `;`; bind markers `?` and `:name` are
/// fine). Returns whether all parse, and the checker's report, which names each invalid
/// statement with its line (in the order given: statement `n` starts on line `n`, if
/// single-line) and the reason.
fn check_statements(statements: &[&str]) -> (bool, String) {
    let input: String = statements
        .iter()
        .map(|s| format!("{};\n", s.trim().trim_end_matches(';').trim_end()))
        .collect();
    run_checker(&["-"], Some(input))
}

#[test]
fn every_projection_file_parses() {
    let dir = workspace_root().join("projections");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "cql"))
        .map(|path| {
            format!(
                "projections/{}",
                path.file_name().unwrap_or_default().to_string_lossy()
            )
        })
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no projections/*.cql file in {}",
        dir.display()
    );
    let args: Vec<&str> = files.iter().map(String::as_str).collect();
    let (ok, output) = run_checker(&args, None);
    assert!(ok, "invalid CQL in {}:\n{output}", files.join(", "));
}

#[test]
fn the_checker_rejects_broken_cql() {
    let valid = "SELECT body FROM missive.t WHERE id = ? AND seq > :after LIMIT ?";
    let broken = [
        "SELEC * FROM missive.t",
        // USING must come before SET.
        "UPDATE missive.t SET body = ? USING TIMESTAMP ? WHERE id = ?",
        // Last: an unterminated string runs to the end of the input.
        "SELECT * FROM missive.t WHERE id = 'unterminated",
    ];
    let mut statements = vec![valid];
    statements.extend(broken);
    let (ok, output) = check_statements(&statements);
    assert!(!ok, "the checker accepted broken CQL:\n{output}");
    for (line, statement) in broken.iter().enumerate().map(|(i, s)| (i + 2, s)) {
        assert!(
            output.contains(&format!("<stdin>:{line}:")) && output.contains(statement),
            "`{statement}` (line {line}) is not reported:\n{output}"
        );
    }
    assert!(
        !output.contains("<stdin>:1:"),
        "a valid statement is reported:\n{output}"
    );
    assert!(output.contains("3 invalid"), "{output}");

    let (ok, output) = check_statements(&[valid]);
    assert!(ok, "a valid statement is rejected:\n{output}");
}

#[cfg(feature = "scylla")]
#[test]
fn the_migration_runner_statements_parse() {
    use missive_store::scylla::{Replication, ScyllaConfig, bootstrap_statements};
    for replication in [
        Replication::Simple(1),
        Replication::NetworkTopology(vec![("dc1".into(), 3), ("dc-2".into(), 2)]),
    ] {
        let mut config = ScyllaConfig::parse("scylla://node:9042/chat").expect("valid URL");
        config.replication = replication;
        let statements = bootstrap_statements(&config);
        let statements: Vec<&str> = statements.iter().map(String::as_str).collect();
        let (ok, output) = check_statements(&statements);
        assert!(ok, "invalid CQL in the migration runner:\n{output}");
    }
}
