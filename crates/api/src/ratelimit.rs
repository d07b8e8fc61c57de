//! Rate limiting of commands, per user and per client address.
//!
//! Commands (`POST`, `PUT`, `PATCH`, `DELETE`) are limited twice: per user (the subject of a
//! valid bearer token) and per client address. Queries, the WebSocket upgrade, `/metrics` and
//! `/healthz` are `GET`s and are never limited. A refused command is answered `429
//! rate_limited` with `Retry-After` and is never passed on, so it stores nothing.
//!
//! The defaults ([`RateLimits::default`]) are far above what a person sends, so only scripts
//! and floods meet them; a rate of 0 turns a limit off (benchmarks, load tests).
//!
//! # How it counts
//! Each key (a user id, an address) has a token bucket, kept as GCRA does (the generic cell
//! rate algorithm): one instant per key, the *theoretical arrival time* of its next request.
//! A key may run up to the burst window ahead of now; each allowed request pushes it one
//! interval (`1 / rate`) further. A missing key is a full bucket, and a key whose instant has
//! passed is full again and can be forgotten, so the tables only hold keys active within the
//! last burst window, swept lazily.
//!
//! A request is checked against both its limits before either is charged: a request refused by
//! one limit takes nothing from the other.
//!
//! # Addresses
//! The address is the TCP peer (`ConnectInfo<SocketAddr>`, present when the server is served
//! with `into_make_service_with_connect_info::<SocketAddr>()`). `X-Forwarded-For` is ignored
//! unless [`RateLimits::trust_forwarded`] is set: any client can write that header, so trusting
//! it without a proxy in front would let each request pick its own address. IPv6 addresses
//! count by their /64 prefix (one host usually holds a whole /64, and could otherwise take a
//! new address per request); IPv4-mapped IPv6 addresses count as the IPv4 address.
//!
//! # Memory
//! Each scope holds at most [`RateLimits::max_keys`] keys, in [`SHARDS`] locked shards. When a
//! shard is full, keys whose bucket is full again are dropped first (forgetting them changes
//! nothing). If every key of the shard was active within the burst window, the new key is let
//! through *untracked* (fail open) rather than refused or tracked in place of a key being
//! limited: refusing would turn a flood of fresh addresses into a denial of service for
//! newcomers, and evicting active keys would reset the limits of exactly the senders being
//! limited. Reaching that state takes more distinct keys active at once than the cap, where a
//! per-key limit protects nothing anyway; the user limit still applies to such requests.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use parking_lot::{Mutex, MutexGuard};
use uuid::Uuid;

use crate::auth::Secret;
use crate::error::ApiError;

/// Locked shards per scope: concurrent commands of different keys rarely wait for each other.
pub const SHARDS: usize = 16;
/// Every this many charged requests, a shard drops its keys whose bucket is full again.
const SWEEP_EVERY: u32 = 1024;
/// The lowest rate accepted (besides 0): one request per 1000 s.
pub const MIN_RATE: f64 = 0.001;
/// The longest burst window accepted, in seconds.
pub const MAX_BURST_SECONDS: f64 = 3600.0;

/// How many commands a user and an address may send.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimits {
    /// Commands per second per user (the subject of a valid bearer token); 0 turns the limit
    /// off. Default 20: a person, even a fast typist whose client also marks conversations read
    /// and reports presence, sends a few per second at most.
    pub per_user: f64,
    /// Commands per second per client address; 0 turns the limit off. Default 200: many users
    /// may share one address behind a NAT (an office, a carrier-grade NAT), and registration,
    /// which has no user yet, is only limited here.
    pub per_ip: f64,
    /// How long a key may send at full speed from a full bucket: the burst is `rate ×
    /// burst_seconds` requests (at least 1). Default 2 s (40 commands per user, 400 per
    /// address), enough for a client catching up after being offline.
    pub burst_seconds: f64,
    /// Keys each scope tracks at most (see the module docs for what happens beyond). Default
    /// 65 536 per scope, a few MB: keys are dropped once their bucket is full again, which takes
    /// at most `burst_seconds` after their last request, so only keys active in the last burst
    /// window count.
    pub max_keys: usize,
    /// Take the client address from the last `X-Forwarded-For` entry (the one the proxy in front
    /// appended) instead of the TCP peer. Only for a server that is reachable through exactly
    /// one reverse proxy that appends that header; otherwise clients choose their own address.
    /// Off by default.
    pub trust_forwarded: bool,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            per_user: 20.0,
            per_ip: 200.0,
            burst_seconds: 2.0,
            max_keys: 65_536,
            trust_forwarded: false,
        }
    }
}

