//! Adam for the outer loop, written out so its state can be checkpointed and a resumed run
//! continues exactly where it stopped.

use tch::{Kind, Tensor};

#[derive(Debug)]
pub struct Adam {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// First and second moment estimates, one per parameter.
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
    pub steps: i64,
}

/// PyTorch's default epsilon for Adam.
pub const DEFAULT_EPS: f64 = 1e-8;

impl Adam {
    pub fn new(params: &[Tensor], beta1: f64, beta2: f64, eps: f64) -> Adam {
        let zeros = || params.iter().map(|p| p.zeros_like().detach()).collect();
        Adam { beta1, beta2, eps, m: zeros(), v: zeros(), steps: 0 }
    }

    /// Updates `params` in place (outside the autograd graph) with gradients `grads`.
    pub fn step(&mut self, params: &[Tensor], grads: &[Tensor], lr: f64) {
        let counts = [params.len(), grads.len(), self.m.len()];
        assert!(counts.iter().all(|&n| n == counts[0]), "Adam: parameters, gradients, state: {counts:?}");
        self.steps += 1;
        let bias1 = 1.0 - self.beta1.powi(self.steps as i32);
        let bias2 = 1.0 - self.beta2.powi(self.steps as i32);
        tch::no_grad(|| {
            for (((p, g), m), v) in params.iter().zip(grads).zip(&mut self.m).zip(&mut self.v) {
                *m = &*m * self.beta1 + g * (1.0 - self.beta1);
                *v = &*v * self.beta2 + g.square() * (1.0 - self.beta2);
                let update = (&*m / bias1) / ((&*v / bias2).sqrt() + self.eps) * lr;
                let mut p = p.shallow_clone();
                let _ = p.f_sub_(&update).expect("Adam: parameter and update shapes agree");
            }
        });
    }
}

/// Scales `grads` so their joint L2 norm is at most `max_norm`; returns the norm before.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> f64 {
    let norm = grads.iter().map(|g| g.square().sum(Kind::Double).double_value(&[])).sum::<f64>().sqrt();
    if norm > max_norm && norm.is_finite() {
        for g in grads.iter_mut() {
            *g = &*g * (max_norm / norm);
        }
    }
    norm
}

/// Cosine decay from `lr` at iteration 0 to `lr * final_fraction` at `total`.
pub fn cosine_lr(lr: f64, final_fraction: f64, iteration: usize, total: usize) -> f64 {
    let progress = iteration as f64 / total.max(1) as f64;
    lr * (final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_step_moves_by_lr_times_sign() {
        let p = Tensor::from_slice(&[1.0f64, -1.0]).set_requires_grad(true);
        let mut adam = Adam::new(&[p.shallow_clone()], 0.9, 0.999, DEFAULT_EPS);
        adam.step(&[p.shallow_clone()], &[Tensor::from_slice(&[3.0f64, -0.01])], 0.1);
        let got = Vec::<f64>::try_from(p.detach()).unwrap();
        assert!((got[0] - 0.9).abs() < 1e-6 && (got[1] + 0.9).abs() < 1e-4, "{got:?}");
    }

    #[test]
    fn minimises_a_quadratic() {
        let p = Tensor::from_slice(&[5.0f64, -3.0]).set_requires_grad(true);
        let mut adam = Adam::new(&[p.shallow_clone()], 0.9, 0.999, DEFAULT_EPS);
        for _ in 0..500 {
            let loss = (&p - Tensor::from_slice(&[1.0f64, 2.0])).square().sum(Kind::Double);
            let g = crate::nn::grads(&[loss], &[&p], false, false);
            adam.step(&[p.shallow_clone()], &g, 0.05);
        }
        assert!(p.detach().allclose(&Tensor::from_slice(&[1.0f64, 2.0]), 1e-2, 1e-2, false), "{p}");
    }

    #[test]
    fn clipping_and_cosine() {
        let mut g = vec![Tensor::from_slice(&[3.0f64]), Tensor::from_slice(&[4.0f64])];
        assert_eq!(clip_grad_norm(&mut g, 1.0), 5.0);
        assert!((g[0].double_value(&[0]) - 0.6).abs() < 1e-12);
        assert_eq!(cosine_lr(0.02, 0.1, 0, 100), 0.02);
        assert!((cosine_lr(0.02, 0.1, 100, 100) - 0.002).abs() < 1e-12);
        assert!((cosine_lr(0.02, 0.1, 50, 100) - 0.011).abs() < 1e-12);
    }
}
