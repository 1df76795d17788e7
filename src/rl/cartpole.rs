//! CartPole to the classic specification (Barto, Sutton & Anderson 1983, as in gym's
//! `CartPole-v1`): explicit Euler steps of 0.02 s, a push of ±10 N, failure past ±2.4 m or ±12°,
//! reward 1 for every step taken (the failing one included), episodes cut at 500 steps.

use rand::{rngs::StdRng, Rng, SeedableRng};

pub const GRAVITY: f64 = 9.8;
pub const CART_MASS: f64 = 1.0;
pub const POLE_MASS: f64 = 0.1;
/// Half the pole's length, as in the original equations.
pub const POLE_HALF_LENGTH: f64 = 0.5;
pub const FORCE: f64 = 10.0;
pub const TAU: f64 = 0.02;
pub const X_LIMIT: f64 = 2.4;
/// 12 degrees in radians (gym writes it 12 * 2 * pi / 360).
pub const THETA_LIMIT: f64 = 12.0 * 2.0 * std::f64::consts::PI / 360.0;
pub const MAX_STEPS: usize = 500;
/// Each state variable starts uniform in ±0.05.
pub const INIT_RANGE: f64 = 0.05;

pub const OBS_DIM: usize = 4;
pub const ACTIONS: usize = 2;

/// Position, velocity, pole angle (0 = upright, positive = leaning right), angular velocity.
pub type Obs = [f64; OBS_DIM];

#[derive(Debug, Clone)]
pub struct CartPole {
    pub state: Obs,
    pub steps: usize,
}

/// What one step returns.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    pub obs: Obs,
    pub reward: f64,
    /// The pole fell or the cart left the track.
    pub terminated: bool,
    /// The 500-step cap was reached without failing.
    pub truncated: bool,
}

impl CartPole {
    pub fn from_state(state: Obs) -> CartPole {
        CartPole { state, steps: 0 }
    }

    /// A fresh episode whose initial state is drawn from `seed` alone.
    pub fn reset(seed: u64) -> CartPole {
        let mut rng = StdRng::seed_from_u64(seed);
        CartPole::from_state(std::array::from_fn(|_| rng.gen_range(-INIT_RANGE..INIT_RANGE)))
    }

    /// Action 1 pushes right, 0 pushes left.
    pub fn step(&mut self, action: usize) -> Step {
        let [x, x_dot, theta, theta_dot] = self.state;
        let force = if action == 1 { FORCE } else { -FORCE };
        let total_mass = CART_MASS + POLE_MASS;
        let pole_mass_length = POLE_MASS * POLE_HALF_LENGTH;
        let (sin, cos) = theta.sin_cos();
        let temp = (force + pole_mass_length * theta_dot * theta_dot * sin) / total_mass;
        let theta_acc =
            (GRAVITY * sin - cos * temp) / (POLE_HALF_LENGTH * (4.0 / 3.0 - POLE_MASS * cos * cos / total_mass));
        let x_acc = temp - pole_mass_length * theta_acc * cos / total_mass;
        // Explicit Euler: positions move with the old velocities.
        self.state = [x + TAU * x_dot, x_dot + TAU * x_acc, theta + TAU * theta_dot, theta_dot + TAU * theta_acc];
        self.steps += 1;
        let [x, _, theta, _] = self.state;
        let terminated = x.abs() > X_LIMIT || theta.abs() > THETA_LIMIT;
        Step { obs: self.state, reward: 1.0, terminated, truncated: !terminated && self.steps >= MAX_STEPS }
    }
}

