//! Curricula: which synthetic samples (and, for a generator, which noise vectors) make up each
//! inner step's batch.
//!
//! Every synthetic sample has an id; its label is `id mod classes`, so labels are spread evenly
//! and (for learned curricula) each learned noise vector or learned image keeps its label.

use anyhow::{bail, Result};
use rand::{rngs::StdRng, seq::SliceRandom};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::nn;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum CurriculumKind {
    /// Fresh random noise every step; nothing learned.
    None,
    /// A learned pool of T*B noise vectors, shuffled each unroll and dealt out B per step: each
    /// vector is used once per unroll (the reference samples with replacement).
    AllShuffled,
    /// T learned batches of noise, used in a random order.
    BatchShuffled,
    /// T learned batches of noise, used in order: a learned curriculum.
    Full,
}

crate::text::display_as_flag!(CurriculumKind);

/// The sample ids of one inner step and the generator's noise for them (none when the images
/// themselves are learned).
#[derive(Debug)]
pub struct StepInput {
    pub z: Option<Tensor>,
    pub ids: Tensor,
}

#[derive(Debug)]
pub struct Curriculum {
    pub kind: CurriculumKind,
    pub steps: i64,
    pub batch: i64,
    /// Noise vector length; `None` when the teacher takes no noise (learned pixels).
    pub noise_dim: Option<i64>,
    /// Learned noise `[T*B, noise_dim]` (absent for `none` and without noise).
    pub z: Option<Tensor>,
}

impl Curriculum {
    pub fn new(
        kind: CurriculumKind,
        steps: i64,
        batch: i64,
        noise_dim: Option<i64>,
        rng: &mut StdRng,
        device: Device,
    ) -> Result<Curriculum> {
        if steps <= 0 || batch <= 0 || noise_dim.is_some_and(|d| d <= 0) {
            bail!("curriculum: inner_steps={steps}, batch_size={batch}, noise_dim={noise_dim:?} must be positive");
        }
        let z = noise_dim
            .filter(|_| kind != CurriculumKind::None)
            .map(|d| nn::randn(rng, &[steps * batch, d], Kind::Float, device).set_requires_grad(true));
        Ok(Curriculum { kind, steps, batch, noise_dim, z })
    }

    /// The inputs of every inner step for one meta-iteration (or one evaluated learner).
    pub fn plan(&self, rng: &mut StdRng, device: Device) -> Vec<StepInput> {
        let (t, b) = (self.steps, self.batch);
        let in_order = |s: i64| (s * b, Tensor::arange_start(s * b, (s + 1) * b, (Kind::Int64, device)));
        let from_ids = |ids: Tensor| StepInput { z: self.z.as_ref().map(|z| z.index_select(0, &ids)), ids };
        match self.kind {
            CurriculumKind::Full => (0..t)
                .map(|s| {
                    let (first, ids) = in_order(s);
                    StepInput { z: self.z.as_ref().map(|z| z.narrow(0, first, b)), ids }
                })
                .collect(),
            CurriculumKind::BatchShuffled => {
                let mut order: Vec<i64> = (0..t).collect();
                order.shuffle(rng);
                order.into_iter().map(|s| from_ids(in_order(s).1)).collect()
            }
            CurriculumKind::AllShuffled => {
                let mut pool: Vec<i64> = (0..t * b).collect();
                pool.shuffle(rng);
                pool.chunks(b as usize).map(|chunk| from_ids(Tensor::from_slice(chunk).to_device(device))).collect()
            }
            CurriculumKind::None => (0..t)
                .map(|s| StepInput {
                    z: self.noise_dim.map(|d| nn::randn(rng, &[b, d], Kind::Float, device)),
                    ids: in_order(s).1,
                })
                .collect(),
        }
    }
}

impl Clone for Curriculum {
    /// Shares the learned noise tensor rather than copying it.
    fn clone(&self) -> Curriculum {
        Curriculum { z: self.z.as_ref().map(Tensor::shallow_clone), ..*self }
    }
}

