//! A mergeable latency histogram with fixed log-scale buckets.
//!
//! Bucket `i` holds durations in `[2^(i/4), 2^((i+1)/4))` microseconds: four buckets per
//! doubling, so any quantile read back is within 9.1% (`2^(1/8) - 1`) of the true value, at
//! every scale from a microsecond to days. Fixed bucket bounds make histograms from different
//! processes, minutes and tables add up by plain per-bucket sums.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Buckets per doubling.
const PER_OCTAVE: f64 = 4.0;
/// The last bucket (2^40 µs ≈ 12.7 days); longer durations are counted in it.
pub const MAX_BUCKET: u16 = 160;

/// Counts per bucket; empty buckets are not stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Histogram {
    counts: BTreeMap<u16, u64>,
}

/// The bucket a duration in microseconds falls in.
pub fn bucket_of(micros: u64) -> u16 {
    if micros <= 1 {
        return 0;
    }
    let b = ((micros as f64).log2() * PER_OCTAVE).floor();
    u16::try_from(crate::num::f64_to_u64(b))
        .unwrap_or(MAX_BUCKET)
        .min(MAX_BUCKET)
}

/// The value reported for a bucket: the geometric middle of its bounds, in microseconds.
fn bucket_value(bucket: u16) -> f64 {
    2f64.powf((f64::from(bucket) + 0.5) / PER_OCTAVE)
}

impl Histogram {
    /// Counts one duration.
    pub fn record(&mut self, micros: u64) {
        *self.counts.entry(bucket_of(micros)).or_default() += 1;
    }

    /// Adds `n` to a bucket (for rebuilding a stored histogram).
    pub fn add(&mut self, bucket: u16, n: u64) {
        if n > 0 {
            *self.counts.entry(bucket.min(MAX_BUCKET)).or_default() += n;
        }
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &Histogram) {
        for (&bucket, &n) in &other.counts {
            self.add(bucket, n);
        }
    }

    /// Durations counted.
    pub fn count(&self) -> u64 {
        self.counts.values().sum()
    }

    /// Non-empty buckets and their counts, lowest first.
    pub fn buckets(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        self.counts.iter().map(|(&b, &n)| (b, n))
    }

    /// The `q`-quantile (0 < q ≤ 1) in microseconds, by nearest rank: the value of the
    /// bucket holding the `ceil(q·n)`-th smallest duration. `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = crate::num::f64_to_u64((q.clamp(0.0, 1.0) * n as f64).ceil()).max(1);
        let mut seen = 0;
        for (&bucket, &count) in &self.counts {
            seen += count;
            if seen >= rank {
                return Some(bucket_value(bucket));
            }
        }
        self.counts.keys().next_back().map(|&b| bucket_value(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact nearest-rank quantile of raw values.
    fn exact(values: &mut [u64], q: f64) -> f64 {
        values.sort_unstable();
        let rank = usize::try_from(crate::num::f64_to_u64((q * values.len() as f64).ceil()))
            .unwrap_or(usize::MAX)
            .max(1);
        values[rank - 1] as f64
    }

    #[test]
    fn quantiles_are_within_the_bucket_resolution() {
        // A skewed spread from 50 µs to ~2 s, deterministic.
        let mut values: Vec<u64> = (0..5000u64)
            .map(|i| 50 + (i * i * 7919) % 2_000_000)
            .collect();
        let mut h = Histogram::default();
        for &v in &values {
            h.record(v);
        }
        assert_eq!(h.count(), 5000);
        for q in [0.5, 0.9, 0.95, 0.99, 1.0] {
            let truth = exact(&mut values, q);
            let got = h.quantile(q).unwrap();
            let error = (got / truth - 1.0).abs();
            assert!(error <= 0.0906, "q={q}: {got} vs {truth} ({error})");
        }
    }

    #[test]
    fn merging_equals_recording_everything_in_one() {
        let (mut a, mut b, mut all) = (
            Histogram::default(),
            Histogram::default(),
            Histogram::default(),
        );
        for v in [3, 900, 12_000, 12_001, 7_000_000] {
            a.record(v);
            all.record(v);
        }
        for v in [1, 2, 450_000] {
            b.record(v);
            all.record(v);
        }
        a.merge(&b);
        assert_eq!(a, all);
        assert_eq!(Histogram::default().quantile(0.5), None);
        assert_eq!(bucket_of(u64::MAX), MAX_BUCKET);
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<Histogram>(&json).unwrap(), a);
    }
}
