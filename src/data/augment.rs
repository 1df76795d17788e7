//! Real-batch augmentation for the meta-loss (CIFAR-10, as in the reference): a random crop of
//! the image padded by 4 zero pixels on each side, and a random horizontal flip, per image.

use rand::{rngs::StdRng, Rng};
use tch::Tensor;

pub const PAD: i64 = 4;

/// `images`: `[N, C, H, W]` -> same shape, each image shifted by up to `PAD` pixels in each
/// direction (uncovered pixels are 0, the normalised mean) and flipped left-right with p = 1/2.
pub fn crop_and_flip(images: &Tensor, rng: &mut StdRng) -> Tensor {
    let size = images.size();
    let (n, h, w) = (size[0], size[2], size[3]);
    let padded = images.constant_pad_nd([PAD, PAD, PAD, PAD]);
    let out: Vec<Tensor> = (0..n)
        .map(|i| {
            let (dy, dx) = (rng.gen_range(0..=2 * PAD), rng.gen_range(0..=2 * PAD));
            let crop = padded.get(i).narrow(1, dy, h).narrow(2, dx, w);
            if rng.gen_bool(0.5) {
                crop.flip([2])
            } else {
                crop
            }
        })
        .collect();
    Tensor::stack(&out, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use tch::{Device, Kind};

    #[test]
    fn shape_determinism_and_content() {
        let x = Tensor::arange(2 * 3 * 8 * 8, (Kind::Float, Device::Cpu)).view([2, 3, 8, 8]) + 1.0;
        let a = crop_and_flip(&x, &mut StdRng::seed_from_u64(1));
        let b = crop_and_flip(&x, &mut StdRng::seed_from_u64(1));
        assert_eq!(a.size(), [2, 3, 8, 8]);
        assert!(a.equal(&b));
        let differs = (2..20).any(|s| !crop_and_flip(&x, &mut StdRng::seed_from_u64(s)).equal(&a));
        assert!(differs, "different seeds should give different crops");
        // Every non-padding value still comes from the same image and channel.
        for s in 0..10 {
            let y = crop_and_flip(&x, &mut StdRng::seed_from_u64(s));
            for (i, c) in [(0i64, 0i64), (1, 2)] {
                let (lo, hi) = (x.get(i).get(c).min().double_value(&[]), x.get(i).get(c).max().double_value(&[]));
                let v = y.get(i).get(c);
                let inside = v.eq(0.0).logical_or(&v.ge(lo).logical_and(&v.le(hi)));
                assert!(inside.all().int64_value(&[]) == 1);
            }
        }
    }
}
