//! The teacher of a training environment: a small generator that turns fixed noise into T
//! batches of synthetic CartPole observations with target action distributions, plus the
//! per-step learning rates and momenta a fresh policy is trained with. Its learned values live
//! in one flat vector (what evolution strategies perturb).

use rand::{rngs::StdRng, Rng, SeedableRng};
use tch::{Device, Kind, Tensor};

use super::cartpole::{self, ACTIONS, OBS_DIM};
use super::config::RlConfig;
use super::policy::{FastPolicy, Policy};
use crate::inner::{self, LearnerState};
use crate::nn::{self, ParamSpec};

/// Scale of each generated observation variable (x, x_dot, theta, theta_dot): the angle lives in
/// ±0.21 rad while the others are of order 1, so unit-sized generator outputs scaled this way
/// cover the states CartPole visits and one ES sigma moves each by a similar fraction.
const OBS_SCALE: [f32; OBS_DIM] = [1.0, 1.0, 0.2, 1.0];

#[derive(Debug)]
pub struct EnvTeacher {
    pub config: RlConfig,
    specs: Vec<ParamSpec>,
    /// `[T, B, noise_dim]`, drawn from the run's seed when it starts, then fixed and stored with
    /// its checkpoints (the parameters mean nothing with other noise). Not learned: that would
    /// multiply the dimension ES has to search, for what the generator's weights can already
    /// express. Plain floats rather than a tensor so the ES worker threads can share the teacher.
    noise: Vec<f32>,
    /// The parameter vector the run started from: stored, so `gtn rl eval` scores this run's
    /// untrained teacher even from a checkpoint of an older build (which does not store its
    /// config, so an edited `seed` in config.toml goes unrefused).
    pub initial: Vec<f32>,
}

/// One fresh policy of a fitness or evaluation draw and the real episodes it is scored on.
#[derive(Debug, Clone, PartialEq)]
pub struct Trial {
    pub width: i64,
    pub init_seed: u64,
    pub episode_seeds: Vec<u64>,
}

/// `policies` random policies with `episodes` episode seeds each.
pub fn trials(config: &RlConfig, rng: &mut StdRng, policies: usize, episodes: usize) -> Vec<Trial> {
    (0..policies)
        .map(|_| Trial {
            width: rng.gen_range(config.policy_width_min..config.policy_width_max),
            init_seed: rng.gen(),
            episode_seeds: (0..episodes).map(|_| rng.gen()).collect(),
        })
        .collect()
}

fn generator_specs(config: &RlConfig) -> Vec<ParamSpec> {
    let (z, h) = (config.noise_dim as i64, config.generator_hidden as i64);
    [nn::wn_specs("fc1", &[h, z], true), nn::wn_specs("fc2", &[(OBS_DIM + ACTIONS) as i64, h], true)].concat()
}

fn dim(specs: &[ParamSpec], config: &RlConfig) -> usize {
    specs.iter().map(|s| s.shape.iter().product::<i64>() as usize).sum::<usize>() + 2 * config.inner_steps
}

/// Length of the parameter vector of the teacher of `config`.
pub fn param_dim(config: &RlConfig) -> usize {
    dim(&generator_specs(config), config)
}

impl EnvTeacher {
    /// The teacher of a new run and its initial parameter vector, both drawn from `config.seed`.
    pub fn new(config: &RlConfig) -> (EnvTeacher, Vec<f32>) {
        let mut rng = super::stream(config.seed, super::Stream::Teacher);
        let shape = Self::noise_shape(config);
        let noise = Vec::<f32>::try_from(nn::randn(&mut rng, &[shape.iter().product()], Kind::Float, Device::Cpu))
            .expect("floats");
        let specs = generator_specs(config);
        let mut theta: Vec<f32> = nn::init_params(&specs, &mut rng, Kind::Float, Device::Cpu)
            .iter()
            .flat_map(|p| Vec::<f32>::try_from(p.detach().reshape([-1])).expect("float parameters"))
            .collect();
        theta.extend(std::iter::repeat_n(config.init_lr.ln() as f32, config.inner_steps));
        theta.extend(std::iter::repeat_n(config.init_momentum.ln() as f32, config.inner_steps));
        (EnvTeacher { config: config.clone(), specs, noise, initial: theta.clone() }, theta)
    }

