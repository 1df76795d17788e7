//! The differentiable inner optimiser: SGD with momentum whose learning rate and momentum are
//! learned per step, and the unroll that trains a learner with it.
//!
//! With `create_graph` the whole unroll stays in the autograd graph, so a loss on the final
//! parameters differentiates (exactly, through second derivatives) into whatever produced the
//! training batches and into the per-step learning rates and momenta.

use std::ops::Range;

use tch::{Kind, Tensor};

use crate::learner::Learner;
use crate::nn;

/// One update `m = mu * m + g; theta = theta - lr * m`, as a pure function of its inputs.
pub fn sgd_momentum_step(
    params: &[Tensor],
    grads: &[Tensor],
    momentum: &[Tensor],
    lr: &Tensor,
    mu: &Tensor,
) -> (Vec<Tensor>, Vec<Tensor>) {
    let counts = [params.len(), grads.len(), momentum.len()];
    assert!(counts.iter().all(|&n| n == counts[0]), "inner step: parameters, gradients, momenta: {counts:?}");
    params.iter().zip(momentum).zip(grads).map(|((p, m), g)| crate::custom::momentum_step(p, m, g, lr, mu)).unzip()
}

/// A learner in training: its parameters, the optimiser's momentum buffers, and the batch-norm
/// statistics of its last training batch when it is scored with them
/// ([`crate::learner::BnEval::Train`]; empty otherwise, and before the first step).
#[derive(Debug)]
pub struct LearnerState {
    pub params: Vec<Tensor>,
    pub momentum: Vec<Tensor>,
    pub stats: Vec<Tensor>,
}

impl LearnerState {
    /// Fresh parameters with zero momentum.
    pub fn new(params: Vec<Tensor>) -> LearnerState {
        let momentum = params.iter().map(Tensor::zeros_like).collect();
        LearnerState { params, momentum, stats: Vec::new() }
    }

    /// A copy cut from any graph, as leaves that require gradients (the start of a recomputed
    /// block, or a step of an evaluation run); the statistics are constants.
    pub fn detached_leaves(&self) -> LearnerState {
        let leaf = |t: &Tensor| t.detach().set_requires_grad(true);
        LearnerState {
            params: self.params.iter().map(leaf).collect(),
            momentum: self.momentum.iter().map(leaf).collect(),
            stats: self.stats.iter().map(Tensor::detach).collect(),
        }
    }

    /// Another handle on the same tensors, graph included.
    pub fn shallow_clone(&self) -> LearnerState {
        let shallow = |ts: &[Tensor]| ts.iter().map(Tensor::shallow_clone).collect();
        LearnerState { params: shallow(&self.params), momentum: shallow(&self.momentum), stats: shallow(&self.stats) }
    }

    /// The learner's logits on `x` at this state, scored with the batch-norm statistics it was
    /// built to score with (its last training batch's, recorded here, or `x`'s own).
    pub fn score(&self, learner: &Learner, x: &Tensor) -> Tensor {
        learner.score(&self.params, &self.stats, x)
    }
}

/// Trains `state` through inner steps `steps` (indices into the `[T]` learning rates and
/// momenta); `batch(t)` gives step t's inputs and targets (int64 labels or probabilities).
/// `after_step(t, state)` sees the learner after each step (for intermediate losses and
/// learning curves). Without `create_graph` every step is cut from the graph, which keeps memory
/// flat.
pub fn unroll(
    learner: &Learner,
    state: LearnerState,
    schedule: (&Tensor, &Tensor),
    steps: Range<usize>,
    create_graph: bool,
    batch: impl FnMut(usize) -> (Tensor, Tensor),
    after_step: impl FnMut(usize, &LearnerState),
) -> LearnerState {
    unroll_with(|p, x| learner.train_forward(p, x), state, schedule, steps, create_graph, batch, after_step)
}

/// [`unroll`] for any network given as `forward(params, inputs) -> (logits, batch statistics
/// to keep)` (e.g. the reinforcement-learning policy, which is not a [`Learner`] and keeps none).
pub fn unroll_with(
    forward: impl Fn(&[Tensor], &Tensor) -> (Tensor, Vec<Tensor>),
    mut state: LearnerState,
    (lrs, momenta): (&Tensor, &Tensor),
    steps: Range<usize>,
    create_graph: bool,
    mut batch: impl FnMut(usize) -> (Tensor, Tensor),
    mut after_step: impl FnMut(usize, &LearnerState),
) -> LearnerState {
    for t in steps {
        let (x, target) = batch(t);
        let (logits, stats) = forward(&state.params, &x);
        let loss = nn::cross_entropy(&logits, &target);
        let grads = nn::grads(&[loss], &state.params, create_graph, create_graph);
        let (lr, mu) = (lrs.get(t as i64), momenta.get(t as i64));
        let (params, momentum) = sgd_momentum_step(&state.params, &grads, &state.momentum, &lr, &mu);
        state = LearnerState { params, momentum, stats };
        if !create_graph {
            state = state.detached_leaves();
        }
        after_step(t, &state);
    }
    state
}

