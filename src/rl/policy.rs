//! The policy: a one-hidden-layer MLP from the 4 CartPole observations to 2 action logits, as a
//! pure function of explicit parameters (so the teacher's inner loop can train it like an image
//! learner), plus a plain-Rust copy of its forward pass for rollouts.
//!
//! No batch norm: a policy acts on one state at a time, where batch statistics are meaningless.

use rand::{rngs::StdRng, Rng};
use tch::{Device, Kind, Tensor};

use super::cartpole::{Obs, ACTIONS, OBS_DIM};
use crate::nn::{self, ParamSpec};

#[derive(Debug, Clone)]
pub struct Policy {
    specs: Vec<ParamSpec>,
}

impl Policy {
    pub fn new(hidden: i64) -> Policy {
        assert!(hidden > 0, "policy: hidden width {hidden} must be positive");
        let specs = [
            nn::wn_specs("fc1", &[hidden, OBS_DIM as i64], true),
            nn::wn_specs("fc2", &[ACTIONS as i64, hidden], true),
        ]
        .concat();
        Policy { specs }
    }

    pub fn init(&self, rng: &mut StdRng) -> Vec<Tensor> {
        nn::init_params(&self.specs, rng, Kind::Float, Device::Cpu)
    }

    /// Action logits `[N, 2]` for observations `[N, 4]`.
    pub fn forward(params: &[Tensor], obs: &Tensor) -> Tensor {
        let h = nn::leaky_relu(&nn::wn_linear(obs, &params[0], &params[1], Some(&params[2])));
        nn::wn_linear(&h, &params[3], &params[4], Some(&params[5]))
    }
}

/// The same network with its weight norm folded in, evaluated without torch: an episode is up
/// to 500 single-state forward passes, where torch's per-call overhead would dominate.
#[derive(Debug, Clone)]
pub struct FastPolicy {
    hidden: usize,
    /// `[hidden, 4]`, `[hidden]`, `[2, hidden]`, `[2]`, row-major.
    w1: Vec<f32>,
    b1: Vec<f32>,
    w2: Vec<f32>,
    b2: Vec<f32>,
}

impl FastPolicy {
    pub fn new(params: &[Tensor]) -> FastPolicy {
        let flat = |t: Tensor| Vec::<f32>::try_from(t.detach().to_kind(Kind::Float).reshape([-1])).expect("float");
        let w1 = flat(nn::weight_norm(&params[0], &params[1]));
        let w2 = flat(nn::weight_norm(&params[3], &params[4]));
        FastPolicy {
            hidden: w1.len() / OBS_DIM,
            w1,
            b1: flat(params[2].shallow_clone()),
            w2,
            b2: flat(params[5].shallow_clone()),
        }
    }

    pub fn logits(&self, obs: &Obs) -> [f32; ACTIONS] {
        let mut out = [self.b2[0], self.b2[1]];
        for j in 0..self.hidden {
            let row = &self.w1[j * OBS_DIM..(j + 1) * OBS_DIM];
            let pre = self.b1[j] + row.iter().zip(obs).map(|(w, &o)| w * o as f32).sum::<f32>();
            let h = if pre > 0.0 { pre } else { pre * nn::LEAKY_SLOPE as f32 };
            for (a, o) in out.iter_mut().enumerate() {
                *o += self.w2[a * self.hidden + j] * h;
            }
        }
        out
    }

    /// The most likely action; ties and NaN logits (a diverged policy) push left.
    pub fn greedy(&self, obs: &Obs) -> usize {
        let [left, right] = self.logits(obs);
        usize::from(right > left)
    }

    /// An action drawn from the softmax of the logits.
    pub fn sample(&self, obs: &Obs, rng: &mut StdRng) -> usize {
        let [left, right] = self.logits(obs);
        let p_right = 1.0 / (1.0 + f64::from(left - right).exp());
        usize::from(rng.gen::<f64>() < p_right)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn fast_forward_matches_torch() {
        let mut rng = StdRng::seed_from_u64(3);
        let policy = Policy::new(rng.gen_range(5..40));
        let params = policy.init(&mut rng);
        // Non-zero biases and gains away from the init so every parameter matters.
        let params: Vec<Tensor> = params
            .iter()
            .map(|p| p.detach() + nn::randn(&mut rng, &p.size(), Kind::Float, Device::Cpu) * 0.3)
            .collect();
        let fast = FastPolicy::new(&params);
        let obs: Vec<Obs> = (0..16).map(|_| std::array::from_fn(|_| rng.gen_range(-2.0..2.0))).collect();
        let batch = Tensor::from_slice(&obs.iter().flatten().map(|&v| v as f32).collect::<Vec<_>>()).view([16, 4]);
        let logits = Policy::forward(&params, &batch);
        for (i, o) in obs.iter().enumerate() {
            let got = fast.logits(o);
            for a in 0..2 {
                let want = logits.double_value(&[i as i64, a as i64]) as f32;
                assert!((got[a] - want).abs() < 1e-4 * (1.0 + want.abs()), "row {i}: {got:?} vs {want}");
            }
            assert_eq!(fast.greedy(o), usize::from(got[1] > got[0]));
        }
    }

    #[test]
    fn sampling_follows_the_softmax() {
        let mut rng = StdRng::seed_from_u64(0);
        let params = Policy::new(4).init(&mut rng);
        let fast = FastPolicy::new(&params);
        let obs = [0.3, -0.2, 0.05, 0.4];
        let [l, r] = fast.logits(&obs);
        let p_right = 1.0 / (1.0 + f64::from(l - r).exp());
        let n = 20_000;
        let rights = (0..n).filter(|_| fast.sample(&obs, &mut rng) == 1).count();
        assert!((rights as f64 / n as f64 - p_right).abs() < 0.02, "{rights}/{n} vs {p_right}");
    }
}