impl RateLimits {
    /// No limits at all (benchmarks, load tests).
    pub fn off() -> Self {
        RateLimits {
            per_user: 0.0,
            per_ip: 0.0,
            ..RateLimits::default()
        }
    }

    /// Checks that the rates and the burst window are usable numbers.
    pub fn validate(&self) -> Result<(), InvalidRateLimits> {
        for (scope, rate) in [(Scope::User, self.per_user), (Scope::Ip, self.per_ip)] {
            if rate != 0.0 && !(rate.is_finite() && rate >= MIN_RATE) {
                return Err(InvalidRateLimits::Rate { scope, rate });
            }
        }
        if !(self.burst_seconds.is_finite()
            && (0.0..=MAX_BURST_SECONDS).contains(&self.burst_seconds))
        {
            return Err(InvalidRateLimits::Burst(self.burst_seconds));
        }
        if self.max_keys == 0 {
            return Err(InvalidRateLimits::MaxKeys);
        }
        Ok(())
    }
}

/// Why [`RateLimits`] cannot be used. The texts name the setting to fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidRateLimits {
    #[error(
        "the rate limit {} must be 0 (off) or a number of commands per second of at least {MIN_RATE}; got {rate}",
        scope.describe()
    )]
    Rate { scope: Scope, rate: f64 },
    #[error(
        "the rate limit burst window must be between 0 and {MAX_BURST_SECONDS} seconds; got {0}"
    )]
    Burst(f64),
    #[error("the rate limiter must track at least one key per scope")]
    MaxKeys,
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// The limit of the bearer token's user.
    User,
    /// The limit of the client address.
    Ip,
}

impl Scope {
    /// The value of the `scope` label of `missive_rate_limited_total`: `user` or `ip`.
    pub fn label(&self) -> &'static str {
        match self {
            Scope::User => "user",
            Scope::Ip => "ip",
        }
    }

    fn describe(&self) -> &'static str {
        match self {
            Scope::User => "per user",
            Scope::Ip => "per address",
        }
    }
}

/// A refusal: which limit, and how long until the same request would be allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub scope: Scope,
    pub retry_after: Duration,
}

impl Limited {
    /// [`Self::retry_after`] in whole seconds, rounded up and at least 1 (for `Retry-After`).
    pub fn retry_after_seconds(&self) -> u32 {
        let whole = self
            .retry_after
            .as_secs()
            .saturating_add(u64::from(self.retry_after.subsec_nanos() > 0));
        u32::try_from(whole.max(1)).unwrap_or(u32::MAX)
    }
}

impl From<Limited> for ApiError {
    fn from(limited: Limited) -> Self {
        let seconds = limited.retry_after_seconds();
        ApiError {
            retry_after: Some(seconds),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "too many commands {}; nothing was stored; try again in {seconds} s",
                    match limited.scope {
                        Scope::User => "from this user",
                        Scope::Ip => "from this address",
                    }
                ),
            )
        }
    }
}

impl IntoResponse for Limited {
    fn into_response(self) -> Response {
        ApiError::from(self).into_response()
    }
}

/// The per-user and per-address limits of commands, shared by all requests (`Arc`).
///
/// It holds the token secret to find the user of a request ([`limit_commands`]).
#[derive(Debug)]
pub struct RateLimiter {
    limits: RateLimits,
    secret: Secret,
    users: Option<Table<Uuid>>,
    ips: Option<Table<IpAddr>>,
}

impl RateLimiter {
    /// A limiter with these limits; `secret` verifies bearer tokens to find their user.
    pub fn new(limits: RateLimits, secret: Secret) -> Result<Self, InvalidRateLimits> {
        limits.validate()?;
        let users = Table::new(limits.per_user, &limits);
        let ips = Table::new(limits.per_ip, &limits);
        Ok(RateLimiter {
            limits,
            secret,
            users,
            ips,
        })
    }