    /// The teacher of a saved run from its stored noise `[T, B, noise_dim]` and initial
    /// parameter vector `[dim]`; the caller checks both shapes against the config.
    pub fn from_parts(config: &RlConfig, noise: &Tensor, initial: &Tensor) -> EnvTeacher {
        let floats = |t: &Tensor| Vec::<f32>::try_from(t.reshape([-1])).expect("a float tensor");
        let teacher = EnvTeacher {
            config: config.clone(),
            specs: generator_specs(config),
            noise: floats(noise),
            initial: floats(initial),
        };
        assert_eq!(noise.size(), Self::noise_shape(config), "teacher: noise of the wrong shape");
        assert_eq!(teacher.initial.len(), teacher.dim(), "teacher: initial parameter vector of the wrong length");
        teacher
    }

    /// `[T, B, noise_dim]`: the shape of the fixed noise of `config`.
    pub fn noise_shape(config: &RlConfig) -> [i64; 3] {
        [config.inner_steps as i64, config.batch_size as i64, config.noise_dim as i64]
    }

    /// The fixed noise `[T, B, noise_dim]`, as a checkpoint stores it.
    pub fn noise(&self) -> Tensor {
        Tensor::from_slice(&self.noise).view(Self::noise_shape(&self.config))
    }

    /// Length of the parameter vector.
    pub fn dim(&self) -> usize {
        dim(&self.specs, &self.config)
    }

    /// Generator tensors, learning rates `[T]` and momenta `[T]` from a parameter vector
    /// `[dim]`; views of it, so they are differentiable with respect to it.
    fn unpack(&self, theta: &Tensor) -> (Vec<Tensor>, Tensor, Tensor) {
        assert_eq!(theta.size(), [self.dim() as i64], "teacher: parameter vector has the wrong length");
        let mut offset = 0;
        let mut take = |shape: &[i64]| {
            let n = shape.iter().product::<i64>();
            let t = theta.narrow(0, offset, n).view(shape);
            offset += n;
            t
        };
        let generator = self.specs.iter().map(|s| take(&s.shape)).collect();
        let steps = [self.config.inner_steps as i64];
        let (log_lr, log_momentum) = (take(&steps), take(&steps));
        (generator, log_lr.exp(), log_momentum.exp())
    }

    /// The inner learning rates `[T]` and momenta `[T]` of a parameter vector `[dim]`.
    pub fn schedule(&self, theta: &Tensor) -> (Tensor, Tensor) {
        let (_, lrs, momenta) = self.unpack(theta);
        (lrs, momenta)
    }

    /// Step `t`'s synthetic observations `[B, 4]` and target action probabilities `[B, 2]`, in
    /// the generator's float kind.
    fn batch(&self, generator: &[Tensor], t: usize) -> (Tensor, Tensor) {
        let per_step = self.config.batch_size * self.config.noise_dim;
        let kind = generator[0].kind();
        let z = Tensor::from_slice(&self.noise[t * per_step..(t + 1) * per_step])
            .view([-1, self.config.noise_dim as i64])
            .to_kind(kind);
        let h = nn::leaky_relu(&nn::wn_linear(&z, &generator[0], &generator[1], Some(&generator[2])));
        let out = nn::wn_linear(&h, &generator[3], &generator[4], Some(&generator[5]));
        let obs = out.narrow(1, 0, OBS_DIM as i64) * Tensor::from_slice(&OBS_SCALE).view([1, -1]).to_kind(kind);
        let probs = out.narrow(1, OBS_DIM as i64, ACTIONS as i64).softmax(-1, None::<Kind>);
        (obs, probs)
    }

    /// Trains a fresh policy for T supervised steps on the teacher's data. ES needs no graph:
    /// its meta-objective (real return) is not differentiable, so it only needs the result. With
    /// `create_graph` the trained parameters are differentiable with respect to `theta`. Trains
    /// in `theta`'s float kind (f64 for gradient checks).
    pub fn train_policy(&self, theta: &Tensor, init: Vec<Tensor>, create_graph: bool) -> Vec<Tensor> {
        let (generator, lrs, momenta) = self.unpack(theta);
        let steps = 0..self.config.inner_steps;
        let state = LearnerState::new(init.into_iter().map(|p| p.to_kind(theta.kind())).collect());
        let schedule = (&lrs, &momenta);
        // The policy has no batch norm: no statistics to keep.
        let forward = |p: &[Tensor], x: &Tensor| (Policy::forward(p, x), Vec::new());
        if create_graph {
            let batch = |t: usize| self.batch(&generator, t);
            inner::unroll_with(forward, state, schedule, steps, true, batch, |_, _| {}).params
        } else {
            let batch = |t: usize| tch::no_grad(|| self.batch(&generator, t));
            inner::unroll_with(forward, state, schedule, steps, false, batch, |_, _| {}).params
        }
    }

