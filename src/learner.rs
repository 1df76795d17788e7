//! Learners: the networks trained in the inner loop, as pure functions of an explicit parameter
//! list. Every layer is weight-normalised, and every hidden one followed by mean-only batch norm
//! (NAS cell networks: see `nas::network`).

use anyhow::{bail, Result};
use rand::{rngs::StdRng, Rng};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::nas::arch::Cell;
use crate::nas::network::{self as nas_network, NetConfig};
use crate::nn::{self, Init, Norm, ParamSpec};

/// Which learners meta-training and evaluation draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LearnerKind {
    /// The reference MNIST CNN: conv 64, conv 128, FC 256.
    #[value(alias = "base_fc")]
    #[serde(alias = "base_fc")]
    BaseFc,
    /// base-fc with widths drawn afresh each time: conv1 in [32,128), conv2 in [64,256), FC in [64,256).
    Random,
    /// A small MLP, input-256-128-10 (784-256-128-10 on MNIST), for fast CPU runs.
    Mlp,
    /// The reference CIFAR-10 CNN: conv 64, 128 (stride 2), 128, 256 (stride 2), 256, global
    /// average pool, FC.
    CifarCnn,
    /// The CIFAR CNN with widths drawn afresh as the reference draws them: conv 1 in [32,128),
    /// one width in [64,256) for convs 2 and 3, another in [64,256) for convs 4 and 5.
    CifarRandom,
    /// A random NAS cell architecture each time, stacked as `gtn nas` stacks it by default, so
    /// the teacher's data teaches the whole search space.
    // Stacked as `NetConfig::CPU`.
    NasRandom,
}

crate::text::display_as_flag!(LearnerKind);

impl LearnerKind {
    /// Whether some batch-norm layer averages over the batch alone (a fully connected layer's):
    /// over a batch of one it outputs its bias whatever the input, so the learner's outputs would
    /// not depend on its inputs. The CIFAR learners' average over positions too and pool after.
    pub fn normalises_over_the_batch_alone(self) -> bool {
        match self {
            LearnerKind::BaseFc | LearnerKind::Random | LearnerKind::Mlp => true,
            LearnerKind::NasRandom => crate::nas::network::NetConfig::CPU.head.normalises_over_the_batch_alone(),
            LearnerKind::CifarCnn | LearnerKind::CifarRandom => false,
        }
    }
}

/// Which statistics a trained learner's batch-norm layers use when it is scored (the meta-loss,
/// intermediate losses, test accuracy). Training always uses each training batch's own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum BnEval {
    /// The scored batch's own: the meta-loss batch, each test chunk of up to 1,000 images.
    #[default]
    Batch,
    /// Those of the learner's last training batch, at the weights it trained with (before its
    /// first step: mean 0, variance 1), as the reference scores its learners. A prediction then
    /// depends on its image alone, and the meta-gradient sees any mismatch between synthetic and
    /// real activations' means.
    // The reference scores in eval mode with running statistics updated with momentum 0 (its
    // `fBatchNorm`'s `lerp` all the way to each batch's). It normalises full batch norm by the
    // unbiased variance; gtn, in training and so in scoring, by the biased one.
    Train,
}

/// Widths and strides of the reference CIFAR-10 learner's convolutions.
pub const CIFAR_WIDTHS: [i64; 5] = [64, 128, 128, 256, 256];
pub const CIFAR_STRIDES: [i64; 5] = [1, 2, 1, 2, 1];

/// A concrete architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Cnn { conv1: i64, conv2: i64, fc: i64 },
    Mlp { hidden1: i64, hidden2: i64 },
    CifarCnn { widths: [i64; 5] },
    Nas { cell: Cell, net: NetConfig },
}

impl LearnerKind {
    pub fn sample(self, rng: &mut StdRng) -> Arch {
        match self {
            LearnerKind::BaseFc => Arch::Cnn { conv1: 64, conv2: 128, fc: 256 },
            LearnerKind::Random => {
                Arch::Cnn { conv1: rng.gen_range(32..128), conv2: rng.gen_range(64..256), fc: rng.gen_range(64..256) }
            }
            LearnerKind::Mlp => Arch::Mlp { hidden1: 256, hidden2: 128 },
            LearnerKind::CifarCnn => Arch::CifarCnn { widths: CIFAR_WIDTHS },
            LearnerKind::CifarRandom => {
                let (conv1, pair1, pair2) = (rng.gen_range(32..128), rng.gen_range(64..256), rng.gen_range(64..256));
                Arch::CifarCnn { widths: [conv1, pair1, pair1, pair2, pair2] }
            }
            LearnerKind::NasRandom => Arch::Nas { cell: Cell::sample(rng), net: NetConfig::CPU },
        }
    }
}

