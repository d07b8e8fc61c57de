#!/usr/bin/env python3
"""Syntax-check CQL without a Cassandra/Scylla server, using cqlsh's own grammar.

Usage:
    tools/cqlcheck.py FILE.cql [FILE.cql ...]     ('-' reads stdin)

Install the grammar once with `tools/cqlcheck-setup.sh` (cqlsh==6.2.2 from PyPI, in
target/cqlcheck-venv). This script then finds it by itself; any python3 can start it.

Input: statements separated by ';' (a BEGIN ... APPLY BATCH block counts as one; the last
';' may be omitted); `--`, `//` and `/* */` comments are allowed. Bind markers are replaced by
literals before parsing, because cqlsh's grammar has none: `?` and `:name` -> 0, `IN ?` ->
IN (0), `JSON ?` -> JSON '{}'. `PRIMARY KEY ((a), b)`, valid CQL that cqlsh's grammar lacks,
is read as `PRIMARY KEY (a, b)`.

Output: one line per invalid statement, `FILE:LINE:COL: reason: statement`, then a summary.

Exit status: 0 all statements parse; 1 at least one invalid statement;
             2 usage error, unreadable file, or cqlsh not installed.

Limits: this is cqlsh's (tab-completion) grammar, so it checks syntax only: unknown tables,
columns, types, table options and restriction rules are not detected. Scylla-only clauses
(`BYPASS CACHE`, `USING TIMEOUT`), tuple relations (`(c, d) > (?, ?)`) and collection
literals added to a column (`SET m = m + {'k': 1}`; `m = m + ?` is fine) are rejected.

Interpreter selection: $MISSIVE_CQLCHECK (a python with cqlsh) if set, else the python of
${CQLCHECK_VENV:-target/cqlcheck-venv} (relative to the repository root) if it exists,
else the python running this script.
"""

import argparse
import bisect
import os
import re
import sys
from pathlib import Path

CQLSH_VERSION = "6.2.2"
ROOT = Path(__file__).resolve().parent.parent
SETUP_HINT = (
    f"cqlcheck: cqlsh {CQLSH_VERSION} (the CQL grammar) is not installed.\n"
    "Install it with:  tools/cqlcheck-setup.sh   (creates target/cqlcheck-venv; needs Python >= 3.10 "
    "and access to PyPI)\n"
    "or set MISSIVE_CQLCHECK to a python interpreter that has cqlsh==" + CQLSH_VERSION + " installed."
)


def _venv_dir():
    venv = Path(os.environ.get("CQLCHECK_VENV") or "target/cqlcheck-venv")
    return venv if venv.is_absolute() else ROOT / venv


def _load_grammar(argv):
    """Returns (CqlRuleSet, pylexotron), re-executing under the configured interpreter first."""
    venv = _venv_dir()
    if not os.environ.get("_CQLCHECK_REEXEC"):
        target = os.environ.get("MISSIVE_CQLCHECK")
        if not target and (venv / "bin" / "python3").exists():
            target = str(venv / "bin" / "python3")
        if target and os.path.abspath(target) != os.path.abspath(sys.executable):
            os.environ["_CQLCHECK_REEXEC"] = "1"
            try:
                os.execv(target, [target, os.path.abspath(__file__), *argv])
            except OSError as e:
                print(f"cqlcheck: cannot run {target}: {e}\n{SETUP_HINT}", file=sys.stderr)
                sys.exit(2)
    site = venv / "site"  # layout of the `pip install --target` fallback of cqlcheck-setup.sh
    if site.is_dir() and str(site) not in sys.path:
        sys.path.insert(0, str(site))
    try:
        from cqlshlib import pylexotron
        from cqlshlib.cql3handling import CqlRuleSet
    except ImportError as e:
        print(f"{SETUP_HINT}\n(python: {sys.executable}; import error: {e})", file=sys.stderr)
        sys.exit(2)
    _merge_equivalent_parses(pylexotron)
    return CqlRuleSet, pylexotron


def _merge_equivalent_parses(pylexotron):
    """Makes cqlsh's parser linear instead of exponential on long statements.

    Its matchers return every way a rule matches, and ambiguous rules multiply them: each
    column type of a CREATE TABLE matches both as a native type and as a user type name, so a
    14-column table takes 5 s and a 30-column one never ends. Parses that stop at the same
    token continue identically (matching depends on the tokens only; the rest is completion
    and naming data, which a syntax check does not use), so keep one parse per position.
    """

    def unique(ctxts, seen):
        out = []
        for ctxt in ctxts:
            if len(ctxt.remainder) not in seen:
                seen.add(len(ctxt.remainder))
                out.append(ctxt)
        return out

    def choice(self, ctxt, completions):
        return unique([c for alt in self.arg for c in alt.match(ctxt, completions)], set())

    def series(self, ctxt, completions):
        ctxts = [ctxt]
        for piece in self.arg:
            ctxts = unique([c for each in ctxts for c in piece.match(each, completions)], set())
            if not ctxts:
                return ()
        return ctxts

    def repeat(self, ctxt, completions):
        seen = {len(ctxt.remainder)}
        found = ctxts = [ctxt]
        while ctxts:
            ctxts = unique([c for each in ctxts for c in self.arg.match(each, completions)], seen)
            found = found + ctxts
        return found

    pylexotron.Choice.match = choice
    pylexotron.RuleSeries.match = series
    pylexotron.Repeat.match = repeat


