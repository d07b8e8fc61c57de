#!/usr/bin/env bash
# Starts Cassandra 2.1 and the v4 proxy in the background (installed by setup.sh), waits
# until both accept connections, then prints on stdout the line to give to the tests:
#
#   eval "$(tools/cassandra21/start.sh)"    # sets MISSIVE_TEST_SCYLLA=127.0.0.1:9043
#
# Progress goes to stderr. Logs and PID files are in target/cassandra21/. Refuses to start
# when either process is already running; stop them with stop.sh.
#
# Environment:
#   CASSANDRA21_PORT          Cassandra's native port, protocol v3 (default 9042)
#   PROXY_PORT                the proxy's port, protocol v4; the tests use this (default 9043)
#   CASSANDRA21_STORAGE_PORT  Cassandra's inter-node port; only bound, never used (default 7000)
#   CASSANDRA21_TIMEOUT       seconds to wait for each of the two ports (default 60)
#   V4PROXY_DEBUG=1           the proxy logs every query it sees
set -euo pipefail

CASSANDRA=apache-cassandra-2.1.0
cassandra_port="${CASSANDRA21_PORT:-9042}"
proxy_port="${PROXY_PORT:-9043}"
storage_port="${CASSANDRA21_STORAGE_PORT:-7000}"
timeout="${CASSANDRA21_TIMEOUT:-60}"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
dir="$root/target/cassandra21"
home="$dir/package/$CASSANDRA"

say() { printf 'cassandra21: %s\n' "$*" >&2; }
die() {
    printf 'cassandra21: error: %s\n' "$*" >&2
    exit 1
}

# alive PIDFILE PATTERN: is the process in PIDFILE running, and is its command line ours?
# (The pattern guards against a PID reused by another process after a crash.)
alive() {
    local pid
    [ -f "$1" ] && pid="$(cat "$1")" && [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null &&
        tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$2"
}

# accepts PORT: does 127.0.0.1:PORT accept a TCP connection?
accepts() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_for NAME PIDFILE PATTERN PORT LOG: polls until PORT accepts, the process dies or the
# deadline passes.
wait_for() {
    local deadline=$((SECONDS + timeout))
    until accepts "$4"; do
        if ! alive "$2" "$3"; then
            say "$1 exited during startup; the end of ${5#"$root"/}:"
            tail -n 20 "$5" >&2
            return 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            say "$1 did not accept connections on port $4 within ${timeout}s; see ${5#"$root"/}"
            return 1
        fi
        sleep 0.2
    done
}

[ -f "$home/lib/$CASSANDRA.jar" ] && [ -x "$dir/venv/bin/python" ] ||
    die "not installed; run tools/cassandra21/setup.sh first"

if alive "$dir/cassandra.pid" CassandraDaemon || alive "$dir/proxy.pid" v4proxy.py; then
    say "already running (Cassandra pid $(cat "$dir/cassandra.pid" 2>/dev/null || echo -)," \
        "proxy pid $(cat "$dir/proxy.pid" 2>/dev/null || echo -)), so not starting another."
    say "Its address for the tests: MISSIVE_TEST_SCYLLA=127.0.0.1:$(cat "$dir/proxy.port" 2>/dev/null || echo "$proxy_port")." \
        "To restart: tools/cassandra21/stop.sh, then this script again."
    exit 1
fi
for port in "$cassandra_port" "$proxy_port" "$storage_port"; do
    accepts "$port" && die "port $port is already in use by another process" \
        "(CASSANDRA21_PORT, PROXY_PORT and CASSANDRA21_STORAGE_PORT choose the ports)"
done
rm -f "$dir/cassandra.pid" "$dir/proxy.pid" "$dir/proxy.port"

# Java 17 forbids the reflection into the JDK that Cassandra 2.1 (written for Java 7/8)
# does. Without java.util.concurrent it fails at startup. Without java.lang.ref every
# PREPARE fails, and without java.nio.charset a PREPARE of system.peers fails: jamm's
# MemoryMeter walks each prepared statement's object graph to size the statement cache.
# Any missing package shows up in cassandra.log as an InaccessibleObjectException.
opens=()
for p in java.lang java.lang.ref java.lang.reflect java.lang.invoke java.util \
    java.util.concurrent java.util.concurrent.atomic java.util.concurrent.locks java.io \
    java.nio java.nio.channels java.nio.charset sun.nio.ch sun.nio.fs java.net \
    java.security java.text java.math jdk.internal.misc jdk.internal.ref; do
    opens+=(--add-opens "java.base/$p=ALL-UNNAMED")
done
opens+=(
    --add-exports java.base/jdk.internal.misc=ALL-UNNAMED
    --add-exports java.base/jdk.internal.ref=ALL-UNNAMED
    --add-exports java.base/sun.nio.ch=ALL-UNNAMED
    --add-opens java.management/sun.management=ALL-UNNAMED
    --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED
)
classpath="$home/conf$(printf ':%s' "$home"/lib/*.jar)"

say "starting Cassandra 2.1.0 on 127.0.0.1:$cassandra_port (log: target/cassandra21/cassandra.log)"
started=$SECONDS
cd "$dir" # the JVM's working directory: any crash file lands here
# setsid: its own session, so it outlives this shell and its terminal. In a non-interactive
# shell the background job is not a group leader, so setsid execs in place and $! is java.
setsid java "${opens[@]}" -Xms512m -Xmx512m -javaagent:"$home/lib/jamm-0.2.6.jar" \
    -Dcassandra-foreground=yes \
    -Dcassandra.native_transport_port="$cassandra_port" \
    -Dcassandra.storage_port="$storage_port" \
    -cp "$classpath" org.apache.cassandra.service.CassandraDaemon \
    >>"$dir/cassandra.log" 2>&1 </dev/null &
echo $! >"$dir/cassandra.pid"

if ! wait_for Cassandra "$dir/cassandra.pid" CassandraDaemon "$cassandra_port" "$dir/cassandra.log"; then
    "$here/stop.sh" >&2 || true
    exit 1
fi
say "Cassandra is up after $((SECONDS - started))s (pid $(cat "$dir/cassandra.pid"))"

say "starting the v4 proxy on 127.0.0.1:$proxy_port (log: target/cassandra21/proxy.log)"
setsid "$dir/venv/bin/python" "$here/v4proxy.py" "$proxy_port" "$cassandra_port" \
    >>"$dir/proxy.log" 2>&1 </dev/null &
echo $! >"$dir/proxy.pid"
echo "$proxy_port" >"$dir/proxy.port"

if ! wait_for "the proxy" "$dir/proxy.pid" v4proxy.py "$proxy_port" "$dir/proxy.log"; then
    "$here/stop.sh" >&2 || true
    exit 1
fi
say "ready after $((SECONDS - started))s (proxy pid $(cat "$dir/proxy.pid")); stop with tools/cassandra21/stop.sh"
echo "export MISSIVE_TEST_SCYLLA=127.0.0.1:$proxy_port"
