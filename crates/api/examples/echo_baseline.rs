//! The HTTP ceiling for the send benchmark: a bare axum handler that parses the same JSON body
//! as a message send and echoes it, with no auth, log or store. `benches/http_send.py` runs
//! `wrk` against it and against `missive serve` under the same load and compares the two.
//!
//! Usage: `cargo run --release -p missive-api --example echo_baseline -- 127.0.0.1:18090`

use axum::Json;
use axum::routing::post;
use serde::{Deserialize, Serialize};

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Body {
    text: String,
    client_msg_id: Option<String>,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18090".to_owned());
    let app = axum::Router::new().route(
        "/v1/conversations/direct/{peer_id}/messages",
        post(|Json(body): Json<Body>| async move { Json(body) }),
    );
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    axum::serve(listener, app).await
}