#[derive(Debug, Clone)]
pub struct Learner {
    pub arch: Arch,
    pub image: [i64; 3],
    pub classes: i64,
    pub bn_eval: BnEval,
    specs: Vec<ParamSpec>,
}

fn bn_bias(name: &str, n: i64) -> ParamSpec {
    ParamSpec::new(format!("{name}.bias"), &[n], Init::Zeros)
}

impl Learner {
    /// Checks the shapes once; `forward` then trusts them.
    pub fn new(arch: Arch, image: [i64; 3], classes: i64) -> Result<Learner> {
        let [c, h, w] = image;
        if c <= 0 || h <= 0 || w <= 0 || classes <= 0 {
            bail!("learner: image shape {image:?} and classes {classes} must be positive");
        }
        // Hidden layers feed mean-only batch norm, which has its own bias.
        let specs = match arch {
            Arch::Cnn { conv1, conv2, fc } => {
                if conv1 <= 0 || conv2 <= 0 || fc <= 0 {
                    bail!("learner: widths conv1={conv1} conv2={conv2} fc={fc} must be positive");
                }
                let pooled = |s: i64| (s + 1) / 2;
                let flat = conv2 * pooled(pooled(h)) * pooled(pooled(w));
                [
                    nn::wn_specs("conv1", &[conv1, c, 3, 3], false),
                    vec![bn_bias("bn1", conv1)],
                    nn::wn_specs("conv2", &[conv2, conv1, 3, 3], false),
                    vec![bn_bias("bn2", conv2)],
                    nn::wn_specs("fc1", &[fc, flat], false),
                    vec![bn_bias("bn3", fc)],
                    nn::wn_specs("fc2", &[classes, fc], true),
                ]
                .concat()
            }
            Arch::CifarCnn { widths } => {
                if widths.iter().any(|&w| w <= 0) {
                    bail!("learner: CIFAR widths {widths:?} must be positive");
                }
                let mut specs = Vec::new();
                let mut c_in = c;
                for (i, &w) in widths.iter().enumerate() {
                    specs.extend(nn::wn_specs(&format!("conv{}", i + 1), &[w, c_in, 3, 3], false));
                    specs.push(bn_bias(&format!("bn{}", i + 1), w));
                    c_in = w;
                }
                specs.extend(nn::wn_specs("fc", &[classes, c_in], true));
                specs
            }
            Arch::Mlp { hidden1, hidden2 } => {
                if hidden1 <= 0 || hidden2 <= 0 {
                    bail!("learner: widths hidden1={hidden1} hidden2={hidden2} must be positive");
                }
                [
                    nn::wn_specs("fc1", &[hidden1, c * h * w], false),
                    vec![bn_bias("bn1", hidden1)],
                    nn::wn_specs("fc2", &[hidden2, hidden1], false),
                    vec![bn_bias("bn2", hidden2)],
                    nn::wn_specs("fc3", &[classes, hidden2], true),
                ]
                .concat()
            }
            Arch::Nas { cell, net } => nas_network::specs(&cell, &net, image, classes)?.0,
        };
        Ok(Learner { arch, image, classes, bn_eval: BnEval::Batch, specs })
    }

    /// The same learner, scored with `bn_eval`'s statistics.
    pub fn scored_with(self, bn_eval: BnEval) -> Learner {
        Learner { bn_eval, ..self }
    }

    pub fn specs(&self) -> &[ParamSpec] {
        &self.specs
    }

    /// Fresh Kaiming-normal parameters (leaves requiring gradients).
    pub fn init(&self, rng: &mut StdRng, device: Device) -> Vec<Tensor> {
        nn::init_params(&self.specs, rng, Kind::Float, device)
    }

    /// `x`: `[N, C, H, W]` -> logits `[N, classes]`, batch norm on `x`'s own statistics.
    pub fn forward(&self, params: &[Tensor], x: &Tensor) -> Tensor {
        self.forward_with(params, x, &mut Norm::Batch)
    }

    /// A training step's forward: the logits and, when the learner is scored with training
    /// statistics ([`BnEval::Train`]), this batch's (empty otherwise).
    pub fn train_forward(&self, params: &[Tensor], x: &Tensor) -> (Tensor, Vec<Tensor>) {
        match self.bn_eval {
            BnEval::Batch => (self.forward(params, x), Vec::new()),
            BnEval::Train => Norm::recorded(|norm| self.forward_with(params, x, norm)),
        }
    }

