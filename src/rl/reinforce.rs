//! The real-environment baseline: REINFORCE with a baseline (Williams 1992). Sampled episodes;
//! the discounted return-to-go minus the batch mean, divided by the batch spread, weights each
//! action's log-probability; Adam on the policy. Before training and after every update the
//! greedy policy is scored on fresh episodes, so we can say how many real environment steps it
//! needed to reach a return (none, for a return the untrained policy already gets).

use rand::{rngs::StdRng, Rng, SeedableRng};
use tch::{Kind, Tensor};

use super::cartpole::{self, CartPole, Obs, OBS_DIM};
use super::policy::{FastPolicy, Policy};
use crate::optim::Adam;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReinforceConfig {
    pub hidden: i64,
    pub lr: f64,
    pub gamma: f64,
    /// Episodes are collected until a batch holds at least this many steps.
    pub batch_steps: usize,
    /// Greedy episodes scored before training and after every update.
    pub eval_episodes: usize,
}

impl Default for ReinforceConfig {
    /// The usual CartPole settings (as in PyTorch's REINFORCE example: gamma 0.99, Adam 0.01).
    fn default() -> ReinforceConfig {
        ReinforceConfig { hidden: 64, lr: 0.01, gamma: 0.99, batch_steps: 500, eval_episodes: 10 }
    }
}

/// Greedy return after a number of real environment steps of training.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CurvePoint {
    pub steps: usize,
    pub greedy_return: f64,
}

/// Discounted return-to-go of each step of one episode.
fn returns_to_go(rewards: &[f64], gamma: f64) -> Vec<f64> {
    let mut out = vec![0.0; rewards.len()];
    let mut acc = 0.0;
    for (o, r) in out.iter_mut().zip(rewards).rev() {
        acc = r + gamma * acc;
        *o = acc;
    }
    out
}

/// Mean greedy return of `params` over `episodes` episodes drawn from `rng`.
fn greedy_return(params: &[Tensor], episodes: usize, rng: &mut StdRng) -> f64 {
    let greedy = FastPolicy::new(params);
    let total: f64 = (0..episodes).map(|_| cartpole::episode_return(rng.gen(), |o| greedy.greedy(o))).sum();
    total / episodes as f64
}

/// Trains from scratch until the greedy return reaches `target` or `budget` training steps are
/// used; returns the learning curve (the untrained policy at 0 steps, then one point per update)
/// and the final parameters. Deterministic in `seed`.
pub fn train(config: &ReinforceConfig, seed: u64, budget: usize, target: f64) -> (Vec<CurvePoint>, Vec<Tensor>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let policy = Policy::new(config.hidden);
    let params = policy.init(&mut rng);
    // The untrained policy's episodes come from a stream of their own: the training's draws
    // stay what they were before it was scored.
    let untrained = greedy_return(&params, config.eval_episodes, &mut crate::meta::iteration_rng(seed, usize::MAX));
    let mut curve = vec![CurvePoint { steps: 0, greedy_return: untrained }];
    if untrained >= target {
        return (curve, params);
    }
    let mut adam = Adam::new(&params, 0.9, 0.999, crate::optim::DEFAULT_EPS);
    let mut steps = 0;
    while steps < budget {
        let (mut states, mut actions, mut advantages) = (Vec::<f32>::new(), Vec::<i64>::new(), Vec::<f64>::new());
        let fast = FastPolicy::new(&params);
        while actions.len() < config.batch_steps && steps < budget {
            let mut env = CartPole::reset(rng.gen());
            let mut rewards = Vec::new();
            loop {
                let obs: Obs = env.state;
                let action = fast.sample(&obs, &mut rng);
                let step = env.step(action);
                states.extend(obs.iter().map(|&v| v as f32));
                actions.push(action as i64);
                rewards.push(step.reward);
                steps += 1;
                if step.terminated || step.truncated || steps >= budget {
                    break;
                }
            }
            advantages.extend(returns_to_go(&rewards, config.gamma));
        }
        let n = advantages.len() as f64;
        let mean = advantages.iter().sum::<f64>() / n;
        let std = (advantages.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / n).sqrt();
        let weights: Vec<f32> = advantages.iter().map(|a| ((a - mean) / (std + 1e-8)) as f32).collect();
        let obs = Tensor::from_slice(&states).view([-1, OBS_DIM as i64]);
        let logp = Policy::forward(&params, &obs).log_softmax(-1, None::<Kind>);
        let chosen = logp.gather(1, &Tensor::from_slice(&actions).view([-1, 1]), false).view([-1]);
        let loss = -(chosen * Tensor::from_slice(&weights)).mean(None::<Kind>);
        let grads = crate::nn::grads(&[loss], &params, false, false);
        adam.step(&params, &grads, config.lr);

        let greedy_return = greedy_return(&params, config.eval_episodes, &mut rng);
        curve.push(CurvePoint { steps, greedy_return });
        if greedy_return >= target {
            break;
        }
    }
    (curve, params)
}

/// Training steps at the first point of `curve` whose greedy return reaches `target`.
pub fn steps_to_reach(curve: &[CurvePoint], target: f64) -> Option<usize> {
    curve.iter().find(|p| p.greedy_return >= target).map(|p| p.steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_to_go_by_hand() {
        // 1 + 0.5 (1 + 0.5 * 1) = 1.75, 1 + 0.5 * 1 = 1.5, 1.
        assert_eq!(returns_to_go(&[1.0, 1.0, 1.0], 0.5), [1.75, 1.5, 1.0]);
    }

    #[test]
    fn learns_to_balance_and_is_deterministic() {
        let config = ReinforceConfig::default();
        let (curve, params) = train(&config, 2, 60_000, 150.0);
        let first = curve[0].greedy_return;
        let reached = steps_to_reach(&curve, 150.0);
        assert!(reached.is_some(), "REINFORCE did not reach 150 in 60k steps (started at {first}): {curve:?}");
        assert_eq!(params.len(), 6);
        assert_eq!(train(&config, 1, 3_000, 500.0).0, train(&config, 1, 3_000, 500.0).0);
        // The untrained policy is scored first, then after each batch of at least 500 steps.
        assert_eq!(curve[0].steps, 0);
        assert!(first < 150.0 && curve[1].steps >= config.batch_steps, "{curve:?}");
        // Seed 1's untrained policy already balances for 181 steps on average: 150 takes it no
        // real step (the first check after a batch said 565).
        let (lucky, _) = train(&config, 1, 60_000, 150.0);
        assert_eq!((steps_to_reach(&lucky, 150.0), lucky.len()), (Some(0), 1), "{lucky:?}");
    }
}