/// Label of each synthetic sample.
pub fn labels(ids: &Tensor, classes: i64) -> Tensor {
    ids.remainder(classes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn curriculum(kind: CurriculumKind) -> Curriculum {
        Curriculum::new(kind, 4, 10, Some(3), &mut StdRng::seed_from_u64(0), Device::Cpu).unwrap()
    }

    fn all_ids(plan: &[StepInput]) -> Vec<i64> {
        let mut ids: Vec<i64> = plan.iter().flat_map(|s| Vec::<i64>::try_from(&s.ids).unwrap()).collect();
        ids.sort();
        ids
    }

    #[test]
    fn full_uses_batches_in_order() {
        let c = curriculum(CurriculumKind::Full);
        let plan = c.plan(&mut StdRng::seed_from_u64(1), Device::Cpu);
        assert_eq!(plan.len(), 4);
        for (s, step) in plan.iter().enumerate() {
            assert!(step.z.as_ref().unwrap().equal(&c.z.as_ref().unwrap().narrow(0, s as i64 * 10, 10)));
            assert_eq!(step.ids.int64_value(&[0]), s as i64 * 10);
        }
    }

    #[test]
    fn shuffled_curricula_use_every_sample_once() {
        for kind in [CurriculumKind::AllShuffled, CurriculumKind::BatchShuffled] {
            let c = curriculum(kind);
            let a = c.plan(&mut StdRng::seed_from_u64(1), Device::Cpu);
            assert_eq!(all_ids(&a), (0..40).collect::<Vec<_>>(), "{kind:?}");
            let z = c.z.as_ref().unwrap();
            for step in &a {
                assert!(step.z.as_ref().unwrap().equal(&z.index_select(0, &step.ids)));
            }
            let b = c.plan(&mut StdRng::seed_from_u64(2), Device::Cpu);
            assert!(a.iter().zip(&b).any(|(x, y)| !x.ids.equal(&y.ids)), "{kind:?}: order should depend on the seed");
            // Batch-shuffled keeps each learned batch whole (one block of 10, in order); all-shuffled mixes them.
            let whole = |step: &StepInput| {
                let ids = Vec::<i64>::try_from(&step.ids).unwrap();
                ids[0] % 10 == 0 && ids.windows(2).all(|w| w[1] == w[0] + 1)
            };
            assert_eq!(a.iter().all(whole), kind == CurriculumKind::BatchShuffled, "{kind:?}");
        }
    }

    #[test]
    fn none_draws_fresh_noise_and_learns_nothing() {
        let c = curriculum(CurriculumKind::None);
        assert!(c.z.is_none());
        let a = c.plan(&mut StdRng::seed_from_u64(1), Device::Cpu);
        let b = c.plan(&mut StdRng::seed_from_u64(2), Device::Cpu);
        let (za, zb) = (a[0].z.as_ref().unwrap(), b[0].z.as_ref().unwrap());
        assert!(!za.equal(zb));
        assert_eq!(za.size(), [10, 3]);
    }

    #[test]
    fn without_noise_plans_only_ids() {
        for &kind in <CurriculumKind as clap::ValueEnum>::value_variants() {
            let c = Curriculum::new(kind, 4, 10, None, &mut StdRng::seed_from_u64(0), Device::Cpu).unwrap();
            assert!(c.z.is_none());
            let plan = c.plan(&mut StdRng::seed_from_u64(1), Device::Cpu);
            assert!(plan.iter().all(|s| s.z.is_none()), "{kind:?}");
            assert_eq!(all_ids(&plan), (0..40).collect::<Vec<_>>(), "{kind:?}");
        }
    }

    #[test]
    fn labels_are_spread_evenly() {
        let l = labels(&Tensor::arange(20, (Kind::Int64, Device::Cpu)), 10);
        assert_eq!(l.bincount(None::<Tensor>, 10), Tensor::full([10], 2, (Kind::Int64, Device::Cpu)));
    }
}
