//! Rank correlations, with ties handled as scipy does (`spearmanr`, `kendalltau` variant b).
//! Both are NaN when either input is constant or shorter than 2, as in scipy.

/// 1-based ranks; tied values share the average of the ranks they span.
pub fn average_ranks(x: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut ranks = vec![0.0; x.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && x[order[end]] == x[order[start]] {
            end += 1;
        }
        // Positions start..end hold ranks start+1..=end; their mean is (start + 1 + end) / 2.
        let rank = (start + 1 + end) as f64 / 2.0;
        for &i in &order[start..end] {
            ranks[i] = rank;
        }
        start = end;
    }
    ranks
}

fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx).powi(2);
        syy += (b - my).powi(2);
    }
    sxy / (sxx * syy).sqrt()
}

/// Spearman's rho: the Pearson correlation of the average ranks.
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    assert_eq!(x.len(), y.len(), "spearman: inputs differ in length");
    if x.len() < 2 {
        return f64::NAN;
    }
    pearson(&average_ranks(x), &average_ranks(y))
}

/// Kendall's tau-b: (concordant - discordant) / sqrt((pairs - ties in x) (pairs - ties in y)).
/// O(n^2), which is nothing next to training one architecture.
pub fn kendall_tau_b(x: &[f64], y: &[f64]) -> f64 {
    assert_eq!(x.len(), y.len(), "kendall: inputs differ in length");
    let n = x.len();
    let sign = |d: f64| i64::from(d > 0.0) - i64::from(d < 0.0);
    let (mut concordant, mut discordant, mut tied_x, mut tied_y, mut pairs) = (0i64, 0i64, 0i64, 0i64, 0i64);
    for i in 0..n {
        for j in i + 1..n {
            pairs += 1;
            let (dx, dy) = (x[i] - x[j], y[i] - y[j]);
            if dx == 0.0 {
                tied_x += 1;
            }
            if dy == 0.0 {
                tied_y += 1;
            }
            // By signs, not `dx * dy`, which underflows to 0 for tiny differences.
            match sign(dx) * sign(dy) {
                1 => concordant += 1,
                -1 => discordant += 1,
                _ => {}
            }
        }
    }
    let denominator = ((pairs - tied_x) as f64 * (pairs - tied_y) as f64).sqrt();
    if denominator == 0.0 {
        return f64::NAN;
    }
    (concordant - discordant) as f64 / denominator
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn average_ranks_share_ties() {
        assert_eq!(average_ranks(&[5.0, 6.0, 7.0, 8.0, 7.0]), [1.0, 2.0, 3.5, 5.0, 3.5]);
        assert_eq!(average_ranks(&[2.0, 2.0, 2.0, 1.0]), [3.0, 3.0, 3.0, 1.0]);
    }

    #[test]
    fn spearman_matches_scipy() {
        // scipy.stats.spearmanr([1,2,3,4,5], [5,6,7,8,7]) = 0.8207826816681233. By hand: ranks of
        // y are [1,2,3.5,5,3.5]; deviations from 3 give sum(dx dy) = 8, sum dx^2 = 10, sum dy^2 =
        // 9.5, so rho = 8 / sqrt(95).
        let rho = spearman(&[1.0, 2.0, 3.0, 4.0, 5.0], &[5.0, 6.0, 7.0, 8.0, 7.0]);
        assert!(close(rho, 0.8207826816681233), "{rho}");
        assert!(close(rho, 8.0 / 95f64.sqrt()));
        assert!(close(spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]), 1.0));
        assert!(close(spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]), -1.0));
        assert!(spearman(&[1.0, 1.0], &[1.0, 2.0]).is_nan());
        assert!(spearman(&[1.0], &[1.0]).is_nan());
    }

    #[test]
    fn kendall_tau_b_matches_scipy() {
        // scipy.stats.kendalltau([12,2,1,12,2], [1,4,7,1,0]) = -0.47140452079103173 (its docs'
        // example). By hand: 10 pairs, 2 concordant, 6 discordant, 2 tied in x, 1 tied in y, so
        // tau_b = (2 - 6) / sqrt((10 - 2) (10 - 1)) = -4 / sqrt(72).
        let tau = kendall_tau_b(&[12.0, 2.0, 1.0, 12.0, 2.0], &[1.0, 4.0, 7.0, 1.0, 0.0]);
        assert!(close(tau, -0.47140452079103173), "{tau}");
        assert!(close(tau, -4.0 / 72f64.sqrt()));
        assert_eq!(kendall_tau_b(&[0.0, 1e-200, 2e-200], &[0.0, 1e-200, 3e-200]), 1.0, "no underflow");
        assert!(close(kendall_tau_b(&[1.0, 2.0, 3.0, 4.0], &[1.0, 3.0, 2.0, 4.0]), 4.0 / 6.0));
        assert!(close(kendall_tau_b(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]), -1.0));
        assert!(kendall_tau_b(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]).is_nan());
    }
}
