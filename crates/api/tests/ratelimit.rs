//! The command rate limiter: bucket arithmetic with injected time, and the middleware in a
//! router (429 with `Retry-After` and the error body, queries never limited).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode, header};
use axum::routing::{get, post};
use missive_api::Secret;
use missive_api::ratelimit::{self, Limited, RateLimiter, RateLimits, Scope};
use tower::ServiceExt;
use uuid::Uuid;

fn secret() -> Secret {
    Secret::new(b"rate-limit-test".to_vec())
}

fn limiter(per_user: f64, per_ip: f64, burst_seconds: f64) -> RateLimiter {
    RateLimiter::new(
        RateLimits {
            per_user,
            per_ip,
            burst_seconds,
            ..RateLimits::default()
        },
        secret(),
    )
    .expect("valid limits")
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("an address")
}

/// Sends `n` requests at `now` and returns how many were allowed.
fn allowed(
    limiter: &RateLimiter,
    user: Option<Uuid>,
    ip: Option<IpAddr>,
    now: Instant,
    n: usize,
) -> usize {
    (0..n)
        .filter(|_| limiter.check_at(user, ip, now).is_ok())
        .count()
}

#[test]
fn a_full_bucket_allows_the_burst_then_refuses_until_it_refills() {
    // Given 10 commands/s with a 2 s burst: 20 at once, then one every 100 ms.
    let limiter = limiter(10.0, 0.0, 2.0);
    let user = Some(Uuid::now_v7());
    let t0 = Instant::now();

    assert_eq!(allowed(&limiter, user, None, t0, 20), 20);
    assert_eq!(
        limiter.check_at(user, None, t0),
        Err(Limited {
            scope: Scope::User,
            retry_after: Duration::from_millis(100)
        })
    );
    // Refusals take nothing: 60 ms later the wait is 40 ms, not longer.
    assert_eq!(
        limiter
            .check_at(user, None, t0 + Duration::from_millis(60))
            .unwrap_err()
            .retry_after,
        Duration::from_millis(40)
    );
    // One interval later, exactly one more.
    let t1 = t0 + Duration::from_millis(100);
    assert_eq!(allowed(&limiter, user, None, t1, 5), 1);
    // Half a second later, five more.
    let t2 = t1 + Duration::from_millis(500);
    assert_eq!(allowed(&limiter, user, None, t2, 10), 5);
    // After the burst window of silence, the bucket is full again: the whole burst.
    let t3 = t2 + Duration::from_secs(2);
    assert_eq!(allowed(&limiter, user, None, t3, 30), 20);
}

#[test]
fn a_steady_sender_at_the_rate_is_never_refused() {
    let limiter = limiter(20.0, 200.0, 2.0);
    let (user, addr) = (Some(Uuid::now_v7()), Some(ip("192.0.2.1")));
    let t0 = Instant::now();
    for i in 0..1000 {
        let now = t0 + Duration::from_millis(50) * i;
        assert!(limiter.check_at(user, addr, now).is_ok(), "request {i}");
    }
}

#[test]
fn a_burst_is_at_least_one_request_at_low_rates() {
    // 0.1/s with a 2 s window would be a burst of 0.2: one request, then one per 10 s.
    let limiter = limiter(0.1, 0.0, 2.0);
    let user = Some(Uuid::now_v7());
    let t0 = Instant::now();
    assert_eq!(allowed(&limiter, user, None, t0, 3), 1);
    let refused = limiter.check_at(user, None, t0).unwrap_err();
    assert_eq!(refused.retry_after, Duration::from_secs(10));
    assert_eq!(refused.retry_after_seconds(), 10);
    assert!(
        limiter
            .check_at(user, None, t0 + Duration::from_secs(10))
            .is_ok()
    );
}

