//! Request traces: when session requests arrive and how long each session
//! lasts, read from and written to a small CSV format, and generated from
//! seeded random processes for the scaling report.
//!
//! Format (`benches/traces/*.csv`):
//!
//! ```text
//! # browserfleet trace v1 shape=bursty seed=3 horizon_seconds=21600
//! arrival_seconds,duration_seconds
//! 0.412,131.907
//! ```
//!
//! Comment lines start with `#`; one of them may set `horizon_seconds`, the
//! length of the observed period (a trace that ends in silence still counts
//! the silence). Rows are sorted by arrival. The format is two numbers per line,
//! so it is parsed by hand, which gives better line-numbered errors than a CSV
//! crate would add.

use std::f64::consts::PI;
use std::fmt::Write as _;
use std::time::Duration;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Exp};

/// One session request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TraceRequest {
    /// When it arrives, from the trace start.
    pub arrival: Duration,
    /// How long the session runs once started.
    pub duration: Duration,
}

/// A sorted list of requests over an observed period.
#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    /// Requests by arrival.
    pub requests: Vec<TraceRequest>,
    /// Length of the observed period; at least the last arrival.
    pub horizon: Duration,
}

/// Why a trace could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// A row is not `arrival_seconds,duration_seconds` with finite,
    /// non-negative numbers.
    #[error("line {line}: {message}")]
    Malformed {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// Rows are not sorted by arrival.
    #[error("line {line}: arrival {arrival}s is earlier than the previous row")]
    Unsorted {
        /// 1-based line number.
        line: usize,
        /// The offending arrival in seconds.
        arrival: f64,
    },
}

impl Trace {
    /// Parses the CSV format described in the module documentation.
    pub fn parse(text: &str) -> Result<Trace, TraceError> {
        let mut requests = Vec::new();
        let mut horizon = Duration::ZERO;
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let row = raw.trim();
            if let Some(comment) = row.strip_prefix('#') {
                if let Some(value) = comment
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("horizon_seconds="))
                {
                    horizon = seconds(value, line, "horizon_seconds")?;
                }
                continue;
            }
            if row.is_empty() || row.starts_with("arrival_seconds") {
                continue;
            }
            let Some((arrival, duration)) = row.split_once(',') else {
                return Err(TraceError::Malformed {
                    line,
                    message: "expected arrival_seconds,duration_seconds".into(),
                });
            };
            let request = TraceRequest {
                arrival: seconds(arrival, line, "arrival_seconds")?,
                duration: seconds(duration, line, "duration_seconds")?,
            };
            if requests
                .last()
                .is_some_and(|last: &TraceRequest| last.arrival > request.arrival)
            {
                return Err(TraceError::Unsorted {
                    line,
                    arrival: request.arrival.as_secs_f64(),
                });
            }
            requests.push(request);
        }
        let last_arrival = requests.last().map_or(Duration::ZERO, |r| r.arrival);
        Ok(Trace {
            requests,
            horizon: horizon.max(last_arrival),
        })
    }

    /// Renders the trace in the CSV format, with `header` as a comment line.
    pub fn to_csv(&self, header: &str) -> String {
        let mut out = format!(
            "# {header} horizon_seconds={}\narrival_seconds,duration_seconds\n",
            self.horizon.as_secs()
        );
        for r in &self.requests {
            // Writing to a String cannot fail.
            let _ = writeln!(
                out,
                "{:.3},{:.3}",
                r.arrival.as_secs_f64(),
                r.duration.as_secs_f64()
            );
        }
        out
    }

    /// The most sessions running at once if every request started on arrival:
    /// what a fleet sized for the peak must hold.
    pub fn peak_concurrency(&self) -> u32 {
        let mut edges: Vec<(Duration, i32)> = Vec::with_capacity(self.requests.len() * 2);
        for r in &self.requests {
            edges.push((r.arrival, 1));
            edges.push((r.arrival + r.duration, -1));
        }
        // Ends sort before starts at the same instant.
        edges.sort();
        let (mut now, mut peak) = (0i64, 0i64);
        for (_, delta) in edges {
            now += i64::from(delta);
            peak = peak.max(now);
        }
        u32::try_from(peak).unwrap_or(u32::MAX)
    }
}

