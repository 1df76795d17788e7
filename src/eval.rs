//! Evaluation: train fresh learners for a few steps (on the teacher's data, or on real data for
//! the baseline) and report their accuracy on the real test set.

use anyhow::{bail, Result};
use serde::Serialize;
use tch::Device;

use crate::data::{BatchSampler, Dataset, Split};
use crate::inner::{self, LearnerState};
use crate::learner::{Learner, LearnerKind};
use crate::meta::iteration_rng;
use crate::nn;
use crate::teacher::Teacher;

/// Test images per forward pass; mean-only batch norm uses each chunk's statistics.
pub const EVAL_CHUNK: i64 = 1000;

/// Accuracy of several independently trained learners.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub learner: LearnerKind,
    pub learners: usize,
    pub steps: usize,
    pub test_accuracy_mean: f64,
    pub test_accuracy_std: f64,
    pub test_accuracy_min: f64,
    pub test_accuracy_max: f64,
    pub test_accuracies: Vec<f64>,
}

impl EvalReport {
    pub fn from_accuracies(learner: LearnerKind, steps: usize, accs: Vec<f64>) -> EvalReport {
        let n = accs.len() as f64;
        let mean = accs.iter().sum::<f64>() / n;
        let var = if accs.len() > 1 { accs.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
        EvalReport {
            learner,
            learners: accs.len(),
            steps,
            test_accuracy_mean: mean,
            test_accuracy_std: var.sqrt(),
            test_accuracy_min: accs.iter().copied().fold(f64::INFINITY, f64::min),
            test_accuracy_max: accs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            test_accuracies: accs,
        }
    }

    pub fn table(&self) -> String {
        format!(
            "| learner | learners | steps | test accuracy mean | std | min | max |\n|---|---|---|---|---|---|---|\n| {:?} | {} | {} | {:.2}% | {:.2}% | {:.2}% | {:.2}% |",
            self.learner,
            self.learners,
            self.steps,
            100.0 * self.test_accuracy_mean,
            100.0 * self.test_accuracy_std,
            100.0 * self.test_accuracy_min,
            100.0 * self.test_accuracy_max
        )
    }
}

pub fn test_accuracy(learner: &Learner, params: &[tch::Tensor], split: &Split) -> f64 {
    nn::accuracy(&inner::predict(learner, params, &split.images, EVAL_CHUNK), &split.labels)
}

/// Seed of evaluated learner `k`; far from meta-training's iteration seeds.
fn learner_seed(seed: u64, k: usize) -> rand::rngs::StdRng {
    iteration_rng(seed ^ 0x005E_ED0F_E7A1, k)
}

/// Trains `learners` fresh learners of `kind` for `steps` steps on the teacher's data.
pub fn evaluate_teacher(
    teacher: &Teacher,
    data: &Dataset,
    kind: LearnerKind,
    learners: usize,
    steps: usize,
    seed: u64,
) -> Result<EvalReport> {
    let t = teacher.config.inner_steps;
    if steps == 0 || steps > t {
        bail!("--steps {steps}: the teacher was trained for {t} inner steps; expected 1..={t}");
    }
    let device = data.test.images.device();
    fresh_learners(data, kind, learners, steps, seed, |learner, state, rng, _| {
        let plan = teacher.curriculum.plan(rng, device);
        teacher.teach(learner, state, &plan, 0..steps, false, |_, _| {})
    })
}

/// The same learners trained `steps` steps of `batch` real training images with SGD + momentum.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_real(
    data: &Dataset,
    kind: LearnerKind,
    learners: usize,
    steps: usize,
    batch: usize,
    lr: f64,
    momentum: f64,
    seed: u64,
) -> Result<EvalReport> {
    let device: Device = data.test.images.device();
    let (lrs, momenta) = inner::constant_schedule(steps, lr, momentum, device);
    fresh_learners(data, kind, learners, steps, seed, |learner, state, _, k| {
        let mut sampler = BatchSampler::new(data.train.len(), seed.wrapping_add(k as u64));
        let batches = |_| data.train.batch(&sampler.indices(batch, device));
        inner::unroll(learner, state, (&lrs, &momenta), 0..steps, false, batches, |_, _| {})
    })
}

/// Draws `learners` fresh learners of `kind` (learner `k` from its own seeded stream, so the
/// teacher and the real-data baseline start from the same weights), trains each with
/// `train(learner, state, rng, k)` and reports their test accuracy.
fn fresh_learners(
    data: &Dataset,
    kind: LearnerKind,
    learners: usize,
    steps: usize,
    seed: u64,
    mut train: impl FnMut(&Learner, LearnerState, &mut rand::rngs::StdRng, usize) -> LearnerState,
) -> Result<EvalReport> {
    let (image, classes) = data.name.shape();
    let device = data.test.images.device();
    let accs = (0..learners)
        .map(|k| {
            let mut rng = learner_seed(seed, k);
            let learner = Learner::new(kind.sample(&mut rng), image, classes)?;
            let init = learner.init(&mut rng, device);
            let trained = train(&learner, LearnerState::new(init), &mut rng, k);
            Ok(test_accuracy(&learner, &trained.params, &data.test))
        })
        .collect::<Result<Vec<f64>>>()?;
    Ok(EvalReport::from_accuracies(kind, steps, accs))
}
