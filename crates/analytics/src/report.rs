//! Reports: a validated query ([`ReportQuery`]) and the answer ([`AnalyticsReport`]), built
//! from a store's rollup rows and active-user counts by pure merging.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::model::{Counts, Granularity, Histogram, Period, Rollup, month_start, next_month_start};
use crate::{AnalyticsStore, Result};

/// The longest range a report covers, per granularity: 2 days of minutes (2,880 buckets) or
/// 366 days.
pub const MAX_MINUTE_RANGE: Duration = Duration::days(2);
pub const MAX_DAY_RANGE: Duration = Duration::days(366);

/// Ranges up to this long default to minute buckets; longer ones to days.
pub const MINUTE_DEFAULT_UP_TO: Duration = Duration::days(1);

/// Why a report query is refused: the caller's mistake (HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("`from` ({from}) must be before `to` ({to})")]
    EmptyRange {
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    },
    #[error(
        "a report by {granularity} covers at most {max_days} days; ask for a shorter range or \
         granularity=day"
    )]
    RangeTooLong {
        granularity: &'static str,
        max_days: i64,
    },
    #[error("granularity {0:?} is not one of `minute`, `day`")]
    UnknownGranularity(String),
}

/// A report request, valid by construction: `from < to`, within the granularity's limit.
/// The range is widened to whole buckets: every bucket that overlaps `[from, to)` is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportQuery {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    granularity: Granularity,
}

impl ReportQuery {
    /// Checks a range; `granularity` defaults to minutes for ranges up to a day, else days.
    pub fn new(
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        granularity: Option<Granularity>,
    ) -> Result<Self, QueryError> {
        if from >= to {
            return Err(QueryError::EmptyRange { from, to });
        }
        let granularity = granularity.unwrap_or(if to - from <= MINUTE_DEFAULT_UP_TO {
            Granularity::Minute
        } else {
            Granularity::Day
        });
        let max = match granularity {
            Granularity::Minute => MAX_MINUTE_RANGE,
            Granularity::Day => MAX_DAY_RANGE,
        };
        if to - from > max {
            return Err(QueryError::RangeTooLong {
                granularity: granularity.name(),
                max_days: max.num_days(),
            });
        }
        Ok(ReportQuery {
            from: granularity.floor(from),
            to: granularity.ceil(to),
            granularity,
        })
    }

    /// Like [`ReportQuery::new`], with the granularity as the API spells it.
    pub fn parse(
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        granularity: Option<&str>,
    ) -> Result<Self, QueryError> {
        let granularity = granularity
            .map(|g| Granularity::parse(g).ok_or_else(|| QueryError::UnknownGranularity(g.into())))
            .transpose()?;
        ReportQuery::new(from, to, granularity)
    }

    /// The first bucket's start.
    pub fn from(&self) -> DateTime<Utc> {
        self.from
    }

    /// The end of the last bucket.
    pub fn to(&self) -> DateTime<Utc> {
        self.to
    }

    pub fn granularity(&self) -> Granularity {
        self.granularity
    }

    /// The days that overlap the range.
    pub fn days(&self) -> Vec<Period> {
        let mut out = Vec::new();
        let mut day = Granularity::Day.floor(self.from);
        while day < self.to {
            out.push(Period::day_of(day));
            day += Duration::days(1);
        }
        out
    }

    /// The months that overlap the range.
    pub fn months(&self) -> Vec<Period> {
        let mut out = Vec::new();
        let mut month = month_start(self.from);
        while month < self.to {
            out.push(Period::month_of(month));
            month = next_month_start(month);
        }
        out
    }
}

/// A latency distribution summarised: percentiles are bucket upper bounds (see
/// [`Histogram::quantile`]), the mean and maximum are exact.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: u64,
    pub p90_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
}

impl LatencySummary {
    /// `None` for an empty histogram.
    pub fn of(h: &Histogram) -> Option<Self> {
        let count = h.count();
        Some(LatencySummary {
            count,
            mean_ms: h.sum_ms as f64 / count as f64,
            p50_ms: h.quantile(0.50)?,
            p90_ms: h.quantile(0.90)?,
            p99_ms: h.quantile(0.99)?,
            max_ms: h.max_ms,
        })
    }
}