    pub fn limits(&self) -> &RateLimits {
        &self.limits
    }

    /// Checks a command of `user` (if known) from `ip` (if known) now, and charges both
    /// limits if both allow it.
    pub fn check(&self, user: Option<Uuid>, ip: Option<IpAddr>) -> Result<(), Limited> {
        self.check_at(user, ip, Instant::now())
    }

    /// [`Self::check`] at `now` (tests inject the time). When both limits refuse, the answer
    /// names the one that frees up last.
    pub fn check_at(
        &self,
        user: Option<Uuid>,
        ip: Option<IpAddr>,
        now: Instant,
    ) -> Result<(), Limited> {
        // Always the user shard first, then the address shard: no two checks wait for each
        // other in a cycle.
        let user = match (&self.users, user) {
            (Some(table), Some(user)) => Some(table.begin(user, now)),
            _ => None,
        };
        let ip = match (&self.ips, ip) {
            (Some(table), Some(ip)) => Some(table.begin(address_key(ip), now)),
            _ => None,
        };
        let refused = |scope, retry_after| Limited { scope, retry_after };
        match (user, ip) {
            (Some(Err(u)), Some(Err(i))) if i > u => Err(refused(Scope::Ip, i)),
            (Some(Err(u)), _) => Err(refused(Scope::User, u)),
            (_, Some(Err(i))) => Err(refused(Scope::Ip, i)),
            (user, ip) => {
                if let Some(Ok(pending)) = user {
                    pending.commit(now);
                }
                if let Some(Ok(pending)) = ip {
                    pending.commit(now);
                }
                Ok(())
            }
        }
    }

    /// Drops every key whose bucket is full again. Sweeps also happen lazily as requests come
    /// in; a server may call this periodically to give memory back after a burst of keys.
    pub fn prune(&self, now: Instant) {
        if let Some(table) = &self.users {
            table.prune(now);
        }
        if let Some(table) = &self.ips {
            table.prune(now);
        }
    }

    /// How many keys of `scope` are tracked (0 when that limit is off).
    pub fn tracked(&self, scope: Scope) -> usize {
        match scope {
            Scope::User => self.users.as_ref().map_or(0, Table::len),
            Scope::Ip => self.ips.as_ref().map_or(0, Table::len),
        }
    }

    /// The subject of the request's bearer token if it is valid (and the user limit is on).
    fn user_of(&self, headers: &HeaderMap) -> Option<Uuid> {
        self.users.as_ref()?;
        let token = headers
            .get(header::AUTHORIZATION)?
            .to_str()
            .ok()?
            .strip_prefix("Bearer ")?;
        self.secret
            .verify(token.trim(), Utc::now().timestamp())
            .ok()
            .map(|claims| claims.sub)
    }

    /// The client address of the request (if the address limit is on).
    fn address_of(&self, request: &Request) -> Option<IpAddr> {
        self.ips.as_ref()?;
        if self.limits.trust_forwarded
            && let Some(ip) = forwarded_for(request.headers())
        {
            return Some(ip);
        }
        request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(peer)| peer.ip())
    }
}

/// The axum middleware limiting commands; queries (`GET`, `HEAD`, `OPTIONS`) pass untouched.
///
/// A request without a valid bearer token counts against its address only (the handler
/// answers 401 afterwards); one without a known address (no `ConnectInfo`) against its user
/// only. Use with `axum::middleware::from_fn_with_state(limiter, limit_commands)`.
pub async fn limit_commands(
    State(limiter): State<Arc<RateLimiter>>,
    request: Request,
    next: Next,
) -> Response {
    if !is_command(request.method()) {
        return next.run(request).await;
    }
    let user = limiter.user_of(request.headers());
    let ip = limiter.address_of(&request);
    if let Err(limited) = limiter.check(user, ip) {
        missive_telemetry::metrics()
            .rate_limited
            .with_label_values(&[limited.scope.label()])
            .inc();
        tracing::debug!(
            scope = limited.scope.label(),
            ?user,
            ?ip,
            "command rate limited"
        );
        return limited.into_response();
    }
    next.run(request).await
}

/// Whether a request is a command (changes state) rather than a query.
fn is_command(method: &Method) -> bool {
    [Method::POST, Method::PUT, Method::PATCH, Method::DELETE].contains(method)
}

