//! The generator: (noise, one-hot label) -> image, as in the reference design:
//! FC -> BN -> LReLU -> FC -> BN -> LReLU -> reshape -> [upsample x2, reflection pad, conv3x3]
//! -> BN -> LReLU -> [upsample x2, reflection pad, conv3x3] -> tanh x 2. All layers are
//! weight-normalised; batch norm uses the statistics of the generated batch.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::nn::{self, Init, ParamSpec};

/// Widths of the generator; the reference uses 128 / 1024 / 128 / 64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratorConfig {
    #[serde(deserialize_with = "crate::config::positive")]
    pub noise_dim: i64,
    #[serde(deserialize_with = "crate::config::positive")]
    pub fc_width: i64,
    #[serde(deserialize_with = "crate::config::positive")]
    pub conv1_channels: i64,
    #[serde(deserialize_with = "crate::config::positive")]
    pub conv2_channels: i64,
}

impl GeneratorConfig {
    pub const REFERENCE: GeneratorConfig =
        GeneratorConfig { noise_dim: 128, fc_width: 1024, conv1_channels: 128, conv2_channels: 64 };
}

/// Images are `[C, H, W]`; outputs are scaled to (-2, 2), the reference's range, which is not
/// quite the normalised data's: MNIST's runs from -0.42 to 2.82, so a generated pixel never
/// reaches the brightest quarter of its intensities (above 191/255).
#[derive(Debug, Clone)]
pub struct Generator {
    pub config: GeneratorConfig,
    pub image: [i64; 3],
    pub classes: i64,
    specs: Vec<ParamSpec>,
}

impl Generator {
    pub fn new(config: GeneratorConfig, image: [i64; 3], classes: i64) -> Result<Generator> {
        let [c, h, w] = image;
        if h % 4 != 0 || w % 4 != 0 {
            bail!("generator: image size {h}x{w} must be divisible by 4 (two x2 upsamplings)");
        }
        let widths = [config.noise_dim, config.fc_width, config.conv1_channels, config.conv2_channels];
        if widths.iter().any(|&x| x <= 0) || c <= 0 || classes <= 0 {
            bail!("generator: widths {widths:?}, channels {c} and classes {classes} must all be positive");
        }
        let GeneratorConfig { noise_dim, fc_width, conv1_channels: c1, conv2_channels: c2 } = config;
        let bn = |name: &str, n: i64| {
            vec![
                ParamSpec::new(format!("{name}.gamma"), &[n], Init::Ones),
                ParamSpec::new(format!("{name}.beta"), &[n], Init::Zeros),
            ]
        };
        // Layers followed by batch norm need no bias: the mean subtraction would cancel it.
        let specs = [
            nn::wn_specs("fc1", &[fc_width, noise_dim + classes], false),
            bn("bn1", fc_width),
            nn::wn_specs("fc2", &[c1 * (h / 4) * (w / 4), fc_width], false),
            bn("bn2", c1 * (h / 4) * (w / 4)),
            nn::wn_specs("conv1", &[c2, c1, 3, 3], false),
            bn("bn3", c2),
            nn::wn_specs("conv2", &[c, c2, 3, 3], true),
        ]
        .concat();
        Ok(Generator { config, image, classes, specs })
    }

    pub fn specs(&self) -> &[ParamSpec] {
        &self.specs
    }

    /// `z`: `[B, noise_dim]`, `labels`: int64 `[B]` -> images `[B, C, H, W]`.
    pub fn forward(&self, params: &[Tensor], z: &Tensor, labels: &Tensor) -> Tensor {
        self.generate(&self.weights(params), z, labels)
    }

