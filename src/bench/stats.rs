//! Order statistics of a set of samples.

use serde::Serialize;

/// min / median / p90 / max of some samples (nearest-rank percentiles).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    /// Samples.
    pub n: usize,
    /// Smallest.
    pub min: f64,
    /// Median (the upper one for an even count).
    pub median: f64,
    /// 90th percentile, nearest rank.
    pub p90: f64,
    /// Largest.
    pub max: f64,
}

impl Summary {
    /// The summary of `v`; `None` when empty or when a sample is not a number.
    pub fn of(v: &[f64]) -> Option<Summary> {
        if v.is_empty() || v.iter().any(|x| !x.is_finite()) {
            return None;
        }
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let rank = |p: f64| s[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
        Some(Summary {
            n,
            min: s[0],
            median: s[n / 2],
            p90: rank(0.9),
            max: s[n - 1],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_statistics() {
        let s = Summary::of(&[5.0, 1.0, 3.0, 2.0, 4.0]).unwrap();
        assert_eq!((s.n, s.min, s.median, s.max), (5, 1.0, 3.0, 5.0));
        assert_eq!(s.p90, 5.0);
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        let s = Summary::of(&ten).unwrap();
        assert_eq!((s.median, s.p90), (6.0, 9.0));
        let one = Summary::of(&[7.5]).unwrap();
        assert_eq!(
            (one.min, one.median, one.p90, one.max),
            (7.5, 7.5, 7.5, 7.5)
        );
        assert!(Summary::of(&[]).is_none());
        assert!(Summary::of(&[1.0, f64::NAN]).is_none());
    }
}
