//! The teacher: everything meta-training learns (generator weights and curriculum noise, or the
//! synthetic pixels themselves; the inner optimiser's per-step learning rates and momenta;
//! optional soft labels), and how it trains a fresh learner.

use std::ops::Range;

use anyhow::Result;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::config::Config;
use crate::curriculum::{self, Curriculum, StepInput};
use crate::generator::Generator;
use crate::inner::{self, LearnerState};
use crate::learner::Learner;
use crate::nn;

/// Scale of the initial soft-label logits: softmax gives 0.943 to the sample's own class (0.006
/// to each other of 10), slightly smoothed labels from the start. (The reference learns the
/// one-hot targets themselves; logits large enough to start at one-hot would saturate the softmax,
/// and their gradient would vanish.)
const SOFT_LABEL_INIT: f64 = 5.0;

/// What produces the synthetic images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TeacherKind {
    /// A generator network turns noise and a label into each image (GTN).
    #[default]
    Generator,
    /// Every synthetic image is learned pixel by pixel (dataset distillation).
    Pixels,
}

crate::text::display_as_flag!(TeacherKind);

#[derive(Debug)]
pub enum Source {
    Generator {
        net: Generator,
        params: Vec<Tensor>,
    },
    /// Learned images `[T*B, C, H, W]`, indexed by sample id.
    Pixels(Tensor),
}

impl Source {
    fn named_params(&self) -> Vec<(String, Tensor)> {
        match self {
            Source::Generator { net, params } => net
                .specs()
                .iter()
                .zip(params)
                .map(|(s, p)| (format!("generator.{}", s.name), p.shallow_clone()))
                .collect(),
            Source::Pixels(pixels) => vec![("pixels".into(), pixels.shallow_clone())],
        }
    }

    /// The same source over other tensors; returns the ones it did not take.
    fn with_params<'a>(&self, params: &'a [Tensor]) -> (Source, &'a [Tensor]) {
        match self {
            Source::Generator { net, params: own } => {
                let (mine, rest) = params.split_at(own.len());
                (Source::Generator { net: net.clone(), params: mine.iter().map(Tensor::shallow_clone).collect() }, rest)
            }
            Source::Pixels(_) => (Source::Pixels(params[0].shallow_clone()), &params[1..]),
        }
    }
}

#[derive(Debug)]
pub struct Teacher {
    pub config: Config,
    pub source: Source,
    pub classes: i64,
    pub curriculum: Curriculum,
    /// Per inner step, log of the learning rate and of the momentum: `[T]` each.
    pub log_lr: Tensor,
    pub log_momentum: Tensor,
    /// Learned label logits per synthetic sample `[T*B, classes]`, when `soft_labels`.
    pub label_logits: Option<Tensor>,
}

impl Teacher {
    pub fn new(config: &Config, rng: &mut StdRng, device: Device) -> Result<Teacher> {
        config.validate()?;
        let (image, classes) = config.dataset.shape();
        let (t, b) = (config.inner_steps as i64, config.batch_size as i64);
        let (source, noise_dim) = match config.teacher {
            TeacherKind::Generator => {
                let net = Generator::new(config.generator, image, classes)?;
                let params = nn::init_params(net.specs(), rng, Kind::Float, device);
                (Source::Generator { net, params }, Some(config.generator.noise_dim))
            }
            TeacherKind::Pixels => {
                let shape = [t * b, image[0], image[1], image[2]];
                (Source::Pixels(nn::randn(rng, &shape, Kind::Float, device).set_requires_grad(true)), None)
            }
        };
        let curriculum = Curriculum::new(config.curriculum, t, b, noise_dim, rng, device)?;
        let log_fill = |v: f64| Tensor::full([t], v.ln(), (Kind::Float, device)).set_requires_grad(true);
        let label_logits = config.soft_labels.then(|| {
            let ids = Tensor::arange(t * b, (Kind::Int64, device));
            (curriculum::labels(&ids, classes).one_hot(classes).to_kind(Kind::Float) * SOFT_LABEL_INIT)
                .set_requires_grad(true)
        });
        Ok(Teacher {
            config: config.clone(),
            source,
            classes,
            curriculum,
            log_lr: log_fill(config.init_lr),
            log_momentum: log_fill(config.init_momentum),
            label_logits,
        })
    }

    /// Every learned tensor with a stable name (used by the optimiser and checkpoints). The
    /// tensors share storage with the teacher's.
    pub fn named_params(&self) -> Vec<(String, Tensor)> {
        let mut named = self.source.named_params();
        if let Some(z) = &self.curriculum.z {
            named.push(("curriculum.z".into(), z.shallow_clone()));
        }
        named.push(("inner.log_lr".into(), self.log_lr.shallow_clone()));
        named.push(("inner.log_momentum".into(), self.log_momentum.shallow_clone()));
        if let Some(l) = &self.label_logits {
            named.push(("labels.logits".into(), l.shallow_clone()));
        }
        named
    }