    /// Greedy real-environment return of every episode of every trial, policy by policy, and
    /// how many of the policies training made NaN or infinite.
    pub fn returns(&self, theta: &[f32], trials: &[Trial]) -> Returns {
        let theta = Tensor::from_slice(theta);
        let mut returns = Returns::default();
        for trial in trials {
            let init = Policy::new(trial.width).init(&mut StdRng::seed_from_u64(trial.init_seed));
            let trained = self.train_policy(&theta, init, false);
            returns.diverged += usize::from(nn::first_non_finite(&trained).is_some());
            let policy = FastPolicy::new(&trained);
            returns
                .episodes
                .extend(trial.episode_seeds.iter().map(|&s| cartpole::episode_return(s, |o| policy.greedy(o))));
        }
        returns
    }
}

/// What the policies of some trials did on the real environment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Returns {
    /// Every episode's greedy return, policy by policy.
    pub episodes: Vec<f64>,
    /// Policies whose training came out NaN or infinite. They still act (a NaN policy always
    /// pushes left) and score the few steps that earns, so a diverged candidate ranks low rather than
    /// stopping ES; only a population whose every policy diverged stops it.
    pub diverged: usize,
}

impl Returns {
    /// The mean greedy return: the fitness ES maximises.
    pub fn mean(&self) -> f64 {
        self.episodes.iter().sum::<f64>() / self.episodes.len() as f64
    }

    /// Both draws' returns, `self`'s first.
    pub fn join(mut self, other: Returns) -> Returns {
        self.episodes.extend(other.episodes);
        self.diverged += other.diverged;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole teaching set: observations `[T, B, 4]`, target probabilities `[T, B, 2]`,
    /// learning rates `[T]` and momenta `[T]`.
    fn teaching_set(teacher: &EnvTeacher, theta: &[f32]) -> (Tensor, Tensor, Tensor, Tensor) {
        let (generator, lrs, momenta) = teacher.unpack(&Tensor::from_slice(theta));
        let (obs, probs): (Vec<Tensor>, Vec<Tensor>) =
            (0..teacher.config.inner_steps).map(|t| teacher.batch(&generator, t)).unzip();
        (Tensor::stack(&obs, 0), Tensor::stack(&probs, 0), lrs, momenta)
    }

    #[test]
    fn the_noise_is_not_generation_zeros_directions() {
        let (teacher, _) = EnvTeacher::new(&RlConfig { seed: 0, ..RlConfig::tiny() });
        let directions = super::super::es::directions(&mut crate::meta::iteration_rng(0, 0), teacher.noise.len(), 1);
        assert_ne!(teacher.noise[..4], directions[0][..4]);
    }

    #[test]
    fn parameter_vector_round_trips_and_sets_the_schedule() {
        let config = RlConfig::tiny();
        let (teacher, theta) = EnvTeacher::new(&config);
        assert_eq!(theta.len(), teacher.dim());
        let (obs, probs, lrs, momenta) = teaching_set(&teacher, &theta);
        let (t, b) = (config.inner_steps as i64, config.batch_size as i64);
        assert_eq!((obs.size(), probs.size()), (vec![t, b, 4], vec![t, b, 2]));
        assert!(probs.sum_dim_intlist(-1, false, None::<Kind>).allclose(
            &Tensor::ones([t, b], (Kind::Float, Device::Cpu)),
            1e-5,
            1e-5,
            false
        ));
        assert!((lrs.double_value(&[0]) - config.init_lr).abs() < 1e-6);
        assert!((momenta.double_value(&[t - 1]) - config.init_momentum).abs() < 1e-6);
        // The same seed gives the same teacher.
        assert_eq!(EnvTeacher::new(&config).1, theta);
    }

    /// Training on the teacher's data moves the policy towards the target actions.
    #[test]
    fn policy_training_fits_the_targets() {
        let config = RlConfig { init_lr: 0.5, inner_steps: 16, ..RlConfig::tiny() };
        let (teacher, theta) = EnvTeacher::new(&config);
        let (obs, probs, _, _) = teaching_set(&teacher, &theta);
        let (obs, probs) = (obs.view([-1, 4]), probs.view([-1, 2]));
        let init = Policy::new(16).init(&mut StdRng::seed_from_u64(0));
        let loss = |p: &[Tensor]| f64::try_from(nn::cross_entropy(&Policy::forward(p, &obs), &probs)).unwrap();
        let before = loss(&init);
        let trained = teacher.train_policy(&Tensor::from_slice(&theta), init, false);
        assert!(loss(&trained) < before - 0.05, "cross-entropy {before} -> {}", loss(&trained));
    }
}