fn seconds(text: &str, line: usize, field: &str) -> Result<Duration, TraceError> {
    let value: f64 = text.trim().parse().map_err(|_| TraceError::Malformed {
        line,
        message: format!("{field} {text:?} is not a number"),
    })?;
    Duration::try_from_secs_f64(value).map_err(|_| TraceError::Malformed {
        line,
        message: format!("{field} {text:?} must be a finite, non-negative number of seconds"),
    })
}

/// The workload shapes the scaling report compares policies on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TraceShape {
    /// Poisson arrivals at 0.5 requests/s for 4 hours, sessions of about 3
    /// minutes.
    Steady,
    /// 24 hours whose arrival rate follows the day: 0.05 requests/s at night,
    /// 0.6 at midday.
    Diurnal,
    /// 6 hours at 0.1 requests/s with a 10× spike of 10 minutes every 45
    /// minutes.
    Bursty,
    /// 30 minutes at 0.8 requests/s, then 3.5 hours of silence: the fleet
    /// should go back to zero.
    SpikeThenSilence,
    /// 12 hours at 0.01 requests/s with sessions of 1 to 3 hours.
    LongSessions,
    /// 24 hours, about 100,000 requests: the simulator's speed benchmark.
    Perf,
}

impl TraceShape {
    /// Every shape the scaling report uses (all but the benchmark trace).
    pub const REPORTED: [TraceShape; 5] = [
        TraceShape::Steady,
        TraceShape::Diurnal,
        TraceShape::Bursty,
        TraceShape::SpikeThenSilence,
        TraceShape::LongSessions,
    ];

    /// The file-name stem, e.g. `spike-then-silence`.
    pub fn name(self) -> &'static str {
        match self {
            TraceShape::Steady => "steady",
            TraceShape::Diurnal => "diurnal",
            TraceShape::Bursty => "bursty",
            TraceShape::SpikeThenSilence => "spike-then-silence",
            TraceShape::LongSessions => "long-sessions",
            TraceShape::Perf => "perf",
        }
    }

    /// The fixed seed the checked-in trace of this shape was made with.
    pub fn default_seed(self) -> u64 {
        match self {
            TraceShape::Steady => 1,
            TraceShape::Diurnal => 2,
            TraceShape::Bursty => 3,
            TraceShape::SpikeThenSilence => 4,
            TraceShape::LongSessions => 5,
            TraceShape::Perf => 6,
        }
    }
}

const HOUR: f64 = 3600.0;

/// Generates a trace of `shape` from `seed`; the same seed gives the same trace.
pub fn generate(shape: TraceShape, seed: u64) -> Trace {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let short = |rng: &mut ChaCha8Rng| exponential_seconds(rng, 180.0).max(5.0);
    let (horizon, requests) = match shape {
        TraceShape::Steady => (
            4.0 * HOUR,
            poisson(&mut rng, 4.0 * HOUR, 0.5, |_| 0.5, short),
        ),
        TraceShape::Diurnal => {
            let rate = |t: f64| 0.05 + 0.55 * (1.0 - (2.0 * PI * t / (24.0 * HOUR)).cos()) / 2.0;
            (
                24.0 * HOUR,
                poisson(&mut rng, 24.0 * HOUR, 0.6, rate, short),
            )
        }
        TraceShape::Bursty => {
            let rate = |t: f64| {
                let into_cycle = (t + 20.0 * 60.0) % (45.0 * 60.0);
                if into_cycle < 10.0 * 60.0 { 1.0 } else { 0.1 }
            };
            (6.0 * HOUR, poisson(&mut rng, 6.0 * HOUR, 1.0, rate, short))
        }
        TraceShape::SpikeThenSilence => {
            let rate = |t: f64| if t < 0.5 * HOUR { 0.8 } else { 0.0 };
            (4.0 * HOUR, poisson(&mut rng, 0.5 * HOUR, 0.8, rate, short))
        }
        TraceShape::LongSessions => {
            let long = |rng: &mut ChaCha8Rng| HOUR + 2.0 * HOUR * rng.random::<f64>();
            (
                12.0 * HOUR,
                poisson(&mut rng, 12.0 * HOUR, 0.01, |_| 0.01, long),
            )
        }
        TraceShape::Perf => {
            let rate = 100_000.0 / (24.0 * HOUR);
            (
                24.0 * HOUR,
                poisson(&mut rng, 24.0 * HOUR, rate, |_| rate, short),
            )
        }
    };
    Trace {
        requests,
        horizon: Duration::from_secs_f64(horizon),
    }
}

