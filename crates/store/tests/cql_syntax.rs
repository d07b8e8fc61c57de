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

/// The Scylla adapter's statements (`scylla::cql::ALL`): they parse, and every table and column
/// they name is one the schema files (`projections/*.cql`) create.
#[cfg(feature = "scylla")]
mod adapter_statements {
    use std::collections::{BTreeMap, BTreeSet};
    use std::iter::Peekable;
    use std::str::Chars;

    use missive_store::scylla::{MIGRATIONS, ScyllaConfig, bootstrap_statements, cql, statements};

    use super::check_statements;

    #[test]
    fn every_adapter_statement_parses() {
        let (ok, output) = check_statements(cql::ALL);
        assert!(ok, "invalid CQL in scylla::cql::ALL:\n{output}");
        assert!(
            !cql::ALL.is_empty(),
            "scylla::cql::ALL is empty: it must list every statement the adapter prepares"
        );
    }

    #[test]
    fn adapter_statements_use_the_schema_columns() {
        let schema = schema();
        assert!(!schema.is_empty(), "projections/*.cql create no table");
        for (table, columns) in &schema {
            assert!(!columns.is_empty(), "no column found in table `{table}`");
        }
        let problems = schema_problems(&schema, cql::ALL);
        assert!(
            problems.is_empty(),
            "scylla::cql::ALL does not match projections/*.cql:\n{}",
            problems.join("\n")
        );
    }

    #[test]
    fn the_schema_check_reports_unknown_tables_and_columns() {
        let schema = schema();
        // The widest real table, whatever the schema files hold.
        let (table, columns) = schema
            .iter()
            .max_by_key(|(_, columns)| columns.len())
            .expect("a table");
        let columns: Vec<&str> = columns.iter().map(String::as_str).collect();
        let [a, b, ..] = columns[..] else {
            panic!("table `{table}` has fewer than two columns")
        };
        let all = columns.join(", ");
        let markers = vec!["?"; columns.len()].join(", ");
        // Fine as far as this check goes: it reads names, not restriction rules. The string
        // constant, the `:after` marker and the alias are not column names.
        let valid = [
            format!(
                "SELECT {all} FROM {table} WHERE {a} = ? AND {b} > :after AND {a} = 'no_such_column' \
                 ORDER BY {b} DESC LIMIT ?"
            ),
            format!("SELECT COUNT(*) FROM {table} WHERE {a} = ?"),
            format!("select {b} as alias from {table} where {a} in ?"),
            format!("INSERT INTO {table} ({all}) VALUES ({markers}) USING TIMESTAMP ?"),
            format!("UPDATE {table} USING TIMESTAMP ? SET {b} = ? WHERE {a} = ?"),
            format!("DELETE FROM {table} USING TIMESTAMP ? WHERE {a} = ?"),
        ];
        let valid: Vec<&str> = valid.iter().map(String::as_str).collect();
        let problems = schema_problems(&schema, &valid);
        assert!(problems.is_empty(), "{}", problems.join("\n"));

        let invalid = [
            (
                format!("SELECT {a}, no_such_column FROM {table} WHERE {b} = ?"),
                "unknown column `no_such_column`",
            ),
            (
                format!("UPDATE {table} SET No_Such_Column = ? WHERE {a} = ?"),
                "unknown column `no_such_column`",
            ),
            (
                format!("SELECT {a} FROM no_such_table WHERE {a} = ?"),
                "unknown table `no_such_table`",
            ),
            (
                format!("INSERT INTO {table} ({a}, {b}) VALUES (?) USING TIMESTAMP ?"),
                "names 2 columns but has 1 `?`",
            ),
            (
                format!("DELETE FROM missive.{table} WHERE {a} = ?"),
                "qualified",
            ),
            (format!("TRUNCATE {table}"), "not a SELECT"),
        ];
        let statements: Vec<&str> = invalid.iter().map(|(s, _)| s.as_str()).collect();
        let problems = schema_problems(&schema, &statements);
        assert_eq!(problems.len(), invalid.len(), "{}", problems.join("\n"));
        for (statement, reason) in &invalid {
            assert!(
                problems
                    .iter()
                    .any(|p| p.starts_with(&format!("`{statement}`:")) && p.contains(reason)),
                "`{statement}` is not reported with {reason:?}:\n{}",
                problems.join("\n")
            );
        }
    }