    /// The same teacher with its learned tensors replaced by `params` (in `named_params` order).
    pub fn with_params(&self, params: &[Tensor]) -> Teacher {
        assert_eq!(params.len(), self.named_params().len(), "teacher: wrong number of parameters");
        let (source, rest) = self.source.with_params(params);
        let mut rest = rest.iter().map(Tensor::shallow_clone);
        let z = self.curriculum.z.as_ref().map(|_| rest.next().expect("length checked"));
        let (log_lr, log_momentum) = (rest.next().expect("length checked"), rest.next().expect("length checked"));
        Teacher {
            config: self.config.clone(),
            source,
            classes: self.classes,
            curriculum: Curriculum { z, ..self.curriculum.clone() },
            log_lr,
            log_momentum,
            label_logits: self.label_logits.as_ref().map(|_| rest.next().expect("length checked")),
        }
    }

    pub fn params(&self) -> Vec<Tensor> {
        self.named_params().into_iter().map(|(_, t)| t).collect()
    }

    /// Images and training targets (int64 labels, or probabilities with soft labels) of one step.
    pub fn synthesize(&self, step: &StepInput) -> (Tensor, Tensor) {
        self.synthesize_steps(std::slice::from_ref(step)).remove(0)
    }

    /// [`Teacher::synthesize`] for many steps at once: the generator's effective weights are
    /// computed once, and its FC layers run over all steps' batches together
    /// ([`Generator::generate_batches`]).
    pub fn synthesize_steps(&self, steps: &[StepInput]) -> Vec<(Tensor, Tensor)> {
        let labels: Vec<Tensor> = steps.iter().map(|step| curriculum::labels(&step.ids, self.classes)).collect();
        let images = match &self.source {
            Source::Generator { net, params } => {
                let noise = steps.iter().map(|step| step.z.as_ref().expect("a generator's curriculum draws noise"));
                let batches: Vec<(&Tensor, &Tensor)> = noise.zip(&labels).collect();
                net.generate_batches(&net.weights(params), &batches)
            }
            Source::Pixels(pixels) => steps.iter().map(|step| pixels.index_select(0, &step.ids)).collect(),
        };
        let targets = steps.iter().zip(labels).map(|(step, labels)| match &self.label_logits {
            Some(logits) => logits.index_select(0, &step.ids).softmax(-1, None::<Kind>),
            None => labels,
        });
        images.into_iter().zip(targets).collect()
    }

    /// Learning rates and momenta of the inner steps, `[T]` each.
    pub fn schedule(&self) -> (Tensor, Tensor) {
        (self.log_lr.exp(), self.log_momentum.exp())
    }

    /// Trains `state` through inner steps `steps` on synthetic data following `plan`. With
    /// `create_graph` the result is differentiable w.r.t. every teacher parameter. The steps'
    /// batches are synthesized up front, in one pass ([`Teacher::synthesize_steps`]); with the
    /// graph, every step's generator graph is kept until the meta-backward either way.
    pub fn teach(
        &self,
        learner: &Learner,
        state: LearnerState,
        plan: &[StepInput],
        steps: Range<usize>,
        create_graph: bool,
        after_step: impl FnMut(usize, &LearnerState),
    ) -> LearnerState {
        let batches = if create_graph {
            self.synthesize_steps(&plan[steps.clone()])
        } else {
            tch::no_grad(|| self.synthesize_steps(&plan[steps.clone()]))
        };
        self.teach_on(learner, state, batches, steps, create_graph, after_step)
    }

    /// [`Teacher::teach`] on the steps' batches already synthesized (for a caller that times
    /// the synthesis apart): the schedule is cut from the graph unless `create_graph`.
    pub fn teach_on(
        &self,
        learner: &Learner,
        state: LearnerState,
        batches: Vec<(Tensor, Tensor)>,
        steps: Range<usize>,
        create_graph: bool,
        after_step: impl FnMut(usize, &LearnerState),
    ) -> LearnerState {
        assert_eq!(batches.len(), steps.len(), "teacher: one batch per step of {steps:?}");
        let (lrs, momenta) = self.schedule();
        let (lrs, momenta) = if create_graph { (lrs, momenta) } else { (lrs.detach(), momenta.detach()) };
        let mut batches = batches.into_iter();
        let next = |_| batches.next().expect("one batch per step");
        inner::unroll(learner, state, (&lrs, &momenta), steps, create_graph, next, after_step)
    }
}
