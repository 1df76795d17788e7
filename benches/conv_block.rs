//! Criterion benchmark of base_fc's second block (weight-normalised 3x3 convolution 64 -> 128 at
//! 14 x 14, max-pool; batch 128) as one inner step and its meta-backward use it: the forward, the
//! inner gradient with `create_graph`, and the backward of a function of that gradient to the
//! input and the weights. Winograd's form and libtorch's kernels run side by side, so that the
//! host's drift between runs does not decide the comparison.

use criterion::{criterion_group, criterion_main, Criterion};
use gtn::{custom, nn};
use tch::{Device, Kind, Tensor};

fn conv_block(c: &mut Criterion) {
    tch::manual_seed(0);
    let options = (Kind::Float, Device::Cpu);
    let leaf = |t: Tensor| t.set_requires_grad(true);
    // Channels-last, as the first block's max-pool leaves it.
    let x = leaf(Tensor::randn([128, 14, 14, 64], options).permute([0, 3, 1, 2]));
    let v = leaf(Tensor::randn([128, 64, 3, 3], options) * 0.05);
    let g = leaf(Tensor::ones([128], options));
    let probe = Tensor::randn([128, 128, 7, 7], options);
    let meta_probe = Tensor::randn([128, 64, 3, 3], options);
    let x_probe = Tensor::randn([128, 64, 14, 14], options);
    let step = || {
        let y = nn::wn_conv3x3_max_pool(&x, &v, &g);
        // The input's gradient too: the earlier block's weights' gradients go through it.
        let inner = gtn::nn::grads(&[(&y * &probe).sum(Kind::Float)], &[&x, &v, &g], true, true);
        let meta = (&inner[0] * &x_probe).sum(Kind::Float)
            + (&inner[1] * &meta_probe).sum(Kind::Float)
            + inner[2].sum(Kind::Float);
        gtn::nn::grads(&[meta], &[&x, &v, &g], false, false)
    };
    let mut group = c.benchmark_group("base_fc_conv2_block");
    for (name, winograd) in [("libtorch", false), ("winograd", true), ("libtorch again", false)] {
        custom::set_winograd(winograd);
        group.bench_function(name, |b| b.iter(step));
    }
    custom::set_winograd(true);
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = conv_block
}
criterion_main!(benches);