    /// The layers' effective weights (weight normalisation applied, the upsampling blocks'
    /// parity kernels derived), to share between the many batches of one meta-step: normalising
    /// the 6.4M-entry FC weight per batch, and pulling each batch's gradient back through it,
    /// cost ~3% of a base_fc meta-step.
    pub fn weights(&self, params: &[Tensor]) -> Weights {
        assert_eq!(params.len(), self.specs.len(), "generator: wrong number of parameters");
        let p = params;
        let w = |v: usize| nn::weight_norm(&p[v], &p[v + 1]);
        let bn = |i: usize| [p[i].shallow_clone(), p[i + 1].shallow_clone()];
        Weights {
            fc1: w(0),
            bn1: bn(2),
            fc2: w(4),
            bn2: bn(6),
            conv1: nn::UpsampleConv::new(&w(8), None),
            bn3: bn(10),
            conv2: nn::UpsampleConv::new(&w(12), Some(&p[14])),
        }
    }

    /// [`Generator::forward`] with the weights prepared by [`Generator::weights`].
    pub fn generate(&self, weights: &Weights, z: &Tensor, labels: &Tensor) -> Tensor {
        self.generate_batches(weights, &[(z, labels)]).remove(0)
    }

    /// [`Generator::generate`] for many batches (`(z, labels)` each, e.g. a meta-step's inner
    /// steps) at once. Each batch gets exactly its own images (batch norm uses that batch's
    /// statistics), but the two FC layers multiply all batches stacked: one matrix product per
    /// layer instead of one per batch, and one weight gradient instead of T that autograd then
    /// sums (25.7 MB each for the 6272 x 1024 layer). 32 batches of 128 through that layer and
    /// its batch norm, forward and backward: 0.95 -> 0.77 s on 2 cores. The convolutions stay per
    /// batch: stacked, their activations outgrow the caches (2.8x slower in the reference).
    pub fn generate_batches(&self, weights: &Weights, batches: &[(&Tensor, &Tensor)]) -> Vec<Tensor> {
        if batches.is_empty() {
            return Vec::new();
        }
        for (z, labels) in batches {
            let (zs, ls) = (z.size(), labels.size());
            assert!(
                zs.len() == 2 && zs[1] == self.config.noise_dim && ls == [zs[0]],
                "generator: noise {zs:?} and labels {ls:?}, expected [B, {}] and [B]",
                self.config.noise_dim
            );
        }
        let [_, h, w] = self.image;
        let Weights { fc1, bn1, fc2, bn2, conv1, bn3: [g3, b3], conv2 } = weights;
        let sizes: Vec<i64> = batches.iter().map(|(z, _)| z.size()[0]).collect();
        // FC over the stacked batches, then batch norm per batch.
        let fc_bn = |x: &Tensor, fc: &Tensor, [g, b]: &[Tensor; 2]| -> Vec<Tensor> {
            let y = x.linear(fc, None::<Tensor>);
            y.split_with_sizes(sizes.as_slice(), 0).iter().map(|y| nn::batch_norm(y, g, b)).collect()
        };
        let inputs: Vec<Tensor> = batches
            .iter()
            .map(|(z, labels)| Tensor::cat(&[*z, &labels.one_hot(self.classes).to_kind(z.kind())], 1))
            .collect();
        // The leaky ReLU runs after stacking, so it keeps the stacked tensor the FC layer keeps.
        let hidden = nn::leaky_relu(&Tensor::cat(&fc_bn(&Tensor::cat(&inputs, 0), fc1, bn1), 0));
        fc_bn(&hidden, fc2, bn2)
            .iter()
            .map(|x| {
                let x = x.view([-1, self.config.conv1_channels, h / 4, w / 4]);
                let x = nn::leaky_relu(&nn::batch_norm(&conv1.apply_activated(&x, nn::leaky_relu), g3, b3));
                conv2.apply(&x).tanh() * 2.0
            })
            .collect()
    }
}

/// Effective weights of a [`Generator`]; batch norms as (gain, bias).
#[derive(Debug)]
pub struct Weights {
    fc1: Tensor,
    bn1: [Tensor; 2],
    fc2: Tensor,
    bn2: [Tensor; 2],
    conv1: nn::UpsampleConv,
    bn3: [Tensor; 2],
    conv2: nn::UpsampleConv,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::gradcheck::{leaf, max_rel_error, project};
    use rand::SeedableRng;
    use tch::{Device, Kind};

    const SMALL: GeneratorConfig = GeneratorConfig { noise_dim: 4, fc_width: 6, conv1_channels: 3, conv2_channels: 2 };