/// A non-homogeneous Poisson process by thinning: candidates at `peak` rate,
/// each kept with probability rate(t) / peak.
fn poisson(
    rng: &mut ChaCha8Rng,
    until: f64,
    peak: f64,
    rate: impl Fn(f64) -> f64,
    duration: impl Fn(&mut ChaCha8Rng) -> f64,
) -> Vec<TraceRequest> {
    let mut requests = Vec::new();
    let mut t = 0.0;
    loop {
        t += exponential_seconds(rng, 1.0 / peak);
        if t >= until {
            return requests;
        }
        if rng.random::<f64>() * peak < rate(t) {
            requests.push(TraceRequest {
                arrival: Duration::from_secs_f64(round_ms(t)),
                duration: Duration::from_secs_f64(round_ms(duration(rng))),
            });
        }
    }
}

fn exponential_seconds(rng: &mut ChaCha8Rng, mean: f64) -> f64 {
    // A positive, finite rate always makes a valid distribution.
    Exp::new(1.0 / mean).map_or(mean, |exp| exp.sample(rng))
}

/// Rounded to the millisecond so that a trace reads back exactly as written.
fn round_ms(seconds: f64) -> f64 {
    (seconds * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_trace_reads_back_identically() {
        for shape in TraceShape::REPORTED {
            let trace = generate(shape, shape.default_seed());
            let text = trace.to_csv("test");
            assert_eq!(Trace::parse(&text).expect("parses"), trace, "{shape:?}");
        }
    }

    #[test]
    fn same_seed_same_trace_other_seed_other_trace() {
        assert_eq!(
            generate(TraceShape::Bursty, 3),
            generate(TraceShape::Bursty, 3)
        );
        assert_ne!(
            generate(TraceShape::Bursty, 3),
            generate(TraceShape::Bursty, 4)
        );
    }

    #[test]
    fn shapes_have_the_documented_volume() {
        let count = |s| generate(s, 1).requests.len() as f64;
        // Expected counts from the rates above, within a generous margin.
        assert!((count(TraceShape::Steady) - 7200.0).abs() < 400.0);
        assert!((count(TraceShape::Perf) - 100_000.0).abs() < 1500.0);
        let silence = generate(TraceShape::SpikeThenSilence, 1);
        assert!(silence.requests.iter().all(|r| r.arrival.as_secs() < 1800));
        assert_eq!(silence.horizon, Duration::from_secs(4 * 3600));
    }

    #[test]
    fn malformed_rows_are_refused_with_their_line() {
        let cases = [
            ("arrival_seconds,duration_seconds\n1.0\n", 2),
            ("1.0,abc\n", 1),
            ("1.0,-3\n", 1),
            ("1.0,NaN\n", 1),
            ("2.0,1\n1.0,1\n", 2),
        ];
        for (text, line) in cases {
            let err = Trace::parse(text).expect_err(text);
            assert!(
                err.to_string().starts_with(&format!("line {line}:")),
                "{text:?}: {err}"
            );
        }
    }

    #[test]
    fn peak_concurrency_counts_overlaps() {
        let r = |a: u64, d: u64| TraceRequest {
            arrival: Duration::from_secs(a),
            duration: Duration::from_secs(d),
        };
        let trace = Trace {
            requests: vec![r(0, 10), r(5, 10), r(10, 10), r(20, 1)],
            horizon: Duration::from_secs(30),
        };
        assert_eq!(trace.peak_concurrency(), 2);
    }
}
