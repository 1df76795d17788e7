//! Evolution strategies (Salimans et al. 2017): estimate the gradient of the Gaussian-smoothed
//! fitness E[f(theta + sigma * eps)] from antithetic pairs theta ± sigma * eps, with fitness
//! replaced by centred ranks so one lucky episode cannot dominate a step. Works on any
//! black-box fitness, here the real return of policies trained on a teacher.

use std::sync::atomic::{AtomicUsize, Ordering};

use rand::{rngs::StdRng, Rng};
use rand_distr::StandardNormal;

/// How fitness values weight their perturbations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shaping {
    /// Raw fitness: an unbiased estimate of the smoothed gradient (used to test the estimator).
    None,
    /// Centred ranks in [-0.5, 0.5]: invariant to any monotone change of the fitness.
    CentredRanks,
}

/// `pairs` standard-normal directions of dimension `dim`.
pub fn directions(rng: &mut StdRng, dim: usize, pairs: usize) -> Vec<Vec<f32>> {
    (0..pairs).map(|_| (0..dim).map(|_| rng.sample(StandardNormal)).collect()).collect()
}

/// Candidate `2j` is theta + sigma * eps_j, candidate `2j + 1` is theta - sigma * eps_j.
pub fn candidate(theta: &[f32], directions: &[Vec<f32>], sigma: f64, i: usize) -> Vec<f32> {
    let sign = if i.is_multiple_of(2) { sigma as f32 } else { -sigma as f32 };
    theta.iter().zip(&directions[i / 2]).map(|(t, e)| t + sign * e).collect()
}

/// Ranks scaled to [-0.5, 0.5]; tied values share their mean rank, so candidates that scored the
/// same (common at a return cap) pull equally.
pub fn centred_ranks(fitness: &[f64]) -> Vec<f64> {
    let n = fitness.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| fitness[a].total_cmp(&fitness[b]));
    let mut ranks = vec![0.0; n];
    let mut start = 0;
    while start < n {
        let mut end = start + 1;
        while end < n && fitness[order[end]] == fitness[order[start]] {
            end += 1;
        }
        let mean_rank = (start + end - 1) as f64 / 2.0;
        for &i in &order[start..end] {
            ranks[i] = if n > 1 { mean_rank / (n - 1) as f64 - 0.5 } else { 0.0 };
        }
        start = end;
    }
    ranks
}

/// Gradient estimate (ascent direction) from the fitness of the `2 * pairs` candidates:
/// sum_j (w(f+_j) - w(f-_j)) eps_j / (2 * pairs * sigma). With raw fitness on a quadratic,
/// f(theta + s e) - f(theta - s e) = 2 s grad·e exactly, so the estimate is the mean of
/// (grad·e) e, whose expectation is the gradient.
pub fn gradient(directions: &[Vec<f32>], fitness: &[f64], sigma: f64, shaping: Shaping) -> Vec<f64> {
    assert_eq!(fitness.len(), 2 * directions.len(), "es: one fitness per candidate");
    let weights = match shaping {
        Shaping::None => fitness.to_vec(),
        Shaping::CentredRanks => centred_ranks(fitness),
    };
    let dim = directions.first().map_or(0, Vec::len);
    let mut grad = vec![0.0; dim];
    for (j, eps) in directions.iter().enumerate() {
        let w = weights[2 * j] - weights[2 * j + 1];
        for (g, &e) in grad.iter_mut().zip(eps) {
            *g += w * f64::from(e);
        }
    }
    let scale = 1.0 / (2.0 * directions.len() as f64 * sigma);
    grad.iter_mut().for_each(|g| *g *= scale);
    grad
}