/// Constant learning rate and momentum over `steps` steps (for real-data training).
pub fn constant_schedule(steps: usize, lr: f64, mu: f64, device: tch::Device) -> (Tensor, Tensor) {
    let s = steps as i64;
    (Tensor::full([s], lr, (Kind::Float, device)), Tensor::full([s], mu, (Kind::Float, device)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::learner::{Arch, BnEval};
    use crate::nn::gradcheck::{leaf, max_rel_error};
    use rand::{rngs::StdRng, SeedableRng};
    use tch::Device;

    #[test]
    fn step_matches_hand_computation() {
        let p = [Tensor::from_slice(&[1.0f64, 2.0])];
        let g = [Tensor::from_slice(&[0.5f64, -1.0])];
        let m = [Tensor::from_slice(&[0.2f64, 0.2])];
        let (p1, m1) = sgd_momentum_step(&p, &g, &m, &Tensor::from(0.1f64), &Tensor::from(0.5f64));
        assert_eq!(Vec::<f64>::try_from(&m1[0]).unwrap(), [0.6, -0.9]);
        let p1 = Vec::<f64>::try_from(&p1[0]).unwrap();
        assert!((p1[0] - 0.94).abs() < 1e-12 && (p1[1] - 2.09).abs() < 1e-12);
    }

    #[test]
    #[should_panic(expected = "backward: root 0 of 1 has no graph")]
    fn an_unroll_without_a_graph_is_a_panic_not_a_crash() {
        let learner = Learner::new(Arch::Mlp { hidden1: 5, hidden2: 4 }, [1, 28, 28], 10).unwrap();
        let params = learner.init(&mut StdRng::seed_from_u64(0), Device::Cpu);
        let schedule = constant_schedule(1, 0.1, 0.5, Device::Cpu);
        let batch = |_| (Tensor::zeros([2, 1, 28, 28], (Kind::Float, Device::Cpu)), Tensor::from_slice(&[0i64, 1]));
        tch::no_grad(|| {
            unroll(&learner, LearnerState::new(params), (&schedule.0, &schedule.1), 0..1, true, batch, |_, _| {})
        });
    }

    /// The meta-gradient through a 3-step unroll w.r.t. the training images, the learning
    /// rates and the momenta matches finite differences: second-order terms are exact, and so is
    /// the path through the last training batch's statistics when the learner is scored with them
    /// (mean-only batch norm here; full batch norm's mean and variance: `nas::network`'s tests).
    #[test]
    fn gradcheck_through_unroll() {
        for bn_eval in [BnEval::Batch, BnEval::Train] {
            gradcheck_unroll_scored_with(bn_eval);
        }
    }

    fn gradcheck_unroll_scored_with(bn_eval: BnEval) {
        let learner = Learner::new(Arch::Mlp { hidden1: 5, hidden2: 4 }, [1, 4, 4], 3).unwrap().scored_with(bn_eval);
        let theta0: Vec<Tensor> =
            nn::init_params(learner.specs(), &mut StdRng::seed_from_u64(0), Kind::Double, Device::Cpu)
                .into_iter()
                .map(|t| t.detach())
                .collect();
        let labels = Tensor::from_slice(&[0i64, 1, 2, 0, 1, 2]);
        let real = leaf(&[6, 1, 4, 4], 9).detach();
        let inputs = [
            leaf(&[3, 6, 1, 4, 4], 1),
            (leaf(&[3], 2) * 0.1 - 1.5).detach().set_requires_grad(true),
            (leaf(&[3], 3) * 0.1 - 0.7).detach().set_requires_grad(true),
        ];
        let f = |p: &[Tensor]| {
            let start: Vec<Tensor> = theta0.iter().map(|t| t.copy().set_requires_grad(true)).collect();
            let (images, log_lr, log_mu) = (&p[0], &p[1], &p[2]);
            let trained = unroll(
                &learner,
                LearnerState::new(start),
                (&log_lr.exp(), &log_mu.exp()),
                0..3,
                true,
                |t| (images.get(t as i64), labels.copy()),
                |_, _| {},
            );
            assert_eq!(trained.stats.is_empty(), bn_eval == BnEval::Batch);
            nn::cross_entropy(&trained.score(&learner, &real), &labels)
        };
        let err = max_rel_error(&inputs, &f, 10);
        assert!(err < 1e-5, "{bn_eval:?}: unroll meta-gradient finite-difference relative error {err:e}");
    }

    #[test]
    fn detached_unroll_trains_without_a_graph() {
        let learner = Learner::new(Arch::Mlp { hidden1: 8, hidden2: 8 }, [1, 4, 4], 2).unwrap();
        let params = learner.init(&mut StdRng::seed_from_u64(0), Device::Cpu);
        let x = leaf(&[16, 1, 4, 4], 1).to_kind(Kind::Float);
        let y = x.sum_dim_intlist([1i64, 2, 3].as_slice(), false, None::<Kind>).gt(0.0).to_kind(Kind::Int64);
        let loss = |p: &[Tensor]| f64::try_from(nn::cross_entropy(&learner.forward(p, &x), &y)).unwrap();
        let before = loss(&params);
        let (lrs, mus) = constant_schedule(20, 0.1, 0.5, Device::Cpu);
        let trained = unroll(
            &learner,
            LearnerState::new(params),
            (&lrs, &mus),
            0..20,
            false,
            |_| (x.copy(), y.copy()),
            |_, _| {},
        )
        .params;
        assert!(trained.iter().all(|p| p.is_leaf()));
        assert!(loss(&trained) < before * 0.5, "training did not lower the loss");
    }
}