    /// Logits of a trained learner as [`BnEval`] says: `stats` are its last training batch's
    /// from [`Learner::train_forward`] (empty before its first step).
    pub fn score(&self, params: &[Tensor], stats: &[Tensor], x: &Tensor) -> Tensor {
        match self.bn_eval {
            BnEval::Batch => self.forward(params, x),
            BnEval::Train if stats.is_empty() => self.forward_with(params, x, &mut Norm::Init),
            BnEval::Train => Norm::given(stats, |norm| self.forward_with(params, x, norm)),
        }
    }

    fn forward_with(&self, params: &[Tensor], x: &Tensor, norm: &mut Norm) -> Tensor {
        assert_eq!(params.len(), self.specs.len(), "learner: wrong number of parameters");
        let [c, h, w] = self.image;
        assert_eq!(&x.size()[1..], &self.image, "learner: input {:?}, expected [N, {c}, {h}, {w}]", x.size());
        let p = params;
        let mut act = |y: Tensor, bias: &Tensor| norm.bn_leaky_relu(&y, bias);
        match self.arch {
            Arch::Cnn { .. } => {
                let y = act(nn::wn_conv3x3_max_pool(x, &p[0], &p[1]), &p[2]);
                // Flattened pixel by pixel (height, width, channel): the convolutions run
                // channels-last, where that order is a view and channel by channel a copy, forward
                // and backward. A fresh learner's weights are i.i.d., so the order is only a
                // convention of the linear layer's columns.
                let y = act(nn::wn_conv3x3_max_pool(&y, &p[3], &p[4]), &p[5]);
                let y = y.permute([0, 2, 3, 1]).flatten(1, -1);
                let y = act(nn::wn_linear(&y, &p[6], &p[7], None), &p[8]);
                nn::wn_linear(&y, &p[9], &p[10], Some(&p[11]))
            }
            Arch::CifarCnn { .. } => {
                let mut y = x.shallow_clone();
                for (layer, stride) in p.chunks_exact(3).zip(CIFAR_STRIDES) {
                    y = act(nn::wn_conv3x3(&y, &layer[0], &layer[1], None, stride), &layer[2]);
                }
                let pooled = y.mean_dim([2i64, 3].as_slice(), false, None::<Kind>);
                nn::wn_linear(&pooled, &p[15], &p[16], Some(&p[17]))
            }
            Arch::Mlp { .. } => {
                let y = act(nn::wn_linear(&x.flatten(1, -1), &p[0], &p[1], None), &p[2]);
                let y = act(nn::wn_linear(&y, &p[3], &p[4], None), &p[5]);
                nn::wn_linear(&y, &p[6], &p[7], Some(&p[8]))
            }
            Arch::Nas { cell, net } => nas_network::forward(&cell, &net, p, x, norm),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::gradcheck::{leaf, max_rel_error, project};
    use rand::SeedableRng;

    #[test]
    fn shapes_for_every_kind() {
        let mut rng = StdRng::seed_from_u64(0);
        for &kind in <LearnerKind as clap::ValueEnum>::value_variants() {
            let l = Learner::new(kind.sample(&mut rng), [1, 28, 28], 10).unwrap();
            let p = l.init(&mut rng, Device::Cpu);
            let x = leaf(&[3, 1, 28, 28], 1).to_kind(Kind::Float);
            assert_eq!(l.forward(&p, &x).size(), [3, 10], "{kind:?}");
        }
        let cifar = Learner::new(LearnerKind::CifarCnn.sample(&mut rng), [3, 32, 32], 10).unwrap();
        let p = cifar.init(&mut rng, Device::Cpu);
        assert_eq!(cifar.forward(&p, &leaf(&[2, 3, 32, 32], 1).to_kind(Kind::Float)).size(), [2, 10]);
        assert_eq!(cifar.specs().last().unwrap().shape, [10]);
        assert_eq!(cifar.specs()[15].shape, [10, 256]);
        let base = Learner::new(LearnerKind::BaseFc.sample(&mut rng), [1, 28, 28], 10).unwrap();
        assert_eq!(base.specs()[6].shape, [256, 128 * 7 * 7]);
    }

    /// Scored with its training batch's statistics, a learner predicts each image on its own, and
    /// given the scored batch's own statistics it predicts as batch mode does (mean-only and full
    /// batch norm: the NAS networks).
    #[test]
    fn scoring_with_training_statistics() {
        let mut rng = StdRng::seed_from_u64(4);
        for kind in [LearnerKind::BaseFc, LearnerKind::Mlp, LearnerKind::CifarCnn, LearnerKind::NasRandom] {
            let l = Learner::new(kind.sample(&mut rng), [1, 28, 28], 10).unwrap().scored_with(BnEval::Train);
            let p = l.init(&mut rng, Device::Cpu);
            let x = leaf(&[6, 1, 28, 28], 5).to_kind(Kind::Float);
            let (logits, stats) = l.train_forward(&p, &x);
            assert!(!stats.is_empty(), "{kind:?}: no statistics recorded");
            let batch = l.forward(&p, &x);
            assert!(logits.allclose(&batch, 1e-5, 1e-5, false), "{kind:?}: recording changed the forward");
            assert!(l.score(&p, &stats, &x).allclose(&batch, 1e-4, 1e-4, false), "{kind:?}: own statistics");
            let other = leaf(&[6, 1, 28, 28], 6).to_kind(Kind::Float);
            // With the recorded statistics, and before any (mean 0, variance 1).
            for stats in [&stats[..], &[]] {
                let together = l.score(&p, stats, &other);
                let alone =
                    Tensor::cat(&(0..6).map(|i| l.score(&p, stats, &other.narrow(0, i, 1))).collect::<Vec<_>>(), 0);
                let n = stats.len();
                assert!(
                    together.allclose(&alone, 1e-4, 1e-4, false),
                    "{kind:?} {n}: a prediction depends on its batch"
                );
                assert!(
                    !together.allclose(&l.forward(&p, &other), 1e-3, 1e-3, false),
                    "{kind:?} {n}: batch statistics"
                );
            }
        }
        let batch_scored = Learner::new(LearnerKind::Mlp.sample(&mut rng), [1, 28, 28], 10).unwrap();
        let p = batch_scored.init(&mut rng, Device::Cpu);
        assert!(batch_scored.train_forward(&p, &leaf(&[2, 1, 28, 28], 1).to_kind(Kind::Float)).1.is_empty());
    }

    #[test]
    fn random_widths_stay_in_range_and_vary() {
        let mut rng = StdRng::seed_from_u64(5);
        let archs: Vec<Arch> = (0..50).map(|_| LearnerKind::Random.sample(&mut rng)).collect();
        for a in &archs {
            let Arch::Cnn { conv1, conv2, fc } = *a else { panic!("random learners are CNNs") };
            assert!((32..128).contains(&conv1) && (64..256).contains(&conv2) && (64..256).contains(&fc));
        }
        assert!(archs.iter().any(|a| *a != archs[0]));
        // The reference's random CIFAR learner: convs 2 and 3 share a width, as do 4 and 5.
        let archs: Vec<Arch> = (0..50).map(|_| LearnerKind::CifarRandom.sample(&mut rng)).collect();
        for a in &archs {
            let Arch::CifarCnn { widths: [c1, c2, c3, c4, c5] } = *a else { panic!("CIFAR CNNs") };
            assert!((32..128).contains(&c1) && (64..256).contains(&c2) && (64..256).contains(&c4), "{a:?}");
            assert_eq!((c2, c4), (c3, c5), "{a:?}");
        }
        assert!(archs.iter().any(|a| *a != archs[0]));
    }

    #[test]
    fn rejects_bad_widths() {
        let err = Learner::new(Arch::Cnn { conv1: 0, conv2: 4, fc: 4 }, [1, 28, 28], 10).unwrap_err();
        assert!(err.to_string().contains("conv1=0"));
        assert!(Learner::new(Arch::Mlp { hidden1: 4, hidden2: 4 }, [0, 28, 28], 10).is_err());
    }

    #[test]
    fn gradcheck_learners() {
        for arch in [
            Arch::Cnn { conv1: 3, conv2: 4, fc: 5 },
            Arch::Mlp { hidden1: 5, hidden2: 4 },
            Arch::CifarCnn { widths: [2, 3, 2, 3, 2] },
        ] {
            let l = Learner::new(arch, [1, 8, 8], 3).unwrap();
            let mut rng = StdRng::seed_from_u64(2);
            let mut inputs: Vec<Tensor> = nn::init_params(l.specs(), &mut rng, Kind::Double, Device::Cpu);
            inputs.push(leaf(&[4, 1, 8, 8], 3));
            let f = |p: &[Tensor]| project(&l.forward(&p[..p.len() - 1], &p[p.len() - 1]));
            let err = max_rel_error(&inputs, &f, 6);
            assert!(err < 1e-5, "{arch:?}: finite-difference relative error {err:e}");
        }
    }
}