_UNCLOSED = {  # cqlsh's token types for literals left open
    "unclosedString": "string literal",
    "unclosedPgString": "$$ string",
    "unclosedName": "quoted identifier",
    "unclosedComment": "comment",
}
_LINE_END_SEMI = re.compile(r";[ \t]*(?:\n|$)")
_LEADING_JUNK = re.compile(r"(?:\s+|--[^\n]*|//[^\n]*|/\*.*?\*/)*", re.S)

# What is rewritten before parsing. Literals and comments are matched too (and kept) so that a
# '?' or ':x' inside them is left alone.
_TOK = re.compile(
    r"'(?:[^']|'')*'"  # string literal
    r"|\$\$.*?\$\$"  # $$ string $$
    r'|"(?:[^"]|"")*"'  # quoted identifier
    r"|--[^\n]*|//[^\n]*|/\*.*?\*/"  # comments
    r"|\bIN\s*\?"  # IN ?    -> IN (0)
    r"|\bJSON\s*\?"  # JSON ?  -> JSON '{}'
    r"|\?"  # ?       -> 0
    r"|(?<=[\s(,=<>\[+-]):[A-Za-z_][A-Za-z0-9_]*"  # :name   -> 0
    # PRIMARY KEY ((a), b) -> PRIMARY KEY (a, b): valid CQL (same meaning) that cqlsh's
    # grammar lacks (its parenthesised partition key needs two columns or more).
    r'|\bPRIMARY\s+KEY\s*\(\s*\(\s*(?P<pk>[A-Za-z_][A-Za-z0-9_]*|"(?:[^"]|"")*")\s*\)',
    re.S | re.I,
)


class _Source:
    """The text as rewritten for cqlsh's grammar (see _TOK), and the map back to the original's
    offsets (line numbers are kept)."""

    def __init__(self, text):
        self.orig = text
        parts, self._sub_starts, self._spans = [], [], []
        pos = sub_len = 0
        for m in _TOK.finditer(text):
            tok = m.group(0)
            if tok[0] in "'\"$" or tok.startswith(("--", "//", "/*")):
                continue
            upper = tok.upper()
            if upper.startswith("PRIMARY"):
                new = f"PRIMARY KEY ({m.group('pk')}"
            elif upper.startswith("IN"):
                new = "IN (0)"
            elif upper.startswith("JSON"):
                new = "JSON '{}'"
            else:
                new = "0"
            new += "\n" * tok.count("\n")  # keep line numbers
            parts.append(text[pos : m.start()])
            sub_len += m.start() - pos
            self._sub_starts.append(sub_len)
            self._spans.append((m.start(), m.end(), len(new)))
            parts.append(new)
            sub_len += len(new)
            pos = m.end()
        parts.append(text[pos:])
        self.text = "".join(parts)

    def orig_offset(self, sub_offset, end=False):
        i = bisect.bisect_right(self._sub_starts, sub_offset) - 1
        if i < 0:
            return sub_offset
        start, stop, new_len = self._spans[i]
        inside = sub_offset - self._sub_starts[i]
        if inside < new_len:  # within a substituted marker
            return stop if end else start
        return stop + inside - new_len

    def line_col(self, orig_offset):
        line = self.orig.count("\n", 0, orig_offset) + 1
        return line, orig_offset - (self.orig.rfind("\n", 0, orig_offset) + 1) + 1