/// The last entry of the last `X-Forwarded-For` header: the address the proxy in front saw.
fn forwarded_for(headers: &HeaderMap) -> Option<IpAddr> {
    let value = headers.get_all("x-forwarded-for").iter().next_back()?;
    let last = value.to_str().ok()?.rsplit(',').next()?.trim();
    last.parse::<IpAddr>()
        .ok()
        .or_else(|| last.parse::<SocketAddr>().ok().map(|a| a.ip()))
}

/// The key an address counts under: IPv4 as is, IPv6 by its /64 prefix, IPv4-mapped IPv6 as
/// the IPv4 address.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        },
    }
}

/// The buckets of one scope.
#[derive(Debug)]
struct Table<K> {
    /// Time between two requests at the sustained rate.
    interval: Duration,
    /// How far ahead of now a key's next arrival time may run: the burst window (at least one
    /// interval, so that a burst is at least one request).
    tolerance: Duration,
    max_keys_per_shard: usize,
    hasher: RandomState,
    shards: Box<[Mutex<Shard<K>>]>,
}

#[derive(Debug)]
struct Shard<K> {
    /// Each key's theoretical arrival time: its bucket is full when this has passed.
    arrivals: HashMap<K, Instant>,
    /// No key's arrival time is earlier: before it, a sweep frees nothing. `None` when empty.
    earliest: Option<Instant>,
    /// Charged requests since the last lazy sweep.
    since_sweep: u32,
}

/// A request a table allows, holding its shard until it is charged or dropped.
struct Pending<'a, K> {
    table: &'a Table<K>,
    shard: MutexGuard<'a, Shard<K>>,
    key: K,
    arrival: Instant,
}

impl<K: Hash + Eq + Copy> Table<K> {
    /// `None` when `rate` is 0 (off). `limits` are valid.
    fn new(rate: f64, limits: &RateLimits) -> Option<Self> {
        if rate == 0.0 {
            return None;
        }
        let interval = Duration::from_secs_f64(1.0 / rate);
        let tolerance = Duration::from_secs_f64(limits.burst_seconds).max(interval);
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    arrivals: HashMap::new(),
                    earliest: None,
                    since_sweep: 0,
                })
            })
            .collect();
        Some(Table {
            interval,
            tolerance,
            max_keys_per_shard: limits.max_keys.div_ceil(SHARDS),
            hasher: RandomState::new(),
            shards,
        })
    }

    /// Decides on one request of `key` at `now` without charging it: the pending charge, or
    /// how long until the request would be allowed.
    fn begin(&self, key: K, now: Instant) -> Result<Pending<'_, K>, Duration> {
        let index = (self.hasher.hash_one(key) % SHARDS as u64) as usize;
        let shard = self.shards[index].lock();
        let next = match shard.arrivals.get(&key) {
            Some(&arrival) if arrival > now => arrival,
            _ => now,
        } + self.interval;
        let ahead = next.duration_since(now);
        if ahead > self.tolerance {
            return Err(ahead - self.tolerance);
        }
        Ok(Pending {
            table: self,
            shard,
            key,
            arrival: next,
        })
    }

    fn prune(&self, now: Instant) {
        for shard in self.shards.iter() {
            shard.lock().sweep(now);
        }
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().arrivals.len()).sum()
    }
}

impl<K: Hash + Eq + Copy> Pending<'_, K> {
    /// Charges the request.
    fn commit(mut self, now: Instant) {
        let shard = &mut *self.shard;
        shard.since_sweep += 1;
        if shard.since_sweep >= SWEEP_EVERY {
            shard.sweep(now);
        }
        if let Some(arrival) = shard.arrivals.get_mut(&self.key) {
            *arrival = self.arrival;
            return;
        }
        if shard.arrivals.len() >= self.table.max_keys_per_shard {
            shard.sweep(now);
            if shard.arrivals.len() >= self.table.max_keys_per_shard {
                return; // Full of active keys: let the newcomer through untracked.
            }
        }
        shard.arrivals.insert(self.key, self.arrival);
        shard.earliest = Some(shard.earliest.map_or(self.arrival, |e| e.min(self.arrival)));
    }
}

