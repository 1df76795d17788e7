//! The differentiable variant of the meta-objective: instead of the real return (which only ES
//! can optimise), the cross-entropy of the trained policy against a reference policy's actions
//! on real states the reference visits. The meta-gradient then flows exactly through the
//! unrolled inner training into the teacher, as for images. The price: a reference policy must
//! exist, here learned by REINFORCE on the real environment (its real steps are reported).

use rand::{rngs::StdRng, Rng, SeedableRng};
use tch::{Kind, Tensor};

use super::cartpole::{CartPole, OBS_DIM};
use super::config::RlConfig;
use super::policy::{FastPolicy, Policy};
use super::reinforce::{self, ReinforceConfig};
use super::teacher::{self, EnvTeacher};
use crate::nn;

/// Episodes of the reference whose states form the meta-loss set.
const REFERENCE_EPISODES: usize = 4;

/// The most states the reference's episodes can record: each fresh policy's meta-loss forward
/// over them is held until the meta-gradient, beside its unroll.
pub const MAX_REFERENCE_STATES: usize = REFERENCE_EPISODES * super::cartpole::MAX_STEPS;

/// The greedy return REINFORCE trains the reference to: CartPole's cap, a solved task.
const REFERENCE_TARGET: f64 = 500.0;

/// Real states and the reference's greedy action in each.
#[derive(Debug)]
pub struct Reference {
    pub states: Tensor,
    pub actions: Tensor,
    /// Real environment steps REINFORCE took to learn the reference.
    pub real_steps: usize,
    /// The reference's greedy return when training stopped.
    pub greedy_return: f64,
}

impl Reference {
    /// REINFORCE until its greedy policy scores 500 (or `baseline_budget` is spent), then
    /// states from episodes where it *samples* its actions: the wider spread of states teaches
    /// what to do after a mistake, which greedy rollouts near the upright pose never show.
    pub fn learn(config: &RlConfig) -> Reference {
        let mut rng = super::stream(config.seed, super::Stream::Reference);
        let (curve, params) =
            reinforce::train(&ReinforceConfig::default(), rng.gen(), config.baseline_budget, REFERENCE_TARGET);
        let last = curve.last().expect("the untrained policy is scored at least");
        let policy = FastPolicy::new(&params);
        let (mut states, mut actions) = (Vec::<f32>::new(), Vec::<i64>::new());
        for _ in 0..REFERENCE_EPISODES {
            let mut env = CartPole::reset(rng.gen());
            loop {
                let obs = env.state;
                states.extend(obs.iter().map(|&v| v as f32));
                actions.push(policy.greedy(&obs) as i64);
                let step = env.step(policy.sample(&obs, &mut rng));
                if step.terminated || step.truncated {
                    break;
                }
            }
        }
        Reference {
            states: Tensor::from_slice(&states).view([-1, OBS_DIM as i64]),
            actions: Tensor::from_slice(&actions),
            real_steps: last.steps,
            greedy_return: last.greedy_return,
        }
    }

    /// Real environment steps the reference cost: REINFORCE's training (its greedy evaluation
    /// episodes not counted, as for the baseline) and the episodes that recorded its states.
    pub fn real_cost(&self) -> u64 {
        (self.real_steps + self.actions.size()[0] as usize) as u64
    }

    /// A one-line warning when REINFORCE stopped short of a solved task (its budget ran out):
    /// the teacher then learns to imitate a weaker policy. Not an error, since the run may still
    /// be worth having and its real steps are already spent.
    pub fn warning(&self) -> Option<String> {
        (self.greedy_return < REFERENCE_TARGET).then(|| {
            format!(
                "the imitation reference's greedy return is {:.1} after {} real steps, below {REFERENCE_TARGET}: REINFORCE did not solve CartPole within the run's first `baseline_budget`, so the teacher imitates a weaker policy (the reference is learnt once, when the run starts: a new run with a larger budget learns another)",
                self.greedy_return, self.real_steps
            )
        })
    }

