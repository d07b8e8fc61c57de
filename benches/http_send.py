#!/usr/bin/env python3
"""Send-path benchmark: `missive serve` (embedded default) against a bare axum echo handler.

What it does, all on loopback:
 1. builds the release binaries;
 2. runs `wrk -t1 -c32 -d10s` posting the same JSON body to the echo baseline and records its
    requests/s (the HTTP ceiling of this machine);
 3. starts `missive serve` on a fresh data directory, registers two users, befriends them;
 4. runs the same wrk load posting direct messages from alice to bob, and at the same time a
    paced wrk (2 connections, one 50-message history page each every 10 ms) reading bob's
    history, with latency percentiles;
 5. after the burst, polls bob's unread count until it equals the number of MessageSent events
    the server appended (from /metrics), and reports how long that took (goal: within 2 s).

Usage: python3 benches/http_send.py [--duration 10] [--connections 32] [--log-sync full|normal]
Needs `wrk` (apt-get install wrk). Prints a summary and exits non-zero on errors.
"""
import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MISSIVE = os.path.join(ROOT, "target", "release", "missive")
ECHO = os.path.join(ROOT, "target", "release", "examples", "echo_baseline")
SEND_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("MISSIVE_BENCH_TOKEN")
wrk.body = '{"text":"hello from the load generator, a message of ordinary length"}'
"""
# The history probe is paced (one page per connection every 10 ms, ~200 pages/s in all): it
# measures what a reader waits while the send burst runs, without becoming a load of its own.
READ_LUA = """
wrk.headers["Authorization"] = "Bearer " .. os.getenv("MISSIVE_BENCH_TOKEN")
function delay() return 10 end
"""


def http(method, url, body=None, token=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    with urllib.request.urlopen(req, timeout=10) as resp:
        text = resp.read().decode()
        return json.loads(text) if text.startswith(("{", "[")) else text


def wait_listening(url, deadline=20):
    start = time.time()
    while time.time() - start < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return
        except Exception:
            time.sleep(0.05)
    sys.exit(f"server at {url} did not start")


def run_wrk(url, lua, duration, connections, token, latency=False):
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(lua)
        script = f.name
    args = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "-s", script, url]
    if latency:
        args.insert(1, "--latency")
    env = dict(os.environ, MISSIVE_BENCH_TOKEN=token or "")
    return subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env)


def parse_wrk(out):
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: (.*)", out)
    socket_errors = m.group(1) if m else "none"
    p = {k: v for k, v in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.M)}
    return {"rps": rps, "total": total, "errors": errors, "socket_errors": socket_errors, "latency": p}


def metric(base, name, label):
    text = http("GET", base + "/metrics")
    m = re.search(re.escape(name) + r"\{" + re.escape(label) + r"\} (\d+)", text)
    return int(m.group(1)) if m else 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--log-sync", default="full", choices=["full", "normal"])
    args = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt-get install wrk")
    subprocess.run(["cargo", "build", "--release", "-p", "missive-cli", "-p", "missive-api",
                    "--example", "echo_baseline", "--bin", "missive"], cwd=ROOT, check=True)

    echo = subprocess.Popen([ECHO, "127.0.0.1:18090"])
    try:
        wait_listening("http://127.0.0.1:18090/")
        url = "http://127.0.0.1:18090/v1/conversations/direct/x/messages"
        baseline = parse_wrk(run_wrk(url, SEND_LUA, args.duration, args.connections, "x").communicate()[0])
    finally:
        echo.send_signal(signal.SIGTERM)
        echo.wait()

    data = tempfile.mkdtemp(prefix="missive-bench-")
    base = "http://127.0.0.1:18091"
    server = subprocess.Popen([MISSIVE, "serve", "--data-dir", data, "--listen", "127.0.0.1:18091",
                               "--log-sync", args.log_sync,
                               # One sender at wrk's rate: no limit (they are for people).
                               "--rate-limit-per-user", "0", "--rate-limit-per-ip", "0"],
                              stderr=subprocess.DEVNULL)
    try:
        wait_listening(base + "/healthz")
        alice = http("POST", base + "/v1/users", {"username": "alice"})
        bob = http("POST", base + "/v1/users", {"username": "bob"})
        http("POST", f"{base}/v1/friends/{bob['id']}", token=alice["token"])
        http("POST", f"{base}/v1/friends/{alice['id']}/accept", token=bob["token"])
        first = http("POST", f"{base}/v1/conversations/direct/{bob['id']}/messages",
                     {"text": "first"}, alice["token"])
        conv = first["conversation_id"]
        send_url = f"{base}/v1/conversations/direct/{bob['id']}/messages"
        read_url = f"{base}/v1/conversations/{conv}/messages?limit=50"
        reader = run_wrk(read_url, READ_LUA, args.duration, 2, bob["token"], latency=True)
        sender = run_wrk(send_url, SEND_LUA, args.duration, args.connections, alice["token"])
        sends = parse_wrk(sender.communicate()[0])
        reads = parse_wrk(reader.communicate()[0])
        burst_end = time.time()
        appended = metric(base, "missive_events_appended_total", 'event_type="MessageSent",topic="messages"')
        unread = -1
        while time.time() - burst_end < 30:
            convs = http("GET", base + "/v1/conversations", token=bob["token"])
            unread = convs["items"][0]["unread_count"]
            if unread == appended:
                break
            time.sleep(0.01)
        caught_up = time.time() - burst_end
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait()
        shutil.rmtree(data, ignore_errors=True)

    ratio = sends["rps"] / baseline["rps"]
    print()
    print(f"echo baseline   : {baseline['rps']:>10.0f} req/s  (errors {baseline['errors']})")
    print(f"missive sends   : {sends['rps']:>10.0f} req/s  (non-2xx {sends['errors']}, socket {sends['socket_errors']})"
          f"  = {ratio:.0%} of baseline (goal 40%)")
    print(f"history reads   : {reads['rps']:>10.0f} req/s  p50 {reads['latency'].get('50')}  "
          f"p99 {reads['latency'].get('99')} (goal p99 < 5ms)")
    print(f"acknowledged    : {appended} MessageSent events; bob's unread count {unread}; "
          f"equal {caught_up:.2f}s after the burst (goal 2s)")
    ok = sends["errors"] == 0 and unread == appended
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