#[test]
fn users_and_addresses_have_their_own_buckets() {
    let limiter = limiter(1.0, 3.0, 1.0);
    let (alice, bob) = (Some(Uuid::now_v7()), Some(Uuid::now_v7()));
    let (home, office) = (Some(ip("192.0.2.1")), Some(ip("198.51.100.2")));
    let t0 = Instant::now();

    // Alice's one command; her second is refused per user even from another address.
    assert!(limiter.check_at(alice, home, t0).is_ok());
    assert_eq!(
        limiter.check_at(alice, office, t0).unwrap_err().scope,
        Scope::User
    );
    // Bob, from the same address, still may.
    assert!(limiter.check_at(bob, home, t0).is_ok());
    // The address has one of three left; then it refuses everyone, per address.
    assert!(limiter.check_at(None, home, t0).is_ok());
    let carol = Some(Uuid::now_v7());
    assert_eq!(
        limiter.check_at(carol, home, t0).unwrap_err().scope,
        Scope::Ip
    );
    // Carol elsewhere is fine: her bucket was not charged by the refusal at home.
    assert!(limiter.check_at(carol, office, t0).is_ok());
    // Unknown user and unknown address: nothing to count against.
    assert_eq!(allowed(&limiter, None, None, t0, 100), 100);
}

#[test]
fn ipv6_addresses_of_one_64_prefix_share_a_bucket() {
    let limiter = limiter(0.0, 1.0, 1.0);
    let t0 = Instant::now();
    assert!(
        limiter
            .check_at(None, Some(ip("2001:db8:0:1::1")), t0)
            .is_ok()
    );
    assert_eq!(
        limiter
            .check_at(None, Some(ip("2001:db8:0:1:ffff::2")), t0)
            .unwrap_err()
            .scope,
        Scope::Ip
    );
    assert!(
        limiter
            .check_at(None, Some(ip("2001:db8:0:2::1")), t0)
            .is_ok()
    );
}

#[test]
fn a_rate_of_zero_turns_that_limit_off() {
    let t0 = Instant::now();
    let (user, addr) = (Some(Uuid::now_v7()), Some(ip("192.0.2.1")));

    let users_only = limiter(1.0, 0.0, 1.0);
    assert_eq!(allowed(&users_only, None, addr, t0, 1000), 1000);
    assert_eq!(users_only.tracked(Scope::Ip), 0);

    let ips_only = limiter(0.0, 1.0, 1.0);
    assert_eq!(allowed(&ips_only, user, None, t0, 1000), 1000);
    assert_eq!(ips_only.tracked(Scope::User), 0);

    let off = RateLimiter::new(RateLimits::off(), secret()).unwrap();
    assert_eq!(allowed(&off, user, addr, t0, 10_000), 10_000);
    assert_eq!(off.tracked(Scope::User) + off.tracked(Scope::Ip), 0);
}

#[test]
fn a_refusal_by_one_limit_takes_nothing_from_the_other() {
    let limiter = limiter(1.0, 1.0, 2.0);
    let t0 = Instant::now();
    let user = Some(Uuid::now_v7());
    let (a, b) = (Some(ip("192.0.2.1")), Some(ip("192.0.2.2")));

    // The user spends their burst of 2 from address a (a has 0 left too).
    assert_eq!(allowed(&limiter, user, a, t0, 2), 2);
    // From b, the user limit refuses: b's bucket must stay full...
    for _ in 0..5 {
        assert_eq!(
            limiter.check_at(user, b, t0).unwrap_err().scope,
            Scope::User
        );
    }
    assert_eq!(allowed(&limiter, None, b, t0, 5), 2, "b's burst is whole");

    // ...and the other way round: a fresh user refused at a (per address) keeps their burst.
    let fresh = Some(Uuid::now_v7());
    for _ in 0..5 {
        assert_eq!(limiter.check_at(fresh, a, t0).unwrap_err().scope, Scope::Ip);
    }
    assert_eq!(
        allowed(&limiter, fresh, None, t0, 5),
        2,
        "the user's burst is whole"
    );
}

#[test]
fn when_both_limits_refuse_the_longer_wait_is_named() {
    let limiter = limiter(1.0, 0.5, 1.0);
    let t0 = Instant::now();
    let (user, addr) = (Some(Uuid::now_v7()), Some(ip("192.0.2.1")));
    assert!(limiter.check_at(user, addr, t0).is_ok());
    let refused = limiter.check_at(user, addr, t0).unwrap_err();
    // The user frees up after 1 s, the address after 2 s.
    assert_eq!(
        refused,
        Limited {
            scope: Scope::Ip,
            retry_after: Duration::from_secs(2)
        }
    );
}