class Checker:
    def __init__(self, ruleset, pylexotron):
        self.rules = ruleset
        self.pylexotron = pylexotron

    def check_text(self, text):
        """Returns (number of statements, [(line, col, reason, statement)] for the invalid ones)."""
        src = _Source(text)
        sub = src.text
        if sub.strip() and not sub.rstrip().endswith(";"):
            sub = sub.rstrip() + "\n;"  # a missing final ';' is fine (own line: may follow a comment)
        errors = []  # (sub_start, sub_end, sub_pos, reason)
        blanked = 0
        while True:
            # A bad character, or a literal left open, spoils the rest of the text: report its
            # statement, blank the statement out (up to the next ';') and split the text again.
            try:
                stmts, incomplete = self.rules.cql_split_statements(sub)
            except self.pylexotron.LexingError as e:
                bad = sum(len(line) + 1 for line in sub.split("\n")[: e.linenum - 1]) + e.charnum - 1
                end = sub.find(";", bad)
                reason = f"unexpected character {sub[bad]!r}"
            else:
                unclosed = [
                    t for toks in stmts for t in toks if t[0] in _UNCLOSED and t[0] != "unclosedComment"
                ]
                if not unclosed:
                    break
                bad = unclosed[0][2][0]
                end = _LINE_END_SEMI.search(sub, bad)
                end = end.start() if end else sub.find(";", bad)
                reason = f"unterminated {_UNCLOSED[unclosed[0][0]]}"
            end = len(sub) if end < 0 else end + 1
            start = _LEADING_JUNK.match(sub, self._statement_start(sub, bad), bad).end()
            # An unbalanced quote pairs the ones after it wrongly: point at the statement.
            errors.append((start, end, start if reason.startswith("unterminated") else bad, reason))
            blanked += 1
            sub = sub[:start] + re.sub(r"[^\n]", " ", sub[start:end]) + sub[end:]
        stmts = [toks for toks in stmts if toks and toks[0][0] != "endtoken"]  # skip empty statements
        for n, toks in enumerate(stmts):
            span = (toks[0][2][0], toks[-1][2][1])
            unclosed = [t for t in toks if t[0] in _UNCLOSED]  # only a comment is left by now
            if unclosed:
                errors.append((*span, unclosed[0][2][0], f"unterminated {_UNCLOSED[unclosed[0][0]]}"))
            elif incomplete and n == len(stmts) - 1:
                errors.append((*span, span[0], "unterminated BATCH (no APPLY BATCH)"))
            elif not self.rules.cql_whole_parse_tokens(toks, srcstr=sub, startsymbol="CQL_Statement"):
                errors.append((*span, *self._syntax_error(toks)))
        out = []
        for start, end, pos, reason in sorted(errors):
            orig_start, orig_end = src.orig_offset(start), src.orig_offset(end, end=True)
            line, col = src.line_col(src.orig_offset(pos))
            out.append((line, col, reason, text[orig_start:orig_end]))
        return len(stmts) + blanked, out

    def _statement_start(self, sub, bad):
        """Offset just after the last ';' that ends a statement before offset `bad`."""
        try:
            toks = self.rules.lex(sub[:bad])
        except self.pylexotron.LexingError:
            toks = []
        ends = [t[2][1] for t in toks if t[0] == "endtoken"]
        return ends[-1] if ends else 0

    def _syntax_error(self, toks):
        """(offset, reason) of the first token that no statement can continue with (best effort)."""
        try:
            # Without a server, cqlsh's schema-based completers return nothing; disable them so
            # that every prefix the grammar allows yields completions.
            matcher = self.pylexotron.Matcher
            saved = matcher.__dict__["try_registered_completion"]
            matcher.try_registered_completion = staticmethod(lambda *a: False)
            try:
                lo, hi = 0, len(toks) - 1  # largest viable prefix length, by bisection
                while lo < hi:
                    mid = (lo + hi + 1) // 2
                    if self.rules.complete("CQL_Statement", toks[:mid]):
                        lo = mid
                    else:
                        hi = mid - 1
            finally:
                matcher.try_registered_completion = saved
        except Exception:  # internals of another cqlsh version: fall back to a bare reason
            return toks[0][2][0], "syntax error"
        bad = toks[lo]
        if bad[0] == "endtoken":
            return bad[2][0], "syntax error: incomplete statement"
        return bad[2][0], f"syntax error at {bad[1]!r}"


def main(argv):
    parser = argparse.ArgumentParser(
        prog="cqlcheck.py",
        description="Syntax-check CQL statements with cqlsh's grammar (no server needed).",
        epilog="Exit status: 0 ok, 1 invalid statements, 2 usage error or cqlsh not installed "
        "(run tools/cqlcheck-setup.sh).",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="CQL file, or '-' for stdin")
    args = parser.parse_args(argv)  # exits 2 on usage errors

    checker = Checker(*_load_grammar(argv))  # before reading stdin: this may re-exec
    sources = []
    for path in args.files:
        try:
            if path == "-":
                sources.append(("<stdin>", sys.stdin.read()))
            else:
                with open(path, encoding="utf-8") as f:
                    sources.append((path, f.read()))
        except (OSError, UnicodeDecodeError) as e:
            print(f"cqlcheck: cannot read {path}: {e}", file=sys.stderr)
            return 2

    invalid = total = 0
    for name, text in sources:
        count, errors = checker.check_text(text)
        total += count
        for line, col, reason, stmt in errors:
            invalid += 1
            stmt = " ".join(stmt.split())
            print(f"{name}:{line}:{col}: {reason}: {stmt[:200]}{'...' if len(stmt) > 200 else ''}")
    print(f"cqlcheck: {total} statement(s) in {len(sources)} input(s), {invalid} invalid")
    return 1 if invalid else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