    /// The meta-loss of `theta`, averaged over `policies_per_candidate` fresh random policies
    /// trained through the graph, and its exact gradient with respect to `theta` (computed in
    /// `theta`'s float kind, returned as f32).
    pub fn meta_gradient(&self, teacher: &EnvTeacher, theta: &Tensor, rng: &mut StdRng) -> (f64, Tensor) {
        let trials = teacher::trials(&teacher.config, rng, teacher.config.policies_per_candidate, 0);
        let theta = theta.detach().set_requires_grad(true);
        let losses: Vec<Tensor> = trials
            .iter()
            .map(|trial| {
                let init = Policy::new(trial.width).init(&mut StdRng::seed_from_u64(trial.init_seed));
                let trained = teacher.train_policy(&theta, init, true);
                nn::cross_entropy(&Policy::forward(&trained, &self.states.to_kind(theta.kind())), &self.actions)
            })
            .collect();
        let loss = Tensor::stack(&losses, 0).mean(None::<Kind>);
        let grad = nn::grads(&[&loss], &[&theta], false, false).remove(0);
        (loss.double_value(&[]), grad.to_kind(Kind::Float))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact meta-gradient matches central finite differences on the generator coordinate
    /// it weights most (the generator reaches the loss only through the inner gradients, so a
    /// detached second-order path would give 0 there), and a small step along it lowers the
    /// meta-loss for the same fresh policies.
    #[test]
    fn meta_gradient_matches_finite_differences_and_descends() {
        let config = RlConfig { baseline_budget: 5_000, ..RlConfig::tiny() };
        let reference = Reference::learn(&config);
        assert_eq!(reference.states.size()[0], reference.actions.size()[0]);
        assert!(reference.real_steps <= 5_000);
        let warning = reference.warning().expect("5,000 steps do not solve CartPole");
        let steps = reference.real_steps;
        assert!(warning.contains(&format!("after {steps} real steps, below 500: REINFORCE did not solve CartPole")));
        let (states, actions) = (reference.states.copy(), reference.actions.copy());
        let solved = Reference { states, actions, real_steps: reference.real_steps, greedy_return: 500.0 };
        assert_eq!(solved.warning(), None);

        let (teacher, theta) = EnvTeacher::new(&config);
        // In f64, where a step small enough to cross no leaky-ReLU kink of the unroll is still
        // far above rounding (in f32 the two overlap: the check passed or failed by the draw).
        let loss_and_grad = |theta: &[f64]| {
            reference.meta_gradient(&teacher, &Tensor::from_slice(theta), &mut StdRng::seed_from_u64(3))
        };
        let theta64: Vec<f64> = theta.iter().map(|&v| f64::from(v)).collect();
        let (_, grad) = loss_and_grad(&theta64);
        let generator = teacher.dim() - 2 * config.inner_steps;
        let (k, analytic) = Vec::<f32>::try_from(&grad).unwrap()[..generator]
            .iter()
            .map(|&g| f64::from(g))
            .enumerate()
            .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
            .unwrap();
        let h = 1e-6;
        let shifted = |delta: f64| {
            let mut t = theta64.clone();
            t[k] += delta;
            loss_and_grad(&t).0
        };
        let numeric = (shifted(h) - shifted(-h)) / (2.0 * h);
        assert!(
            (numeric - analytic).abs() < 1e-6 * analytic.abs() && analytic.abs() > 1e-3,
            "generator coordinate {k}: analytic {analytic}, finite differences {numeric}"
        );

        let loss_and_grad = |theta: &[f32]| {
            reference.meta_gradient(&teacher, &Tensor::from_slice(theta), &mut StdRng::seed_from_u64(3))
        };
        let (before, grad) = loss_and_grad(&theta);
        let theta = Tensor::from_slice(&theta);
        let norm = grad.norm().double_value(&[]);
        let stepped = Vec::<f32>::try_from(&theta - &grad * (0.01 / norm)).unwrap();
        let (after, _) = loss_and_grad(&stepped);
        assert!(after < before, "meta-loss {before} -> {after} along the negative gradient");
    }
}
