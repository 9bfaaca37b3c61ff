//! What happened to the requests of a load test, and the summary written at the end.
//!
//! Every latency is kept (a `u32` of microseconds each), so percentiles are exact
//! nearest-rank values: a 5-minute run at 10k RPS is 3 M samples, 12 MB. (The gateway's own
//! `sluice::metrics::Histogram` is within 9.1%, right for merging minutes across processes,
//! but a benchmark tool should not add its own error to what it measures.)

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde_json::{Value, json};

use super::schedule::Tally;

/// How one request ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A 2xx answer read to the end (a JSON body, or a stream ending with `data: [DONE]`).
    Answered {
        /// From the request's start (its slot, in the open model) to the last byte.
        latency: Duration,
        /// Streams: to the first `data:` line.
        ttfb: Option<Duration>,
        /// The `x-sluice-cache` header (`hit`, `coalesced`, `miss`, `bypass`), if any.
        cache: Option<String>,
    },
    /// Anything else, by kind: the HTTP status (`"429"`), or `timeout`, `connect`,
    /// `transport`, `truncated` (the answer stopped early: a stream without
    /// `data: [DONE]`), `invalid_json`.
    Failed(String),
}

/// Counts and samples of a run so far.
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests started.
    pub sent: u64,
    /// Requests answered successfully.
    pub ok: u64,
    /// Failed requests by kind.
    pub errors: BTreeMap<String, u64>,
    /// `x-sluice-cache` values of successful answers (`none` without the header).
    pub cache: BTreeMap<String, u64>,
    latency_us: Vec<u32>,
    ttfb_us: Vec<u32>,
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

impl Stats {
    /// Counts a request as started (before its outcome is known, so none can go missing).
    pub fn start(&mut self) {
        self.sent += 1;
    }

    /// Records how a started request ended.
    pub fn record(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Answered {
                latency,
                ttfb,
                cache,
            } => {
                self.ok += 1;
                self.latency_us.push(micros(latency));
                if let Some(t) = ttfb {
                    self.ttfb_us.push(micros(t));
                }
                *self
                    .cache
                    .entry(cache.unwrap_or_else(|| "none".to_owned()))
                    .or_default() += 1;
            }
            Outcome::Failed(kind) => *self.errors.entry(kind).or_default() += 1,
        }
    }

    /// Failed requests, all kinds.
    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Started but neither answered nor failed (yet, during a run).
    pub fn outstanding(&self) -> u64 {
        self.sent.saturating_sub(self.ok + self.failed())
    }

    /// The summary at the end of a run.
    pub fn summary(&mut self, run: Run, tally: Tally, elapsed: Duration) -> Summary {
        self.latency_us.sort_unstable();
        self.ttfb_us.sort_unstable();
        // A coalesced answer (an identical request's, in flight) saved a call as a hit does.
        let hits = ["hit", "coalesced"]
            .iter()
            .map(|k| self.cache.get(*k).copied().unwrap_or(0))
            .sum();
        Summary {
            run,
            elapsed,
            sent: self.sent,
            ok: self.ok,
            errors: self.failed(),
            lost: self.outstanding(),
            dropped: tally.dropped,
            late: tally.late,
            latency: Percentiles::of(&self.latency_us),
            ttfb: Percentiles::of(&self.ttfb_us),
            errors_by_kind: self.errors.clone(),
            cache: self.cache.clone(),
            cache_hits: hits,
            interrupted: false,
        }
    }
}

/// The nearest-rank `q`-quantile (0 < q ≤ 1) of sorted values: the `ceil(q·n)`-th smallest.
pub fn percentile(sorted: &[u32], q: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    let rank = usize::try_from(sluice::num::f64_to_u64(
        (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil(),
    ))
    .unwrap_or(usize::MAX)
    .max(1);
    sorted.get(rank.min(sorted.len()) - 1).copied()
}

/// Latency figures in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percentiles {
    pub min: u32,
    pub mean: f64,
    pub p50: u32,
    pub p95: u32,
    pub p99: u32,
    pub max: u32,
}

impl Percentiles {
    /// Figures of sorted samples; `None` when there are none.
    pub fn of(sorted: &[u32]) -> Option<Self> {
        let (&min, &max) = (sorted.first()?, sorted.last()?);
        let sum: u64 = sorted.iter().map(|&v| u64::from(v)).sum();
        Some(Self {
            min,
            mean: sum as f64 / sorted.len() as f64,
            p50: percentile(sorted, 0.50)?,
            p95: percentile(sorted, 0.95)?,
            p99: percentile(sorted, 0.99)?,
            max,
        })
    }

    fn json_ms(&self) -> Value {
        // Milliseconds to the microsecond.
        let ms = |us: f64| us.round() / 1000.0;
        json!({
            "min": ms(f64::from(self.min)),
            "mean": ms(self.mean),
            "p50": ms(f64::from(self.p50)),
            "p95": ms(f64::from(self.p95)),
            "p99": ms(f64::from(self.p99)),
            "max": ms(f64::from(self.max)),
        })
    }
}

