//! `missive loadtest` run as a real process against a server. Traffic mode: every operation
//! of the mix is issued, the counts add up, and what the report says was done is what the
//! server appended. Connections mode: it registers the users, opens the sessions, holds
//! them, and reports what the server holds and what failed. Bad flags are refused with a
//! reason. No assertion is about how fast anything was.

mod common;

use common::Harness;
use serde_json::Value;

async fn loadtest(args: &[&str]) -> std::process::Output {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_missive"))
            .arg("loadtest")
            .args(&args)
            .output()
            .expect("runs")
    })
    .await
    .expect("joined")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_mode_opens_holds_and_reports_sessions() {
    let h = Harness::start_with(|c| c.ws.max_sessions_per_user = 3).await;
    // 4 users, 14 sessions: users 0 and 1 get 4 each, one more than the server allows.
    let out = loadtest(&[
        "--target",
        &h.base,
        "--connections",
        "14",
        "--users",
        "4",
        "--duration",
        "300ms",
        "--json",
    ])
    .await;
    assert!(out.status.success(), "{out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["requested"], 14, "{report}");
    assert_eq!(report["users"], 4, "{report}");
    assert_eq!(report["opened"], 12, "{report}");
    // Refused before the upgrade (429), or after it when two opened at once (4008).
    let refused = ["open: HTTP 429", "open: closed with 4008"]
        .iter()
        .map(|kind| report["errors"][kind].as_u64().unwrap_or(0))
        .sum::<u64>();
    assert_eq!(refused, 2, "{report}");
    assert_eq!(
        report["errors"].as_object().map(|e| e.len() <= 2),
        Some(true),
        "{report}"
    );
    assert_eq!(report["server_sessions"], 12.0, "{report}");
    #[cfg(target_os = "linux")]
    {
        assert!(
            report["server_rss_bytes_before"].as_f64().unwrap_or(0.0) > 0.0,
            "{report}"
        );
        assert!(report["server_bytes_per_session"].is_number(), "{report}");
        assert!(
            report["server_rss_bytes_registered"]
                .as_f64()
                .unwrap_or(0.0)
                > 0.0,
            "{report}"
        );
    }
    assert!(
        report["open_latency_ms"]["max"].as_f64().unwrap_or(0.0) > 0.0,
        "{report}"
    );

    // The sessions were closed at the end: the server holds none.
    let mut open = None;
    for _ in 0..100 {
        open = metrics_value(&h, "missive_ws_sessions ").await;
        if open == Some(0.0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(open, Some(0.0), "sessions still open after the load test");
}

async fn metrics_value(h: &Harness, prefix: &str) -> Option<f64> {
    h.metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn durations_are_checked() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_missive"))
        .args(["loadtest", "--connections", "1", "--duration", "10 parsecs"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ms, s, m, h"), "{stderr}");
}

/// The report of a traffic run that must succeed.
async fn traffic(h: &Harness, args: &[&str]) -> Value {
    let mut all = vec!["--target", &h.base, "--json"];
    all.extend_from_slice(args);
    let out = loadtest(&all).await;
    assert!(
        out.status.success(),
        "{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON report")
}

const OPS: [&str; 4] = ["send", "history", "read", "delete"];

fn count(report: &Value, op: &str, field: &str) -> u64 {
    report["operations"][op][field]
        .as_u64()
        .unwrap_or_else(|| panic!("operations.{op}.{field} in {report}"))
}

/// Every operation issued, none failed or dropped, and each success timed.
fn assert_clean_run(report: &Value, requested: u64) {
    assert_eq!(report["mode"], "traffic", "{report}");
    assert_eq!(report["errors"], serde_json::json!({}), "{report}");
    assert_eq!(report["requested"], requested, "{report}");
    let mut issued = 0;
    for op in OPS {
        let n = count(report, op, "count");
        assert!(n > 0, "no {op} operation in {report}");
        assert_eq!(count(report, op, "ok"), n, "{op} in {report}");
        assert_eq!(count(report, op, "dropped"), 0, "{op} in {report}");
        assert_eq!(report["operations"][op]["latency_ms"]["count"], n, "{op}");
        assert!(
            report["operations"][op]["latency_ms"]["max"].as_f64() > Some(0.0),
            "{op} in {report}"
        );
        issued += n;
    }
    assert_eq!(issued, requested, "{report}");
    assert_eq!(report["total"]["count"], requested, "{report}");
    assert_eq!(report["total"]["failed"], 0, "{report}");
    // Every acknowledged send was matched with its push to the recipient's session.
    assert_eq!(
        report["end_to_end_ms"]["to_websocket"]["count"],
        count(report, "send", "ok"),
        "{report}"
    );
    let series = report["projector_lag"]["series"]
        .as_array()
        .expect("a lag series");
    assert!(!series.is_empty(), "{report}");
    assert!(
        series
            .iter()
            .all(|p| p["lag"].is_number() && p["seconds"].is_number())
    );
    assert!(report["projector_lag"]["max"].is_number(), "{report}");
}

/// `missive_events_appended_total` of one event type on its stream (`topic`, as
/// `missive_events_consumed_total` names it).
async fn appended(h: &Harness, topic: &str, event_type: &str) -> u64 {
    let prefix =
        format!("missive_events_appended_total{{event_type=\"{event_type}\",topic=\"{topic}\"}} ");
    metrics_value(h, &prefix).await.unwrap_or(0.0) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_by_count_issues_every_operation_and_the_server_has_each_one() {
    let h = Harness::start().await;
    let report = traffic(
        &h,
        &[
            "--users",
            "6",
            "--friends-per-user",
            "2",
            "--count",
            "200",
            "--concurrency",
            "4",
            "--mix",
            "send=50,history=20,read=20,delete=10",
            "--seed",
            "7",
            "--e2e-sample",
            "4",
        ],
    )
    .await;
    assert_clean_run(&report, 200);
    assert_eq!(report["model"], "closed", "{report}");
    assert_eq!(report["concurrency"], 4, "{report}");
    assert_eq!(report["seed"], 7, "{report}");
    assert_eq!(report["users"], 6, "{report}");
    // A ring over 6 users, 2 friends each: 6 pairs, each a conversation with a seed message.
    assert_eq!(report["conversations"], 6, "{report}");
    assert_eq!(report["setup"]["sessions"], 6, "{report}");
    assert_eq!(report["setup"]["seed_messages"], 6, "{report}");
    assert!(
        report["end_to_end_ms"]["to_history"]["count"].as_u64() > Some(0),
        "{report}"
    );

    // What the report says it did is what the server appended.
    let sends = count(&report, "send", "ok");
    assert_eq!(
        appended(&h, "messages", "MessageSent").await,
        sends + 6,
        "{report}"
    );
    assert_eq!(report["server"]["messages_sent"], sends as f64, "{report}");
    assert_eq!(
        appended(&h, "messages", "MessageDeleted").await,
        count(&report, "delete", "ok"),
        "{report}"
    );
    assert_eq!(
        appended(&h, "messages", "MessagesRead").await,
        count(&report, "read", "ok"),
        "{report}"
    );
    assert_eq!(appended(&h, "social", "UserRegistered").await, 6);
    assert_eq!(appended(&h, "social", "FriendRequestAccepted").await, 6);

    // The sessions were closed at the end.
    let mut open = None;
    for _ in 0..100 {
        open = metrics_value(&h, "missive_ws_sessions ").await;
        if open == Some(0.0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(open, Some(0.0), "sessions still open after the load test");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_at_a_fixed_rate_issues_every_scheduled_operation() {
    let h = Harness::start().await;
    // 150 operations per second for 1.5 s: 225 due, at instants 0, 1/150 s, ...
    let report = traffic(
        &h,
        &[
            "--users",
            "6",
            "--friends-per-user",
            "3",
            "--rate",
            "150",
            "--duration",
            "1500ms",
            "--mix",
            "send=60,history=20,read=10,delete=10",
            "--seed",
            "11",
        ],
    )
    .await;
    assert_clean_run(&report, 225);
    assert_eq!(report["model"], "open", "{report}");
    assert_eq!(report["rate"], 150.0, "{report}");
    assert_eq!(report["max_in_flight"], 1024, "{report}");
    // 6 users with 3 friends each: 9 pairs.
    assert_eq!(report["conversations"], 9, "{report}");
    assert_eq!(
        appended(&h, "messages", "MessageSent").await,
        count(&report, "send", "ok") + 9,
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_that_cannot_be_issued_on_time_are_counted_as_dropped() {
    let h = Harness::start().await;
    // One in flight at most: whatever is due while one is answered is dropped, not queued.
    let report = traffic(
        &h,
        &[
            "--users",
            "4",
            "--friends-per-user",
            "1",
            "--rate",
            "2000",
            "--count",
            "100",
            "--max-in-flight",
            "1",
            "--seed",
            "3",
        ],
    )
    .await;
    assert_eq!(report["requested"], 100, "{report}");
    let dropped: u64 = OPS.iter().map(|op| count(&report, op, "dropped")).sum();
    let issued: u64 = OPS.iter().map(|op| count(&report, op, "count")).sum();
    assert_eq!(dropped + issued, 100, "{report}");
    assert_eq!(report["total"]["dropped"], dropped, "{report}");
    let errors = report["errors"].as_object().expect("errors");
    assert_eq!(
        errors
            .get("dropped: too many in flight")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        dropped,
        "{report}"
    );
    assert!(
        errors.keys().all(|k| k == "dropped: too many in flight"),
        "{report}"
    );
}

/// Runs `missive loadtest` with `args` (no server needed) and returns its exit code and stderr.
fn refused(args: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_missive"))
        .arg("loadtest")
        .args(args)
        .output()
        .expect("runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_traffic_flags_are_refused_with_a_reason() {
    let cases: [(&[&str], &str); 8] = [
        (&["--mix", "send=0,read=5"], "send needs a weight above 0"),
        (&["--mix", "send=5,like=1"], "unknown operation \"like\""),
        (&["--mix", "send=5,read=lots"], "whole number"),
        (&["--zipf=-1"], "Zipf exponent"),
        (&["--rate", "0"], "above 0"),
        (
            &["--count", "10", "--duration", "5s"],
            "cannot be used with",
        ),
        (
            &["--connections", "5", "--rate", "10"],
            "cannot be used with",
        ),
        (&["--count", "0"], "--count"),
    ];
    for (args, reason) in cases {
        let (code, stderr) = refused(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
    }
    // Checked before reaching the server.
    let (code, stderr) = refused(&[
        "--target",
        "http://127.0.0.1:9",
        "--users",
        "3",
        "--friends-per-user",
        "3",
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("needs at least 4 users"), "{stderr}");
}

#[test]
fn an_unreachable_target_is_named() {
    let (code, stderr) = refused(&[
        "--target",
        "http://127.0.0.1:9",
        "--users",
        "2",
        "--friends-per-user",
        "1",
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot reach http://127.0.0.1:9"),
        "{stderr}"
    );
}

#[test]
fn help_explains_both_modes() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_missive"))
        .args(["loadtest", "--help"])
        .output()
        .expect("runs");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--users",
        "--friends-per-user",
        "--duration",
        "--count",
        "--rate",
        "--concurrency",
        "--max-in-flight",
        "--mix",
        "--zipf",
        "--seed",
        "--e2e-sample",
        "--json",
        "--connections",
        "Traffic mode",
        "Open model",
        "dropped: too many in flight",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
}