    #[test]
    fn the_schema_reader_finds_every_column() {
        let cql = "CREATE TABLE IF NOT EXISTS Plain (id uuid PRIMARY KEY, \"Quoted\" text, \
                   tags map<text, int>);\n\
                   CREATE INDEX IF NOT EXISTS ON plain (tags);\n\
                   CREATE TABLE clustered (k int, c bigint, s text static, \
                   v frozen<list<tuple<int, text>>>, PRIMARY KEY ((k), c)) \
                   WITH CLUSTERING ORDER BY (c DESC) AND comment = 'a, b'";
        let schema = schema_of(statements(cql));
        let names =
            |table: &str| -> Vec<&str> { schema[table].iter().map(String::as_str).collect() };
        assert_eq!(schema.len(), 2, "{schema:?}");
        assert_eq!(names("plain"), ["Quoted", "id", "tags"]);
        assert_eq!(names("clustered"), ["c", "k", "s", "v"]);
    }

    #[test]
    fn the_schema_reader_follows_added_columns() {
        let cql = "CREATE TABLE a (id uuid PRIMARY KEY, x int);\n\
                   CREATE TABLE b (id uuid PRIMARY KEY, y int);\n\
                   ALTER TABLE a ADD Later boolean;\n\
                   alter table b add (\"Quoted\" text, m map<text, int>)";
        let schema = schema_of(statements(cql));
        let names =
            |table: &str| -> Vec<&str> { schema[table].iter().map(String::as_str).collect() };
        assert_eq!(names("a"), ["id", "later", "x"]);
        assert_eq!(names("b"), ["Quoted", "id", "m", "y"]);
        // A column added to one table is a column of that table only.
        let valid = ["UPDATE a USING TIMESTAMP ? SET later = true WHERE id = ?"];
        assert!(schema_problems(&schema, &valid).is_empty());
        let problems = schema_problems(&schema, &["SELECT later FROM b WHERE id = ?"]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("unknown column `later`"),
            "{problems:?}"
        );
    }

    #[test]
    #[should_panic(expected = "which no earlier statement creates")]
    fn the_schema_reader_refuses_columns_added_to_unknown_tables() {
        schema_of(statements(
            "ALTER TABLE later ADD x int; CREATE TABLE later (id uuid PRIMARY KEY)",
        ));
    }

    #[test]
    #[should_panic(expected = "teach schema_of()")]
    fn the_schema_reader_refuses_changes_it_does_not_follow() {
        schema_of(statements(
            "CREATE TABLE t (id uuid PRIMARY KEY, x int); ALTER TABLE t DROP x",
        ));
    }

    /// Table name -> its column names. Unquoted names are lower-cased, as CQL reads them.
    type Schema = BTreeMap<String, BTreeSet<String>>;

    /// Words of CQL syntax (compared lower-case): every other word of a statement must be its
    /// table or one of that table's columns.
    const KEYWORDS: &[&str] = &[
        "select",
        "from",
        "where",
        "and",
        "insert",
        "into",
        "values",
        "update",
        "set",
        "delete",
        "using",
        "timestamp",
        "ttl",
        "limit",
        "order",
        "by",
        "asc",
        "desc",
        "in",
        "count",
        "if",
        "exists",
        "not",
        "null",
        "true",
        "false",
        "allow",
        "filtering",
        "distinct",
        "as",
        "contains",
        "key",
        "per",
        "partition",
        "token",
        "writetime",
    ];