/// How the load was offered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    /// Closed model: this many workers.
    Closed { concurrency: u32 },
    /// Open model: this many arrivals per second, at most `max_in_flight` outstanding.
    Open { rate: f64, max_in_flight: u32 },
}

/// What was run (echoed in the summary).
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub url: String,
    pub model: String,
    pub load: Load,
    pub duration: Duration,
    pub stream: bool,
    pub repeat: f64,
}

/// The figures of a finished run.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub run: Run,
    /// Start to the last answer (the duration plus the tail of requests under way).
    pub elapsed: Duration,
    pub sent: u64,
    pub ok: u64,
    pub errors: u64,
    /// Sent but neither answered nor failed: a bug in the tool or a vanished request.
    pub lost: u64,
    pub dropped: u64,
    pub late: u64,
    /// Of successful answers.
    pub latency: Option<Percentiles>,
    /// Of successful streams.
    pub ttfb: Option<Percentiles>,
    pub errors_by_kind: BTreeMap<String, u64>,
    pub cache: BTreeMap<String, u64>,
    pub cache_hits: u64,
    /// Stopped before the duration was over (Ctrl-C).
    pub interrupted: bool,
}

impl Summary {
    /// Successful answers per second of elapsed time.
    pub fn rps(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ok as f64 / secs
        } else {
            0.0
        }
    }

    /// Cache hits per successful answer.
    pub fn cache_hit_ratio(&self) -> f64 {
        if self.ok > 0 {
            self.cache_hits as f64 / self.ok as f64
        } else {
            0.0
        }
    }

    /// Why the run counts as failed for `--fail-on-error`, if it does. Timing never does.
    pub fn failure(&self) -> Option<String> {
        if self.errors > 0 || self.lost > 0 {
            Some(format!(
                "{} of {} requests failed, {} lost",
                self.errors, self.sent, self.lost
            ))
        } else if self.ok == 0 {
            Some("no request was answered".to_owned())
        } else {
            None
        }
    }

    /// The summary as one JSON object (latencies in milliseconds).
    pub fn to_json(&self) -> Value {
        let round = |x: f64, places: i32| {
            let f = 10f64.powi(places);
            (x * f).round() / f
        };
        let (load, concurrency, rate, max_in_flight) = match self.run.load {
            Load::Closed { concurrency } => {
                ("closed", json!(concurrency), Value::Null, Value::Null)
            }
            Load::Open {
                rate,
                max_in_flight,
            } => ("open", Value::Null, json!(rate), json!(max_in_flight)),
        };
        json!({
            "url": self.run.url,
            "model": self.run.model,
            "load": load,
            "concurrency": concurrency,
            "rate": rate,
            "max_in_flight": max_in_flight,
            "duration_s": self.run.duration.as_secs_f64(),
            "stream": self.run.stream,
            "repeat": self.run.repeat,
            "elapsed_s": round(self.elapsed.as_secs_f64(), 3),
            "interrupted": self.interrupted,
            "sent": self.sent,
            "ok": self.ok,
            "errors": self.errors,
            "lost": self.lost,
            "dropped": self.dropped,
            "late": self.late,
            "rps": round(self.rps(), 1),
            "latency_ms": self.latency.map_or(Value::Null, |p| p.json_ms()),
            "ttfb_ms": self.ttfb.map_or(Value::Null, |p| p.json_ms()),
            "errors_by_status": self.errors_by_kind,
            "cache": self.cache,
            "cache_hits": self.cache_hits,
            "cache_hit_ratio": round(self.cache_hit_ratio(), 4),
        })
    }
}

/// Microseconds, readably: `870 µs`, `12.3 ms`, `1.52 s`.
fn human(us: u32) -> String {
    let us = f64::from(us);
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else if us < 100_000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else if us < 1_000_000.0 {
        format!("{:.0} ms", us / 1000.0)
    } else {
        format!("{:.2} s", us / 1_000_000.0)
    }
}

