//! `missive loadtest --connections` run as a real process against a server: it registers the
//! users, opens the sessions, holds them, and reports what the server holds and what failed.

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
fn without_a_mode_it_says_what_is_built() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_missive"))
        .args(["loadtest", "--target", "http://127.0.0.1:9"])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--connections"), "{stderr}");
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