impl<K: Hash + Eq> Shard<K> {
    /// Drops the keys whose bucket is full again.
    fn sweep(&mut self, now: Instant) {
        self.since_sweep = 0;
        if self.earliest.is_some_and(|earliest| now < earliest) {
            return;
        }
        let mut earliest = None::<Instant>;
        self.arrivals.retain(|_, &mut arrival| {
            let keep = arrival > now;
            if keep {
                earliest = Some(earliest.map_or(arrival, |e| e.min(arrival)));
            }
            keep
        });
        self.earliest = earliest;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(limits: RateLimits) -> RateLimiter {
        RateLimiter::new(limits, Secret::new(b"k".to_vec())).expect("valid limits")
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds_and_is_at_least_one() {
        let limited = |retry_after| Limited {
            scope: Scope::User,
            retry_after,
        };
        assert_eq!(limited(Duration::ZERO).retry_after_seconds(), 1);
        assert_eq!(limited(Duration::from_millis(1)).retry_after_seconds(), 1);
        assert_eq!(limited(Duration::from_secs(2)).retry_after_seconds(), 2);
        assert_eq!(
            limited(Duration::from_millis(2001)).retry_after_seconds(),
            3
        );
        assert_eq!(limited(Duration::MAX).retry_after_seconds(), u32::MAX);
    }

    #[test]
    fn ipv6_counts_by_its_64_prefix_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(other));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(address_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn forwarded_for_takes_the_last_entry_of_the_last_header() {
        let mut headers = HeaderMap::new();
        assert_eq!(forwarded_for(&headers), None);
        headers.append(
            "x-forwarded-for",
            "203.0.113.9, 198.51.100.1".parse().unwrap(),
        );
        headers.append("x-forwarded-for", "10.0.0.1 , 192.0.2.4".parse().unwrap());
        assert_eq!(forwarded_for(&headers), Some("192.0.2.4".parse().unwrap()));
        headers.insert("x-forwarded-for", "[2001:db8::1]:443".parse().unwrap());
        assert_eq!(
            forwarded_for(&headers),
            Some("2001:db8::1".parse().unwrap())
        );
        headers.insert("x-forwarded-for", "unknown".parse().unwrap());
        assert_eq!(forwarded_for(&headers), None);
    }

    #[test]
    fn a_lazy_sweep_skips_shards_with_no_full_bucket() {
        let limiter = limiter(RateLimits {
            per_ip: 0.0,
            ..RateLimits::default()
        });
        let t0 = Instant::now();
        let user = Uuid::now_v7();
        limiter.check_at(Some(user), None, t0).unwrap();
        let table = limiter.users.as_ref().unwrap();
        let shard = table.shards.iter().find(|s| !s.lock().arrivals.is_empty());
        let mut shard = shard.expect("the key is tracked").lock();
        assert_eq!(shard.earliest, Some(t0 + table.interval));
        shard.sweep(t0);
        assert_eq!(shard.arrivals.len(), 1, "not full yet");
        shard.sweep(t0 + table.interval);
        assert!(shard.arrivals.is_empty(), "full again");
        assert_eq!(shard.earliest, None);
    }

    #[test]
    fn invalid_limits_are_refused_with_the_setting_named() {
        let secret = Secret::new(b"k".to_vec());
        for (limits, text) in [
            (
                RateLimits {
                    per_user: -1.0,
                    ..RateLimits::default()
                },
                "per user",
            ),
            (
                RateLimits {
                    per_ip: f64::NAN,
                    ..RateLimits::default()
                },
                "per address",
            ),
            (
                RateLimits {
                    per_ip: 1e-9,
                    ..RateLimits::default()
                },
                "per address",
            ),
            (
                RateLimits {
                    burst_seconds: f64::INFINITY,
                    ..RateLimits::default()
                },
                "burst",
            ),
            (
                RateLimits {
                    max_keys: 0,
                    ..RateLimits::default()
                },
                "at least one key",
            ),
        ] {
            let error = RateLimiter::new(limits, secret.clone()).unwrap_err();
            assert!(error.to_string().contains(text), "{error}");
        }
        assert!(RateLimits::off().validate().is_ok());
        assert!(RateLimits::default().validate().is_ok());
    }
}
