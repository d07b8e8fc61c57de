#!/usr/bin/env bash
# Stops the proxy and Cassandra started by start.sh, using the PID files in
# target/cassandra21/. Each gets SIGTERM, then SIGKILL if it is still running after
# CASSANDRA21_STOP_TIMEOUT seconds (default 30). The data stays in target/cassandra21/data;
# delete that directory for a clean node.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
dir="$root/target/cassandra21"
timeout="${CASSANDRA21_STOP_TIMEOUT:-30}"

say() { printf 'cassandra21: %s\n' "$*"; }

# stop NAME PIDFILE PATTERN. PATTERN must be in the process's command line, so that a PID
# reused by another process since is never signalled.
stop() {
    local pid deadline
    if [ ! -f "$2" ]; then
        say "$1 is not running (no ${2#"$root"/})"
        return
    fi
    pid="$(cat "$2")"
    if ! kill -0 "$pid" 2>/dev/null ||
        ! tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$3"; then
        say "$1 is not running (stale pid $pid)"
        rm -f "$2"
        return
    fi
    kill "$pid"
    deadline=$((SECONDS + timeout))
    # A zombie has exited; only its parent (init, since start.sh detached it) has yet to reap it.
    while kill -0 "$pid" 2>/dev/null && ! ps -o stat= -p "$pid" | grep -q '^Z'; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            say "$1 (pid $pid) still running after ${timeout}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.2
    done
    rm -f "$2"
    say "stopped $1 (pid $pid)"
}

stop "the proxy" "$dir/proxy.pid" v4proxy.py
stop Cassandra "$dir/cassandra.pid" CassandraDaemon
rm -f "$dir/proxy.port"