/// One bucket's figures (every log partition merged).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BucketReport {
    pub start: DateTime<Utc>,
    #[serde(flatten)]
    pub counts: Counts,
    pub delivery_latency: Option<LatencySummary>,
    pub read_latency: Option<LatencySummary>,
}

/// Distinct active users of a day (`2026-11-21`) or month (`2026-11`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActiveUsers {
    pub period: String,
    pub users: u64,
}

/// The friendship funnel over the range: accepts divided by requests of the same range (not
/// a cohort: an accept may answer a request made before the range).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Funnel {
    pub requested: u64,
    pub accepted: u64,
    /// `accepted / requested`; `null` with no requests.
    pub conversion: Option<f64>,
}

/// The whole range's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Totals {
    #[serde(flatten)]
    pub counts: Counts,
    pub friend_funnel: Funnel,
    pub delivery_latency: Option<LatencySummary>,
    pub read_latency: Option<LatencySummary>,
}

/// The answer to `GET /v1/admin/analytics`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnalyticsReport {
    /// The range, widened to whole buckets.
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub granularity: Granularity,
    /// Buckets in time order; buckets with nothing counted are left out.
    pub buckets: Vec<BucketReport>,
    /// Every day overlapping the range, in order.
    pub daily_active_users: Vec<ActiveUsers>,
    /// Every month overlapping the range, in order.
    pub monthly_active_users: Vec<ActiveUsers>,
    pub totals: Totals,
}

/// Merges rollup rows (of any partitions) into a report; `active` gives each period's count.
pub fn build_report(
    query: &ReportQuery,
    rows: &[Rollup],
    daily: Vec<ActiveUsers>,
    monthly: Vec<ActiveUsers>,
) -> AnalyticsReport {
    let mut merged: BTreeMap<DateTime<Utc>, (Counts, Histogram, Histogram)> = BTreeMap::new();
    for row in rows.iter().filter(|r| {
        r.key.granularity == query.granularity
            && r.key.start >= query.from
            && r.key.start < query.to
    }) {
        let (counts, delivery, read) = merged.entry(row.key.start).or_default();
        *counts += row.counts;
        delivery.merge(&row.delivery);
        read.merge(&row.read);
    }
    let mut total = (
        Counts::default(),
        Histogram::default(),
        Histogram::default(),
    );
    let mut buckets = Vec::new();
    for (start, (counts, delivery, read)) in merged {
        if counts.is_zero() && delivery.is_empty() && read.is_empty() {
            continue;
        }
        total.0 += counts;
        total.1.merge(&delivery);
        total.2.merge(&read);
        buckets.push(BucketReport {
            start,
            counts,
            delivery_latency: LatencySummary::of(&delivery),
            read_latency: LatencySummary::of(&read),
        });
    }
    let (counts, delivery, read) = total;
    AnalyticsReport {
        from: query.from,
        to: query.to,
        granularity: query.granularity,
        buckets,
        daily_active_users: daily,
        monthly_active_users: monthly,
        totals: Totals {
            counts,
            friend_funnel: Funnel {
                requested: counts.friend_requests,
                accepted: counts.friend_accepts,
                conversion: (counts.friend_requests > 0)
                    .then(|| counts.friend_accepts as f64 / counts.friend_requests as f64),
            },
            delivery_latency: LatencySummary::of(&delivery),
            read_latency: LatencySummary::of(&read),
        },
    }
}