fn percentiles_line(p: &Percentiles) -> String {
    format!(
        "p50 {}  p95 {}  p99 {}  max {}  (mean {})",
        human(p.p50),
        human(p.p95),
        human(p.p99),
        human(p.max),
        human(u32::try_from(sluice::num::f64_to_u64(p.mean.round())).unwrap_or(u32::MAX))
    )
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let load = match self.run.load {
            Load::Closed { concurrency } => format!("closed model, concurrency {concurrency}"),
            Load::Open {
                rate,
                max_in_flight,
            } => format!("open model, {rate} req/s (at most {max_in_flight} in flight)"),
        };
        writeln!(
            f,
            "{} {} — {load}, {:.1} s{}{}",
            self.run.url,
            self.run.model,
            self.run.duration.as_secs_f64(),
            if self.run.stream { ", streamed" } else { "" },
            if self.run.repeat > 0.0 {
                format!(", {:.0}% repeated prompts", self.run.repeat * 100.0)
            } else {
                String::new()
            },
        )?;
        write!(
            f,
            "requests    {} sent, {} ok, {} errors, {} lost",
            self.sent, self.ok, self.errors, self.lost
        )?;
        if let Load::Open { .. } = self.run.load {
            write!(f, ", {} dropped, {} late", self.dropped, self.late)?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "throughput  {:.1} req/s ok over {:.2} s{}",
            self.rps(),
            self.elapsed.as_secs_f64(),
            if self.interrupted {
                " (stopped early)"
            } else {
                ""
            }
        )?;
        match &self.latency {
            Some(p) => writeln!(f, "latency     {}", percentiles_line(p))?,
            None => writeln!(f, "latency     -")?,
        }
        if let Some(p) = &self.ttfb {
            writeln!(f, "first byte  {}", percentiles_line(p))?;
        }
        writeln!(
            f,
            "cache       {} hits of {} ok ({:.1}%)",
            self.cache_hits,
            self.ok,
            self.cache_hit_ratio() * 100.0
        )?;
        if self.errors_by_kind.is_empty() {
            writeln!(f, "errors      none")
        } else {
            let list: Vec<String> = self
                .errors_by_kind
                .iter()
                .map(|(kind, n)| format!("{kind}: {n}"))
                .collect();
            writeln!(f, "errors      {}", list.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.50), Some(50));
        assert_eq!(percentile(&v, 0.95), Some(95));
        assert_eq!(percentile(&v, 0.99), Some(99));
        assert_eq!(percentile(&v, 1.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&[7], 0.99), Some(7));
        assert_eq!(percentile(&[], 0.5), None);
        // 10 values: p95 is the 10th (ceil 9.5), p50 the 5th.
        let ten = [1, 2, 3, 4, 5, 6, 7, 8, 9, 1000];
        assert_eq!(percentile(&ten, 0.5), Some(5));
        assert_eq!(percentile(&ten, 0.95), Some(1000));
        let p = Percentiles::of(&ten).unwrap();
        assert_eq!((p.min, p.max), (1, 1000));
        assert!((p.mean - 104.5).abs() < 1e-9);
    }

    fn answered(ms: u64, cache: &str) -> Outcome {
        Outcome::Answered {
            latency: Duration::from_millis(ms),
            ttfb: None,
            cache: Some(cache.to_owned()),
        }
    }

    fn run() -> Run {
        Run {
            url: "http://127.0.0.1:8080/v1/chat/completions".into(),
            model: "gpt-4o-mini".into(),
            load: Load::Closed { concurrency: 2 },
            duration: Duration::from_secs(2),
            stream: false,
            repeat: 0.5,
        }
    }

    #[test]
    fn summary_counts_every_request_once() {
        let mut s = Stats::default();
        for _ in 0..5 {
            s.start();
        }
        s.record(answered(30, "miss"));
        s.record(answered(10, "hit"));
        s.record(answered(20, "hit"));
        s.record(Outcome::Failed("429".into()));
        assert_eq!(s.outstanding(), 1);
        let sum = s.summary(run(), Tally::default(), Duration::from_secs(2));
        assert_eq!((sum.sent, sum.ok, sum.errors, sum.lost), (5, 3, 1, 1));
        assert_eq!(sum.latency.unwrap().p50, 20_000);
        assert_eq!(sum.latency.unwrap().max, 30_000);
        assert_eq!(sum.ttfb, None);
        assert!((sum.rps() - 1.5).abs() < 1e-9);
        assert!((sum.cache_hit_ratio() - 2.0 / 3.0).abs() < 1e-9);
        assert!(sum.failure().is_some());

        let j = sum.to_json();
        assert_eq!(j["sent"], 5);
        assert_eq!(j["lost"], 1);
        assert_eq!(j["errors_by_status"]["429"], 1);
        assert_eq!(j["cache_hits"], 2);
        assert_eq!(j["cache"]["miss"], 1);
        assert_eq!(j["latency_ms"]["p50"], 20.0);
        assert_eq!(j["load"], "closed");
        assert_eq!(j["concurrency"], 2);
        assert_eq!(j["rate"], Value::Null);
        assert_eq!(j["ttfb_ms"], Value::Null);
        assert_eq!(j["interrupted"], false);
        let text = sum.to_string();
        assert!(text.contains("5 sent, 3 ok, 1 errors, 1 lost"), "{text}");
        assert!(text.contains("429: 1"), "{text}");
    }

    #[test]
    fn a_clean_run_passes_and_an_empty_one_does_not() {
        let mut s = Stats::default();
        s.start();
        s.record(Outcome::Answered {
            latency: Duration::from_millis(5),
            ttfb: Some(Duration::from_millis(1)),
            cache: None,
        });
        let sum = s.summary(run(), Tally::default(), Duration::from_secs(1));
        assert_eq!(sum.failure(), None);
        assert_eq!(sum.ttfb.unwrap().p99, 1000);
        assert_eq!(sum.cache.get("none"), Some(&1));
        let empty = Stats::default().summary(run(), Tally::default(), Duration::from_secs(1));
        assert_eq!(empty.failure().as_deref(), Some("no request was answered"));
        assert_eq!(empty.rps(), 0.0);
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human(870), "870 µs");
        assert_eq!(human(12_345), "12.35 ms");
        assert_eq!(human(345_000), "345 ms");
        assert_eq!(human(1_520_000), "1.52 s");
    }
}