/// Runs one episode from `seed` with `act(obs) -> action` and returns its total reward.
pub fn episode_return(seed: u64, mut act: impl FnMut(&Obs) -> usize) -> f64 {
    let mut env = CartPole::reset(seed);
    let mut total = 0.0;
    loop {
        let step = env.step(act(&env.state));
        total += step.reward;
        if step.terminated || step.truncated {
            return total;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_close(got: Obs, want: Obs) {
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "got {got:?}, want {want:?}");
        }
    }

    /// From rest, pushing right: sin = 0, cos = 1, so
    /// temp = 10 / 1.1 = 100/11,
    /// theta_acc = -(100/11) / (0.5 (4/3 - 0.1/1.1)) = -(100/11) / (41/66) = -600/41,
    /// x_acc = 100/11 + 0.05 (600/41) / 1.1 = 4400/451.
    /// Step 1 (Euler, old velocities are 0): x = 0, x_dot = 0.02 * 4400/451 = 88/451,
    /// theta = 0, theta_dot = 0.02 * -600/41 = -12/41.
    /// Step 2 (theta still 0, so the same accelerations): x = 0.02 * 88/451, x_dot = 176/451,
    /// theta = 0.02 * -12/41, theta_dot = -24/41.
    #[test]
    fn two_steps_match_hand_computation() {
        let mut env = CartPole::from_state([0.0; 4]);
        let s1 = env.step(1);
        assert_close(s1.obs, [0.0, 88.0 / 451.0, 0.0, -12.0 / 41.0]);
        assert_eq!((s1.reward, s1.terminated, s1.truncated), (1.0, false, false));
        let s2 = env.step(1);
        assert_close(s2.obs, [0.02 * 88.0 / 451.0, 176.0 / 451.0, 0.02 * -12.0 / 41.0, -24.0 / 41.0]);
        // Mirror symmetry: pushing left from rest gives the negated state.
        let mut env = CartPole::from_state([0.0; 4]);
        assert_close(env.step(0).obs, [0.0, -88.0 / 451.0, 0.0, 12.0 / 41.0]);
    }

    /// A tilted pole: theta = 0.1, theta_dot = 0.5, push left; with s = sin 0.1, c = cos 0.1,
    /// temp = (-10 + 0.05 * 0.25 * s) / 1.1, theta_acc = (9.8 s - c temp) / (0.5 (4/3 - 0.1 c^2 / 1.1)),
    /// x_acc = temp - 0.05 theta_acc c / 1.1; gravity wins, so the pole accelerates to the right.
    #[test]
    fn tilted_step_matches_the_equations() {
        let (s, c) = (0.1f64.sin(), 0.1f64.cos());
        let temp = (-10.0 + 0.05 * 0.25 * s) / 1.1;
        let theta_acc = (9.8 * s - c * temp) / (0.5 * (4.0 / 3.0 - 0.1 * c * c / 1.1));
        let x_acc = temp - 0.05 * theta_acc * c / 1.1;
        assert!((16.0..16.3).contains(&theta_acc) && (-9.9..-9.7).contains(&x_acc), "{theta_acc} {x_acc}");
        let mut env = CartPole::from_state([1.0, -0.3, 0.1, 0.5]);
        let step = env.step(0);
        assert_close(step.obs, [1.0 - 0.006, -0.3 + 0.02 * x_acc, 0.1 + 0.01, 0.5 + 0.02 * theta_acc]);
    }

    #[test]
    fn terminates_at_the_limits_and_truncates_at_500() {
        // theta 0.2 + 0.02 * 0.5 = 0.21 > 0.2094 rad (12 degrees): the pole has fallen.
        let step = CartPole::from_state([0.0, 0.0, 0.2, 0.5]).step(1);
        assert!(step.terminated && !step.truncated && step.reward == 1.0);
        let step = CartPole::from_state([0.0, 0.0, 0.2, 0.0]).step(1);
        assert!(!step.terminated, "0.2 rad is inside the 12-degree limit");
        assert!(CartPole::from_state([2.39, 1.0, 0.0, 0.0]).step(1).terminated, "x = 2.41 is off the track");
        assert!(CartPole::from_state([-2.39, -1.0, 0.0, 0.0]).step(0).terminated);
        assert!((THETA_LIMIT - 0.20944).abs() < 1e-5);

        let mut env = CartPole::from_state([0.0; 4]);
        env.steps = MAX_STEPS - 1;
        let step = env.step(1);
        assert!(step.truncated && !step.terminated);
    }

    #[test]
    fn episodes_are_seeded_and_scored() {
        assert_eq!(CartPole::reset(7).state, CartPole::reset(7).state);
        assert_ne!(CartPole::reset(7).state, CartPole::reset(8).state);
        for seed in 0..20 {
            assert!(CartPole::reset(seed).state.iter().all(|v| v.abs() < INIT_RANGE));
        }
        // Always pushing one way tips the pole within a few dozen steps.
        let r = episode_return(0, |_| 1);
        assert!((5.0..40.0).contains(&r), "{r}");
        // Pushing towards where the pole is falling balances it for the whole episode.
        for seed in 0..5 {
            let r = episode_return(seed, |o| usize::from(o[2] + 0.5 * o[3] + 0.01 * o[0] + 0.1 * o[1] > 0.0));
            assert_eq!(r, MAX_STEPS as f64, "seed {seed}");
        }
    }
}