#[test]
fn memory_stays_bounded_under_a_flood_of_fresh_addresses() {
    let limiter = RateLimiter::new(
        RateLimits {
            per_user: 0.0,
            per_ip: 100.0,
            burst_seconds: 1.0,
            max_keys: 1024,
            trust_forwarded: false,
        },
        secret(),
    )
    .unwrap();
    let t0 = Instant::now();
    let address = |i: u32| Some(IpAddr::from((0x0a00_0000 + i).to_be_bytes()));

    // 100 000 distinct addresses, each sending once, 100 µs apart: a bucket is full again
    // 10 ms after its one request, so old keys keep being swept.
    for i in 0..100_000 {
        let now = t0 + Duration::from_micros(100) * i;
        assert!(limiter.check_at(None, address(i), now).is_ok());
        assert!(limiter.tracked(Scope::Ip) <= 1024);
    }
    // An address spends its burst, then 100 000 fresh addresses arrive at the same instant:
    // no bucket is full again, so none can be swept. The cap holds, the overflow goes
    // untracked instead of being refused, and the spent address stays limited.
    let t1 = t0 + Duration::from_secs(20);
    let spent = Some(ip("192.0.2.99"));
    assert_eq!(allowed(&limiter, None, spent, t1, 101), 100);
    let flood = (0..100_000)
        .filter(|i| limiter.check_at(None, address(1_000_000 + i), t1).is_ok())
        .count();
    assert_eq!(flood, 100_000, "a fresh address is never refused");
    assert!(limiter.tracked(Scope::Ip) <= 1024);
    assert!(limiter.check_at(None, spent, t1).is_err());

    // Once their buckets are full again, a prune frees everything.
    limiter.prune(t1 + Duration::from_secs(1));
    assert_eq!(limiter.tracked(Scope::Ip), 0);
}

#[test]
fn tracked_keys_are_forgotten_once_their_bucket_is_full_again() {
    let limiter = limiter(10.0, 10.0, 1.0);
    let t0 = Instant::now();
    for i in 0..100u8 {
        let addr = Some(IpAddr::from([192, 0, 2, i]));
        assert_eq!(allowed(&limiter, Some(Uuid::now_v7()), addr, t0, 5), 5);
    }
    assert_eq!(limiter.tracked(Scope::User), 100);
    assert_eq!(limiter.tracked(Scope::Ip), 100);
    // 5 requests at 10/s: full again 500 ms later.
    limiter.prune(t0 + Duration::from_millis(499));
    assert_eq!(limiter.tracked(Scope::Ip), 100);
    limiter.prune(t0 + Duration::from_millis(500));
    assert_eq!(limiter.tracked(Scope::User), 0);
    assert_eq!(limiter.tracked(Scope::Ip), 0);
}

// ----- the middleware -----

fn app(limiter: RateLimiter) -> Router {
    Router::new()
        .route(
            "/commands",
            post(|| async { "done" }).delete(|| async { "gone" }),
        )
        .route("/queries", get(|| async { "here" }))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(limiter),
            ratelimit::limit_commands,
        ))
}

fn request(method: Method, path: &str, token: Option<&str>, peer: Option<&str>) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(path);
    if let Some(token) = token {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let mut request = builder.body(Body::empty()).unwrap();
    if let Some(peer) = peer {
        let peer: SocketAddr = peer.parse().unwrap();
        request.extensions_mut().insert(ConnectInfo(peer));
    }
    request
}