/// Threads to use when none are asked for: the cores this process may run on.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// `f(0), ..., f(n - 1)` on `threads` worker threads that take the next index as they finish,
/// so slow candidates (long episodes) do not hold the others up. Results are in index order
/// and do not depend on `threads` as long as `f` is a pure function of its index.
pub fn evaluate_parallel<T: Send, F: Fn(usize) -> T + Sync>(n: usize, threads: usize, f: F) -> Vec<T> {
    let next = AtomicUsize::new(0);
    let mut results: Vec<Option<T>> = (0..n).map(|_| None).collect();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads.clamp(1, n.max(1)))
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            return done;
                        }
                        done.push((i, f(i)));
                    }
                })
            })
            .collect();
        for worker in workers {
            for (i, value) in worker.join().expect("a worker thread panicked") {
                results[i] = Some(value);
            }
        }
    });
    results.into_iter().map(|r| r.expect("every index is evaluated")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::Adam;
    use rand::SeedableRng;
    use tch::Tensor;

    /// f(x) = -|x - a|^2 has gradient -2 (x - a).
    fn quadratic(x: &[f32], a: &[f32]) -> f64 {
        -x.iter().zip(a).map(|(x, a)| f64::from(x - a).powi(2)).sum::<f64>()
    }

    #[test]
    fn gradient_estimate_on_a_quadratic() {
        let a = [1.0f32, -2.0, 0.5, 3.0, 0.0];
        let x = [0.0f32, 0.0, 1.0, 1.0, -1.0];
        let truth: Vec<f64> = x.iter().zip(&a).map(|(x, a)| -2.0 * f64::from(x - a)).collect();
        let sigma = 0.1;
        let dirs = directions(&mut StdRng::seed_from_u64(0), x.len(), 20_000);
        let fitness: Vec<f64> = (0..2 * dirs.len()).map(|i| quadratic(&candidate(&x, &dirs, sigma, i), &a)).collect();

        let raw = gradient(&dirs, &fitness, sigma, Shaping::None);
        let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
        let err: Vec<f64> = raw.iter().zip(&truth).map(|(g, t)| g - t).collect();
        // Standard error of each coordinate is about |grad| / sqrt(pairs) = 6.3 / 141.
        assert!(norm(&err) < 0.05 * norm(&truth), "raw estimate {raw:?} vs {truth:?}");

        let ranked = gradient(&dirs, &fitness, sigma, Shaping::CentredRanks);
        let cosine = ranked.iter().zip(&truth).map(|(g, t)| g * t).sum::<f64>() / (norm(&ranked) * norm(&truth));
        assert!(cosine > 0.95, "rank-shaped estimate points {cosine} away from the gradient");
    }

    #[test]
    fn centred_ranks_share_ties() {
        assert_eq!(centred_ranks(&[3.0, 1.0, 2.0]), [0.5, -0.5, 0.0]);
        assert_eq!(centred_ranks(&[5.0, 5.0, 1.0, 9.0, 5.0]), [0.0, 0.0, -0.5, 0.5, 0.0]);
        assert_eq!(centred_ranks(&[2.0]), [0.0]);
    }

    #[test]
    fn parallel_evaluation_keeps_index_order() {
        let f = |i: usize| (i * i) as f64;
        let want: Vec<f64> = (0..37).map(f).collect();
        for threads in [1, 3, 64] {
            assert_eq!(evaluate_parallel(37, threads, f), want);
        }
        assert!(evaluate_parallel(0, 2, f).is_empty());
        assert_eq!(evaluate_parallel(3, 2, |i| (i > 0).then_some(i)), [None, Some(1), Some(2)]);
    }

    #[test]
    fn es_with_adam_climbs_a_quadratic() {
        let a = [1.0f32, -2.0, 0.5];
        let theta = Tensor::zeros([3], (tch::Kind::Float, tch::Device::Cpu));
        let mut adam = Adam::new(&[theta.shallow_clone()], 0.9, 0.999, crate::optim::DEFAULT_EPS);
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..300 {
            let x = Vec::<f32>::try_from(&theta).unwrap();
            let dirs = directions(&mut rng, 3, 8);
            let fitness = evaluate_parallel(16, 2, |i| quadratic(&candidate(&x, &dirs, 0.05, i), &a));
            let ascent = gradient(&dirs, &fitness, 0.05, Shaping::CentredRanks);
            let descent: Vec<f32> = ascent.iter().map(|&g| -g as f32).collect();
            adam.step(&[theta.shallow_clone()], &[Tensor::from_slice(&descent)], 0.05);
        }
        let x = Vec::<f32>::try_from(&theta).unwrap();
        assert!(quadratic(&x, &a) > -0.01, "ES ended at {x:?}, optimum {a:?}");
    }
}
