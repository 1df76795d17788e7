//! Real-batch augmentation for the meta-loss (CIFAR-10, as in the reference): a random crop of
//! the image padded by 4 black pixels on each side, and a random horizontal flip, per image.

use rand::{rngs::StdRng, Rng};
use tch::{Kind, Tensor};

use super::DatasetName;

pub const PAD: i64 = 4;

/// `images`: `[N, C, H, W]`, normalised as `dataset`'s -> same shape, each image shifted by up
/// to `PAD` pixels in each direction and flipped left-right with p = 1/2. Uncovered pixels are
/// black, normalised: the reference pads the raw image before normalising it, so its border is
/// not the normalised mean (0) but about -2.
pub fn crop_and_flip(images: &Tensor, dataset: DatasetName, rng: &mut StdRng) -> Tensor {
    let size = images.size();
    let (n, c, h, w) = (size[0], size[1], size[2], size[3]);
    let black = dataset.normalise(&Tensor::zeros([1, c, 1, 1], (Kind::Uint8, images.device())));
    let padded = black.to_kind(images.kind()).expand([n, c, h + 2 * PAD, w + 2 * PAD], false).contiguous();
    padded.narrow(2, PAD, h).narrow(3, PAD, w).copy_(images);
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
    use tch::Device;

    #[test]
    fn shape_determinism_and_content() {
        let dataset = DatasetName::Cifar10;
        let pixels = Tensor::arange(2 * 3 * 8 * 8, (Kind::Int64, Device::Cpu)).remainder(200).to_kind(Kind::Uint8);
        let x = dataset.normalise(&(pixels.view([2, 3, 8, 8]) + 20));
        let a = crop_and_flip(&x, dataset, &mut StdRng::seed_from_u64(1));
        let b = crop_and_flip(&x, dataset, &mut StdRng::seed_from_u64(1));
        assert_eq!(a.size(), [2, 3, 8, 8]);
        assert!(a.equal(&b));
        let differs = (2..20).any(|s| !crop_and_flip(&x, dataset, &mut StdRng::seed_from_u64(s)).equal(&a));
        assert!(differs, "different seeds should give different crops");
        // Every value is its channel's black (the images' pixels are 20 to 219) or comes from the
        // same image and channel; black shows where a crop was shifted.
        let (mean, std) = dataset.mean_std();
        let mut border = false;
        for s in 0..10 {
            let y = crop_and_flip(&x, dataset, &mut StdRng::seed_from_u64(s));
            for (i, c) in [(0i64, 0usize), (1, 2)] {
                let black = -mean[c] / std[c];
                let image = x.get(i).get(c as i64);
                let (lo, hi) = (image.min().double_value(&[]), image.max().double_value(&[]));
                let v = y.get(i).get(c as i64);
                let is_black = (&v - black).abs().lt(1e-6);
                assert!(is_black.logical_or(&v.ge(lo).logical_and(&v.le(hi))).all().int64_value(&[]) == 1);
                border |= is_black.any().int64_value(&[]) == 1;
            }
        }
        assert!(border, "no crop was shifted");
    }
}