fn token(user: Uuid) -> String {
    let now = chrono_now();
    secret().issue(user, now, 3600)
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

async fn status(app: &Router, request: Request<Body>) -> StatusCode {
    app.clone().oneshot(request).await.unwrap().status()
}

#[tokio::test]
async fn over_the_user_limit_a_command_gets_429_with_retry_after_and_the_error_body() {
    // 1 command per 10 s, burst 1: the second is refused for about 10 s.
    let app = app(limiter(0.1, 0.0, 0.0));
    let alice = token(Uuid::now_v7());

    let first = app
        .clone()
        .oneshot(request(Method::POST, "/commands", Some(&alice), None))
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::OK);

    let refused = app
        .clone()
        .oneshot(request(Method::POST, "/commands", Some(&alice), None))
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u32 = refused.headers()[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((9..=10).contains(&retry_after), "{retry_after}");
    let body = axum::body::to_bytes(refused.into_body(), 64 * 1024)
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("from this user"), "{message}");
    assert!(message.contains(&format!("{retry_after} s")), "{message}");

    // Every command method counts; another user is not affected.
    assert_eq!(
        status(
            &app,
            request(Method::DELETE, "/commands", Some(&alice), None)
        )
        .await,
        StatusCode::TOO_MANY_REQUESTS
    );
    let bob = token(Uuid::now_v7());
    assert_eq!(
        status(&app, request(Method::POST, "/commands", Some(&bob), None)).await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn queries_are_never_limited() {
    let app = app(limiter(0.1, 0.1, 0.0));
    let alice = token(Uuid::now_v7());
    for _ in 0..50 {
        assert_eq!(
            status(
                &app,
                request(
                    Method::GET,
                    "/queries",
                    Some(&alice),
                    Some("192.0.2.1:4000")
                )
            )
            .await,
            StatusCode::OK
        );
    }
    // The buckets are untouched: the first command still goes through.
    assert_eq!(
        status(
            &app,
            request(
                Method::POST,
                "/commands",
                Some(&alice),
                Some("192.0.2.1:4000")
            )
        )
        .await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_peer_address_is_limited_whatever_the_token() {
    let app = app(limiter(0.0, 0.1, 0.0));
    let home = "192.0.2.1:4000";
    assert_eq!(
        status(&app, request(Method::POST, "/commands", None, Some(home))).await,
        StatusCode::OK
    );
    // Another port of the same address, a valid token: still the same address.
    let alice = token(Uuid::now_v7());
    let refused = app
        .clone()
        .oneshot(request(
            Method::POST,
            "/commands",
            Some(&alice),
            Some("192.0.2.1:5000"),
        ))
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().contains_key(header::RETRY_AFTER));
    let body = axum::body::to_bytes(refused.into_body(), 64 * 1024)
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("from this address"),
        "{body}"
    );
    // Other addresses are not affected; without a known address there is nothing to limit.
    assert_eq!(
        status(
            &app,
            request(Method::POST, "/commands", None, Some("198.51.100.7:4000"))
        )
        .await,
        StatusCode::OK
    );
    assert_eq!(
        status(&app, request(Method::POST, "/commands", None, None)).await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn an_invalid_token_counts_against_the_address_only() {
    let app = app(limiter(0.1, 100.0, 1.0));
    let forged = Secret::new(b"another server".to_vec()).issue(Uuid::now_v7(), chrono_now(), 60);
    for token in [Some("not-a-jwt"), Some(forged.as_str()), None] {
        for _ in 0..3 {
            assert_eq!(
                status(
                    &app,
                    request(Method::POST, "/commands", token, Some("192.0.2.1:1"))
                )
                .await,
                StatusCode::OK,
                "{token:?}"
            );
        }
    }
}

#[tokio::test]
async fn forwarded_for_is_ignored_unless_trusted() {
    let forwarded = |peer_last: &str| {
        let mut request = request(Method::POST, "/commands", None, Some("10.0.0.1:80"));
        request.headers_mut().insert(
            "x-forwarded-for",
            format!("203.0.113.1, {peer_last}").parse().unwrap(),
        );
        request
    };

    // Untrusted: every request comes from the proxy's address, whatever the header says.
    let untrusted = app(limiter(0.0, 0.1, 0.0));
    assert_eq!(
        status(&untrusted, forwarded("192.0.2.1")).await,
        StatusCode::OK
    );
    assert_eq!(
        status(&untrusted, forwarded("192.0.2.2")).await,
        StatusCode::TOO_MANY_REQUESTS
    );

    // Trusted: the last entry (the one the proxy appended) is the client.
    let trusted = app(RateLimiter::new(
        RateLimits {
            per_user: 0.0,
            per_ip: 0.1,
            burst_seconds: 0.0,
            trust_forwarded: true,
            ..RateLimits::default()
        },
        secret(),
    )
    .unwrap());
    assert_eq!(
        status(&trusted, forwarded("192.0.2.1")).await,
        StatusCode::OK
    );
    assert_eq!(
        status(&trusted, forwarded("192.0.2.2")).await,
        StatusCode::OK
    );
    assert_eq!(
        status(&trusted, forwarded("192.0.2.1")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
}