    #[test]
    fn output_shape_and_range() {
        let g = Generator::new(GeneratorConfig::REFERENCE, [1, 28, 28], 10).unwrap();
        let p = nn::init_params(g.specs(), &mut rand::rngs::StdRng::seed_from_u64(0), Kind::Float, Device::Cpu);
        let z = leaf(&[5, 128], 1).to_kind(Kind::Float);
        let x = g.forward(&p, &z, &Tensor::from_slice(&[0i64, 1, 2, 3, 4]));
        assert_eq!(x.size(), [5, 1, 28, 28]);
        assert!(x.abs().max().double_value(&[]) <= 2.0);
        // Not collapsed: the images use the range and differ from one another.
        assert!(x.abs().max().double_value(&[]) > 0.5);
        let spread = x.std_dim([0i64].as_slice(), true, false).mean(None::<Kind>).double_value(&[]);
        assert!(spread > 0.05, "images barely differ: mean per-pixel std {spread}");
    }

    #[test]
    fn rejects_bad_shapes() {
        let err = Generator::new(SMALL, [1, 30, 28], 10).unwrap_err().to_string();
        assert!(err.contains("30x28 must be divisible by 4"), "{err}");
        let err = Generator::new(GeneratorConfig { fc_width: 0, ..SMALL }, [1, 28, 28], 10).unwrap_err();
        assert!(err.to_string().contains("must all be positive"));
    }

    /// Stacking batches through the FC layers changes nothing: each batch gets the images, and
    /// passes back the gradients, that it gets and passes alone (batch norm stays per batch).
    #[test]
    fn batches_generated_together_equal_each_alone() {
        let g = Generator::new(SMALL, [1, 8, 8], 3).unwrap();
        let p = nn::init_params(g.specs(), &mut rand::rngs::StdRng::seed_from_u64(0), Kind::Double, Device::Cpu);
        let weights = g.weights(&p);
        let zs = [leaf(&[4, 4], 1), leaf(&[5, 4], 2)];
        let labels = [Tensor::from_slice(&[0i64, 1, 2, 0]), Tensor::from_slice(&[2i64, 2, 1, 0, 1])];
        let together = g.generate_batches(&weights, &[(&zs[0], &labels[0]), (&zs[1], &labels[1])]);
        let alone: Vec<Tensor> = zs.iter().zip(&labels).map(|(z, l)| g.generate(&weights, z, l)).collect();
        let inputs: Vec<&Tensor> = p.iter().chain(&zs).collect();
        let grads = |images: &[Tensor]| {
            let loss = images.iter().map(project).fold(Tensor::from(0.0f64), |acc, l| acc + l);
            nn::grads(&[loss], &inputs, true, false)
        };
        for (a, b) in together.iter().zip(&alone) {
            assert!(a.allclose(b, 1e-12, 1e-12, false), "images differ");
        }
        for (i, (a, b)) in grads(&together).iter().zip(grads(&alone)).enumerate() {
            assert!(a.allclose(&b, 1e-12, 1e-12, false), "gradient {i} differs");
        }
        assert!(g.generate_batches(&weights, &[]).is_empty());
    }

    #[test]
    fn gradcheck_generator() {
        let g = Generator::new(SMALL, [1, 8, 8], 3).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut inputs = nn::init_params(g.specs(), &mut rng, Kind::Double, Device::Cpu);
        // Perturb the batch-norm affine terms so their gradients are generic.
        for t in inputs.iter_mut() {
            *t = (t.detach() + nn::randn(&mut rng, &t.size(), Kind::Double, Device::Cpu) * 0.1).set_requires_grad(true);
        }
        inputs.push(leaf(&[4, 4], 2));
        let labels = Tensor::from_slice(&[0i64, 1, 2, 0]);
        let f = |p: &[Tensor]| project(&g.forward(&p[..p.len() - 1], &p[p.len() - 1], &labels));
        let err = max_rel_error(&inputs, &f, 6);
        assert!(err < 1e-5, "generator finite-difference relative error {err:e}");
    }
}
