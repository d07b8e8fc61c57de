#!/usr/bin/env bash
# Installs the CQL grammar used by tools/cqlcheck.py: cqlsh==6.2.2 from PyPI (it needs
# Python >= 3.10), into ${CQLCHECK_VENV:-target/cqlcheck-venv} (relative to the repository root).
# Idempotent: does nothing when that version is already installed there. Prints one line.
#
#   1. `python3 -m venv` + pip install into the venv.
#   2. Where venv is unavailable (Debian/Ubuntu without python3-venv): `pip install --target
#      <venv>/site`, plus <venv>/bin/python3, a wrapper that puts <venv>/site on PYTHONPATH.
#      Without pip either, pip itself is fetched from PyPI and run from its wheel.
# Either way <venv>/bin/python3 is a python that has cqlsh; tools/cqlcheck.py uses it.
#
# Environment: CQLCHECK_VENV (install dir), CQLCHECK_BASE_PYTHON (python to install with;
# default: the first of python3, python3.13 .. python3.10 that is >= 3.10). pip's own settings
# (PIP_INDEX_URL, proxies...) apply.
set -euo pipefail

CQLSH_VERSION=6.2.2
PIP_BOOTSTRAP_VERSION=25.2 # only used when the base python has no pip

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${CQLCHECK_VENV:-target/cqlcheck-venv}"
case "$venv" in /*) ;; *) venv="$root/$venv" ;; esac
shown="${venv#"$root"/}"

die() {
    printf 'cqlcheck-setup: error: %s\n' "$*" >&2
    exit 1
}

# has_cqlsh PYTHON: does PYTHON import cqlsh's grammar, at the pinned version?
has_cqlsh() {
    "$1" -c 'import sys, importlib.metadata as m, cqlshlib.cql3handling
sys.exit(m.version("cqlsh") != sys.argv[1])' "$CQLSH_VERSION" >/dev/null 2>&1
}

if [ -x "$venv/bin/python3" ] && has_cqlsh "$venv/bin/python3"; then
    echo "cqlcheck-setup: cqlsh $CQLSH_VERSION already installed in $shown"
    exit 0
fi

# The base interpreter: cqlsh 6.2.2 (and cassandra-driver 3.30) require Python >= 3.10.
py_ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 10))' >/dev/null 2>&1; }
py=""
for candidate in ${CQLCHECK_BASE_PYTHON:-python3 python3.13 python3.12 python3.11 python3.10}; do
    if command -v "$candidate" >/dev/null 2>&1 && py_ok "$candidate"; then
        py="$(command -v "$candidate")"
        break
    fi
done
if [ -z "$py" ]; then
    found="$(python3 --version 2>&1)" || found="no python3 on PATH"
    die "cqlsh $CQLSH_VERSION needs Python >= 3.10 (found: $found). Install Python 3.10+" \
        "(or set CQLCHECK_BASE_PYTHON to one)."
fi
pyver="$("$py" -c 'import platform; print(platform.python_version())')"

# Never install over a directory that is not ours.
if [ -d "$venv" ] && [ -n "$(ls -A "$venv")" ] && [ ! -f "$venv/pyvenv.cfg" ] && [ ! -d "$venv/site" ]; then
    die "$venv exists and is not a cqlcheck venv; remove it or set CQLCHECK_VENV"
fi

# cassandra-driver ships wheels; should pip build it from source, skip its optional C extensions.
export CASS_DRIVER_NO_EXTENSIONS=1 CASS_DRIVER_NO_CYTHON=1
export PIP_NO_CACHE_DIR=1 # nothing written outside the repository
export PIP_ROOT_USER_ACTION=ignore # CI containers run as root; the install is private anyway
pip_flags=(--quiet --disable-pip-version-check --no-input)
start=$SECONDS

mode=""
# 1. A venv, unless a previous run found venv unusable here (it left <venv>/site).
if [ ! -d "$venv/site" ]; then
    created=1
    if [ -d "$venv" ] && [ -n "$(ls -A "$venv")" ]; then created=0; fi
    err="$(mktemp)"
    trap 'rm -f "$err"' EXIT
    if "$py" -m venv "$venv" >"$err" 2>&1 && "$venv/bin/python3" -m pip --version >/dev/null 2>&1; then
        "$venv/bin/python3" -m pip install "${pip_flags[@]}" "cqlsh==$CQLSH_VERSION"
        mode="venv"
    elif [ "$created" = 1 ]; then
        rm -rf -- "$venv" # a half-made venv (ensurepip missing) would shadow the fallback
    else
        die "'$py -m venv $venv' failed: $(tr '\n' ' ' <"$err"); remove $venv and retry"
    fi
fi

# 2. pip install --target, and a python3 wrapper.
if [ -z "$mode" ]; then
    site="$venv/site"
    mkdir -p "$site" "$venv/bin"
    if "$py" -m pip --version >/dev/null 2>&1; then
        pip=("$py" -m pip)
        mode="pip --target, no python3-venv"
    else
        # No pip: fetch pip's wheel from PyPI (checked against PyPI's sha256) and run pip from it.
        wheel="$("$py" - "$PIP_BOOTSTRAP_VERSION" "$venv" <<'EOF'
import hashlib, json, os, re, sys, urllib.parse, urllib.request
version, dest = sys.argv[1], sys.argv[2]
name = f"pip-{version}-py3-none-any.whl"
index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/") + "/pip/"
req = urllib.request.Request(index, headers={"Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1"})
with urllib.request.urlopen(req, timeout=60) as r:  # the Simple API, as pip uses it
    body, ctype = r.read().decode(), r.headers.get("Content-Type", "")
if "json" in ctype:
    (f,) = [f for f in json.loads(body)["files"] if f["filename"] == name]
    url, sha = f["url"], f["hashes"]["sha256"]
else:
    url, sha = re.search(r'href="([^"#]*' + re.escape(name) + r')#sha256=([0-9a-f]+)"', body).groups()
with urllib.request.urlopen(urllib.parse.urljoin(index, url), timeout=120) as r:
    data = r.read()
if hashlib.sha256(data).hexdigest() != sha:
    sys.exit(f"{name}: sha256 mismatch")
with open(f"{dest}/{name}", "wb") as out:
    out.write(data)
print(f"{dest}/{name}")
EOF
)" || die "no pip and no python3 -m venv, and fetching pip $PIP_BOOTSTRAP_VERSION from PyPI failed"
        pip=("$py" "$wheel/pip")
        mode="pip --target, no python3-venv nor pip"
    fi
    "${pip[@]}" install "${pip_flags[@]}" --no-warn-script-location --upgrade --target "$site" "cqlsh==$CQLSH_VERSION"
    rm -f "$venv"/pip-*.whl
    {
        echo '#!/usr/bin/env bash' # %q below quotes for bash
        echo '# Written by tools/cqlcheck-setup.sh: a python that has cqlsh (installed with pip --target).'
        printf 'PYTHONPATH=%q${PYTHONPATH:+:$PYTHONPATH}\nexport PYTHONPATH\nexec %q "$@"\n' "$site" "$py"
    } >"$venv/bin/python3"
    chmod +x "$venv/bin/python3"
fi

has_cqlsh "$venv/bin/python3" || die "cqlsh $CQLSH_VERSION was installed into $shown but cannot be imported"
echo "cqlcheck-setup: installed cqlsh $CQLSH_VERSION into $shown ($mode, Python $pyver, $((SECONDS - start))s)"