/// Answers a report query from a store: its rollup rows of the range, and the distinct active
/// users of every day and month that overlaps it.
pub async fn report(store: &dyn AnalyticsStore, query: &ReportQuery) -> Result<AnalyticsReport> {
    let rows = store
        .rollups_between(query.granularity, query.from, query.to)
        .await?;
    let mut daily = Vec::new();
    for day in query.days() {
        let users = store.active_users(day).await?;
        daily.push(ActiveUsers {
            period: day.key(),
            users,
        });
    }
    let mut monthly = Vec::new();
    for month in query.months() {
        let users = store.active_users(month).await?;
        monthly.push(ActiveUsers {
            period: month.key(),
            users,
        });
    }
    Ok(build_report(query, &rows, daily, monthly))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RollupKey;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().expect("time")
    }

    #[test]
    fn queries_are_validated_and_widened_to_whole_buckets() {
        let from = at("2026-03-31T10:00:30Z");
        let to = at("2026-03-31T11:00:10Z");
        let q = ReportQuery::new(from, to, None).expect("valid");
        assert_eq!(q.granularity(), Granularity::Minute);
        assert_eq!(q.from(), at("2026-03-31T10:00:00Z"));
        assert_eq!(q.to(), at("2026-03-31T11:01:00Z"));
        assert_eq!(q.days().len(), 1);
        let q = ReportQuery::parse(at("2026-03-30T12:00:00Z"), at("2026-04-02T00:00:00Z"), None)
            .expect("valid");
        assert_eq!(q.granularity(), Granularity::Day);
        assert_eq!(q.from(), at("2026-03-30T00:00:00Z"));
        let days: Vec<String> = q.days().into_iter().map(Period::key).collect();
        assert_eq!(days, ["2026-03-30", "2026-03-31", "2026-04-01"]);
        let months: Vec<String> = q.months().into_iter().map(Period::key).collect();
        assert_eq!(months, ["2026-03", "2026-04"]);

        assert!(matches!(
            ReportQuery::new(to, from, None),
            Err(QueryError::EmptyRange { .. })
        ));
        assert!(matches!(
            ReportQuery::new(from, from, None),
            Err(QueryError::EmptyRange { .. })
        ));
        assert_eq!(
            ReportQuery::new(from, from + Duration::days(3), Some(Granularity::Minute)),
            Err(QueryError::RangeTooLong {
                granularity: "minute",
                max_days: 2
            })
        );
        assert!(ReportQuery::new(from, from + Duration::days(400), None).is_err());
        assert_eq!(
            ReportQuery::parse(from, to, Some("hour")),
            Err(QueryError::UnknownGranularity("hour".into()))
        );
    }

    #[test]
    fn reports_merge_partitions_and_leave_empty_buckets_out() {
        let q = ReportQuery::new(at("2026-03-31T10:00:00Z"), at("2026-03-31T10:05:00Z"), None)
            .expect("valid");
        let row = |minute: &str, partition, messages, delivery: &[u64]| {
            let mut r = Rollup::empty(RollupKey::of(Granularity::Minute, at(minute), partition));
            r.counts.messages = messages;
            r.counts.friend_requests = messages;
            r.counts.friend_accepts = partition as u64;
            for ms in delivery {
                r.delivery.observe(*ms);
            }
            r
        };
        let rows = [
            row("2026-03-31T10:01:00Z", 0, 2, &[100]),
            row("2026-03-31T10:01:00Z", 1, 3, &[900, 40]),
            row("2026-03-31T10:02:00Z", 0, 0, &[]),
            row("2026-03-31T10:06:00Z", 0, 7, &[]),
        ];
        let report = build_report(&q, &rows, Vec::new(), Vec::new());
        assert_eq!(report.buckets.len(), 1);
        let b = &report.buckets[0];
        assert_eq!(b.counts.messages, 5);
        let d = b.delivery_latency.as_ref().expect("latency");
        assert_eq!((d.count, d.p50_ms, d.max_ms), (3, 100, 900));
        assert_eq!(report.totals.counts.messages, 5);
        assert_eq!(report.totals.friend_funnel.conversion, Some(0.2));
        assert_eq!(report.totals.read_latency, None);
        let json = serde_json::to_value(&report).expect("json");
        assert_eq!(json["buckets"][0]["messages"], 5);
        assert_eq!(json["granularity"], "minute");
        assert_eq!(json["totals"]["friend_funnel"]["requested"], 5);
    }
}
