//! Order statistics of bench samples: one definition behind every bench's p50/p90/p99 and
//! medians, so their figures are comparable.

/// The `p` quantile (`0.0..=1.0`) of `sorted` (ascending), by the nearest rank (at 0.5 the
/// upper median of an even count); `None` when there is no sample.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied()
}

/// The median of `values` (the upper one of an even count; 0 for none).
pub fn median_f64(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    percentile(&sorted, 0.5).unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        assert_eq!(percentile::<u64>(&[], 0.5), None);
        assert_eq!(percentile(&[1, 2, 3], 0.5), Some(2));
        assert_eq!(percentile(&[1, 2, 3, 4], 0.5), Some(3));
        assert_eq!(percentile(&[1, 2, 3, 4], 0.99), Some(4));
        assert_eq!(percentile(&[1, 2, 3, 4], 0.0), Some(1));
        assert_eq!(median_f64(&[3.0, 1.0, 2.0, 4.0]), 3.0);
        assert_eq!(median_f64(&[]), 0.0);
    }
}