    /// A piece of a CQL statement, as far as this check cares.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Token {
        /// An unquoted identifier or keyword, lower-cased.
        Word(String),
        /// A double-quoted identifier, as written (doubled quotes undone).
        Quoted(String),
        /// A bind marker: `?` or `:name`.
        Marker,
        /// A string or numeric constant (its value does not matter here).
        Constant,
        /// Any other character: `(`, `)`, `,`, `*`, `=`, `<`, `.`...
        Symbol(char),
    }

    /// Splits a statement (without comments) into tokens.
    fn tokenize(cql: &str) -> Vec<Token> {
        let mut tokens = Vec::new();
        let mut chars = cql.chars().peekable();
        while let Some(c) = chars.next() {
            let token = match c {
                c if c.is_whitespace() => continue,
                '\'' => {
                    read_quoted(&mut chars, '\'');
                    Token::Constant
                }
                '"' => Token::Quoted(read_quoted(&mut chars, '"')),
                '?' => Token::Marker,
                ':' if chars.peek().is_some_and(|&d| starts_word(d)) => {
                    read_word(&mut chars, c);
                    Token::Marker
                }
                c if starts_word(c) => Token::Word(read_word(&mut chars, c).to_ascii_lowercase()),
                // Numbers, blobs (0x...), and the like.
                c if c.is_ascii_digit() => {
                    read_word(&mut chars, c);
                    Token::Constant
                }
                c => Token::Symbol(c),
            };
            tokens.push(token);
        }
        tokens
    }

    fn starts_word(c: char) -> bool {
        c.is_ascii_alphabetic() || c == '_'
    }

    /// `first` and the letters, digits and underscores that follow it.
    fn read_word(chars: &mut Peekable<Chars<'_>>, first: char) -> String {
        let mut word = String::from(first);
        while let Some(c) = chars.next_if(|&c| c.is_ascii_alphanumeric() || c == '_') {
            word.push(c);
        }
        word
    }

    /// The rest of a `quote`-delimited string or identifier whose opening quote was read; a
    /// doubled quote inside stands for one.
    fn read_quoted(chars: &mut Peekable<Chars<'_>>, quote: char) -> String {
        let mut text = String::new();
        while let Some(c) = chars.next() {
            if c == quote && chars.next_if_eq(&quote).is_none() {
                break;
            }
            text.push(c);
        }
        text
    }

    fn is_word(token: Option<&Token>, word: &str) -> bool {
        matches!(token, Some(Token::Word(w)) if w == word)
    }

    /// The identifier a token names, if it is one (keywords included).
    fn name(token: &Token) -> Option<&str> {
        match token {
            Token::Word(w) | Token::Quoted(w) => Some(w),
            _ => None,
        }
    }

    /// What is inside the parentheses that open at `tokens[open]`, if a `(` is there.
    fn parenthesized(tokens: &[Token], open: usize) -> Option<&[Token]> {
        if tokens.get(open) != Some(&Token::Symbol('(')) {
            return None;
        }
        let mut depth = 0;
        for (i, token) in tokens.iter().enumerate().skip(open) {
            match token {
                Token::Symbol('(') => depth += 1,
                Token::Symbol(')') => depth -= 1,
                _ => {}
            }
            if depth == 0 {
                return Some(&tokens[open + 1..i]);
            }
        }
        None
    }

    /// The tables and columns of the store's keyspace: those every schema file creates, and the
    /// migration runner's `schema_migrations` (which the adapter reads to check the version).
    fn schema() -> Schema {
        let config = ScyllaConfig::parse("scylla://node:9042/the_keyspace").expect("valid URL");
        let runner = bootstrap_statements(&config).map(|s| s.replace("the_keyspace.", ""));
        schema_of(
            MIGRATIONS
                .iter()
                .flat_map(|m| statements(m.cql))
                .chain(runner),
        )
    }

    /// The tables and columns `statements` create, in order: `CREATE TABLE`, then the columns
    /// a later `ALTER TABLE ... ADD` gives a table. Panics on any other statement that changes
    /// a table (the reader does not follow those yet), and on a `CREATE TABLE` or `ALTER TABLE`
    /// it cannot read (such as one of a table not created before it).
    fn schema_of(statements: impl IntoIterator<Item = String>) -> Schema {
        let mut schema = Schema::new();
        for statement in statements {
            let tokens = tokenize(&statement);
            if !is_word(tokens.get(1), "table") {
                continue;
            }
            if is_word(tokens.first(), "create") {
                let (table, columns) = create_table(&tokens)
                    .unwrap_or_else(|why| panic!("cannot read `{statement}`: {why}"));
                schema.insert(table, columns);
            } else if is_word(tokens.first(), "alter") && is_word(tokens.get(3), "add") {
                let (table, added) = alter_table_add(&tokens)
                    .unwrap_or_else(|why| panic!("cannot read `{statement}`: {why}"));
                let columns = schema.get_mut(&table).unwrap_or_else(|| {
                    panic!(
                        "`{statement}` adds to table `{table}`, which no earlier statement creates"
                    )
                });
                for column in added {
                    assert!(
                        columns.insert(column.clone()),
                        "`{statement}` adds column `{column}`, which table `{table}` has already"
                    );
                }
            } else if is_word(tokens.first(), "alter") || is_word(tokens.first(), "drop") {
                panic!(
                    "`{statement}` changes a table: teach schema_of() (cql_syntax.rs) to follow it"
                );
            }
        }
        schema
    }

    /// The table and the new column names of `ALTER TABLE name ADD column type` or
    /// `ALTER TABLE name ADD (column type, ...)`.
    fn alter_table_add(tokens: &[Token]) -> Result<(String, Vec<String>), String> {
        let table = tokens.get(2).and_then(name).ok_or("no table name")?;
        let rest = tokens.get(4..).unwrap_or_default();
        let definitions = match parenthesized(tokens, 4) {
            Some(body) => split_top_level(body),
            None => vec![rest.to_vec()],
        };
        let columns = definitions
            .iter()
            .map(|definition| match definition.as_slice() {
                [column, _type, ..] => name(column).map(str::to_owned),
                _ => None,
            })
            .collect::<Option<Vec<String>>>()
            .ok_or("a column without a name or type")?;
        Ok((table.to_owned(), columns))
    }

    /// Splits a parenthesized body at its top-level commas: `map<text, int>` and
    /// `PRIMARY KEY ((a, b), c)` hold commas of their own.
    fn split_top_level(body: &[Token]) -> Vec<Vec<Token>> {
        let mut definitions = vec![Vec::new()];
        let mut depth = 0;
        for token in body {
            match token {
                Token::Symbol('(' | '<') => depth += 1,
                Token::Symbol(')' | '>') => depth -= 1,
                Token::Symbol(',') if depth == 0 => {
                    definitions.push(Vec::new());
                    continue;
                }
                _ => {}
            }
            definitions
                .last_mut()
                .expect("one at least")
                .push(token.clone());
        }
        definitions
    }

    /// The table and column names of `CREATE TABLE [IF NOT EXISTS] name (column type [...],
    /// ..., [PRIMARY KEY (...)]) [WITH ...]`.
    fn create_table(tokens: &[Token]) -> Result<(String, BTreeSet<String>), String> {
        let mut at = 2;
        if is_word(tokens.get(at), "if") {
            at += 3; // IF NOT EXISTS
        }
        let table = tokens.get(at).and_then(name).ok_or("no table name")?;
        if tokens.get(at + 1) == Some(&Token::Symbol('.')) {
            return Err("the table name is qualified with a keyspace".into());
        }
        let body = parenthesized(tokens, at + 1).ok_or("no parenthesized column list")?;
        let definitions = split_top_level(body);
        let mut columns = BTreeSet::new();
        for definition in &definitions {
            if is_word(definition.first(), "primary") && is_word(definition.get(1), "key") {
                continue;
            }
            let column = definition
                .first()
                .and_then(name)
                .ok_or_else(|| format!("a column definition without a name: {definition:?}"))?;
            columns.insert(column.to_owned());
        }
        Ok((table.to_owned(), columns))
    }

    /// What is wrong with `statements` against `schema`: one line per problem, each starting
    /// with its statement in backquotes. Empty when every table and column exists.
    fn schema_problems(schema: &Schema, statements: &[&str]) -> Vec<String> {
        statements
            .iter()
            .flat_map(|statement| {
                statement_problems(schema, statement)
                    .into_iter()
                    .map(move |problem| format!("`{statement}`: {problem}"))
            })
            .collect()
    }

    /// What is wrong with one `SELECT`, `INSERT`, `UPDATE` or `DELETE`: its table is not in
    /// `schema`, or it names a word that is neither a keyword nor a column of that table, or
    /// (for an `INSERT`) it has not one `?` per column.
    fn statement_problems(schema: &Schema, statement: &str) -> Vec<String> {
        let tokens = tokenize(statement);
        let verb = match tokens.first() {
            Some(Token::Word(w)) => w.as_str(),
            _ => "",
        };
        if !matches!(verb, "select" | "insert" | "update" | "delete") {
            return vec!["not a SELECT, INSERT, UPDATE or DELETE statement".into()];
        }
        // The table: the name after the first FROM, INTO or UPDATE.
        let Some(table_at) = tokens
            .iter()
            .position(
                |t| matches!(t, Token::Word(w) if matches!(w.as_str(), "from" | "into" | "update")),
            )
            .map(|keyword| keyword + 1)
            .filter(|&at| tokens.get(at).and_then(name).is_some())
        else {
            return vec!["no table name after FROM, INTO or UPDATE".into()];
        };
        let table = name(&tokens[table_at]).expect("a name");
        if tokens.get(table_at + 1) == Some(&Token::Symbol('.')) {
            return vec![format!(
                "the table name `{table}` is qualified with a keyspace: the session uses the \
                 store's keyspace"
            )];
        }
        let Some(columns) = schema.get(table) else {
            return vec![format!(
                "unknown table `{table}`: no projections/*.cql file creates it"
            )];
        };
        let mut problems = Vec::new();
        for (i, token) in tokens.iter().enumerate() {
            let is_alias = i > 0 && is_word(tokens.get(i - 1), "as");
            let column = match token {
                Token::Word(w) if !KEYWORDS.contains(&w.as_str()) => w,
                Token::Quoted(q) => q,
                _ => continue,
            };
            if i == table_at || is_alias || columns.contains(column) {
                continue;
            }
            let problem = format!("unknown column `{column}` (not in table `{table}`)");
            if !problems.contains(&problem) {
                problems.push(problem);
            }
        }
        if verb == "insert" {
            problems.extend(insert_arity_problem(&tokens, table_at));
        }
        problems
    }

    /// For `INSERT INTO table (columns) VALUES (values)`: a problem unless there is one `?`
    /// in the values per column.
    fn insert_arity_problem(tokens: &[Token], table_at: usize) -> Option<String> {
        let columns = parenthesized(tokens, table_at + 1);
        let values = tokens
            .iter()
            .position(|t| is_word(Some(t), "values"))
            .and_then(|at| parenthesized(tokens, at + 1));
        let (Some(columns), Some(values)) = (columns, values) else {
            return Some("an INSERT without `(columns) VALUES (...)`".into());
        };
        let columns = columns.iter().filter(|t| name(t).is_some()).count();
        let markers = values.iter().filter(|t| **t == Token::Marker).count();
        (columns != markers)
            .then(|| format!("the INSERT names {columns} columns but has {markers} `?` in VALUES"))
    }
}
