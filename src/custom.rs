//! Autograd functions that tch cannot define, written in C++ (`csrc/custom.cpp`, compiled by
//! build.rs against the same libtorch): each keeps less for its backward than the libtorch op
//! it replaces, with the same values and derivatives (tested below to second order).

use std::ffi::CStr;
use std::os::raw::c_char;

use tch::{Device, Tensor};
use torch_sys::C_tensor;

extern "C" {
    fn gtn_last_error() -> *const c_char;
    fn gtn_conv_max_pool(input: *const C_tensor, weight: *const C_tensor, stride: i64, padding: i64) -> *mut C_tensor;
    fn gtn_leaky_relu(x: *const C_tensor, slope: f64) -> *mut C_tensor;
    fn gtn_bn_leaky_relu(x: *const C_tensor, bias: *const C_tensor, slope: f64) -> *mut C_tensor;
    fn gtn_row_norm(v: *const C_tensor) -> *mut C_tensor;
    fn gtn_set_winograd(enabled: bool);
    #[cfg(test)]
    fn gtn_set_cpu_kernels(enabled: bool);
    fn gtn_cpu_kernels_enabled() -> bool;
    fn gtn_replicate_pad1(x: *const C_tensor) -> *mut C_tensor;
    fn gtn_parity_gather(grid: *const C_tensor, taps: i64, h: i64, w: i64) -> *mut C_tensor;
    fn gtn_pad_conv_gather(x: *const C_tensor, weight: *const C_tensor) -> *mut C_tensor;
    fn gtn_momentum_step(
        p: *const C_tensor,
        m: *const C_tensor,
        g: *const C_tensor,
        lr: *const C_tensor,
        mu: *const C_tensor,
        out: *mut *mut C_tensor,
    );
}

/// Takes ownership of a tensor returned by csrc/custom.cpp; a null one carries libtorch's error.
fn owned(ptr: *mut C_tensor, op: &str) -> Tensor {
    if ptr.is_null() {
        // SAFETY: set by the call that just failed on this thread; a NUL-terminated C string.
        let message = unsafe { CStr::from_ptr(gtn_last_error()) }.to_string_lossy();
        panic!("{op}: {message}");
    }
    // SAFETY: a fresh heap `torch::Tensor` that nothing else owns.
    unsafe { Tensor::from_ptr(ptr) }
}

/// `input.conv2d(weight, stride, padding)` (no bias) then a 3x3 max-pool with stride 2 and
/// padding 1, keeping for the backward only `input`, `weight` and the arg-max (int32); its
/// backward, itself differentiable, keeps the pooled gradient and scatters it again when needed.
/// Channels-last inputs and weights give a channels-last result.
pub fn conv_max_pool(input: &Tensor, weight: &Tensor, stride: i64, padding: i64) -> Tensor {
    // SAFETY: both pointers are live tensors for the duration of the call.
    owned(unsafe { gtn_conv_max_pool(input.as_ptr(), weight.as_ptr(), stride, padding) }, "conv_max_pool")
}

/// Leaky ReLU with negative slope `slope`, keeping its output (not its input) for the backward.
pub fn leaky_relu(x: &Tensor, slope: f64) -> Tensor {
    // SAFETY: a live tensor for the duration of the call.
    owned(unsafe { gtn_leaky_relu(x.as_ptr(), slope) }, "leaky_relu")
}

/// Mean-only batch norm then leaky ReLU, `leaky_relu(x - mean(x) + bias, slope)` with the mean
/// per channel (dimension 1) over the others, as one node keeping its output; its derivatives are
/// two linear maps, each the other's derivative, two passes over the data each on the CPU.
pub fn bn_leaky_relu(x: &Tensor, bias: &Tensor, slope: f64) -> Tensor {
    // SAFETY: live tensors for the duration of the call.
    owned(unsafe { gtn_bn_leaky_relu(x.as_ptr(), bias.as_ptr(), slope) }, "bn_leaky_relu")
}

/// The norm of each slice of `v` along dimension 0 (`[out, 1, ...]`, dimensions kept), whose
/// backward is a single product with `v`.
pub fn row_norm(v: &Tensor) -> Tensor {
    // SAFETY: a live tensor for the duration of the call.
    owned(unsafe { gtn_row_norm(v.as_ptr()) }, "row_norm")
}

/// SGD with momentum's update of one parameter, `m' = g + mu·m, p' = p - lr·m'` (`lr`, `mu`:
/// one-element tensors), as one autograd node whose backward is one pass over the parameter on
/// the CPU: `(p', m')`.
pub fn momentum_step(p: &Tensor, m: &Tensor, g: &Tensor, lr: &Tensor, mu: &Tensor) -> (Tensor, Tensor) {
    let mut out = [std::ptr::null_mut(); 2];
    // SAFETY: live tensors for the duration of the call; `out` then holds two fresh tensors, or
    // nulls where the call failed.
    unsafe { gtn_momentum_step(p.as_ptr(), m.as_ptr(), g.as_ptr(), lr.as_ptr(), mu.as_ptr(), out.as_mut_ptr()) };
    let [p_new, m_new] = out.map(|t| owned(t, "momentum_step"));
    (p_new, m_new)
}

/// Replicate padding by one pixel on each side of `[N, C, H, W]` that keeps only the input's
/// shape for its backward (libtorch's `replication_pad2d` keeps the input itself).
pub fn replicate_pad1(x: &Tensor) -> Tensor {
    // SAFETY: a live tensor for the duration of the call.
    owned(unsafe { gtn_replicate_pad1(x.as_ptr()) }, "replicate_pad1")
}

/// The generator's wide layer: `replicate_pad1(x)` convolved with `weight` `[4K, C, 2, 2]`
/// (stride 1, no padding), then [`parity_gather`] with one tap: `[N, K, 2H, 2W]`. Keeps `x` for
/// the backward instead of its padded copy; on the CPU, Winograd's F(4x4, 2x2) where it applies,
/// the grid never formed. Differentiable to every order.
pub fn pad_conv_gather(x: &Tensor, weight: &Tensor) -> Tensor {
    // SAFETY: live tensors for the duration of the call.
    owned(unsafe { gtn_pad_conv_gather(x.as_ptr(), weight.as_ptr()) }, "pad_conv_gather")
}

/// The parity gather of an upsampling block (`csrc/upsample.h`): from `grid` `[N, 4·taps·K, GH,
/// GW]`, channel group `p·taps + t` for output parity `p = 2r + s` and tap `t = 2a + b`, output
/// pixel `(2i + r, 2j + s)` of `[N, K, 2h, 2w]` sums grid pixels `(i + r + a, j + s + b)` over
/// the taps (`taps` is 1 or 4; with 1, `a = b = 0`). Keeps only shapes for its backward.
pub fn parity_gather(grid: &Tensor, taps: i64, h: i64, w: i64) -> Tensor {
    // SAFETY: a live tensor for the duration of the call.
    owned(unsafe { gtn_parity_gather(grid.as_ptr(), taps, h, w) }, "parity_gather")
}

/// Whether the 3x3 convolutions of [`conv_max_pool`] and the 2x2 ones of [`pad_conv_gather`] take
/// Winograd's forms (csrc/winograd.cpp) where they apply, as they do by default, or libtorch's
/// kernels: for benchmarks comparing the two in one process (benches/conv_block.rs, `gtn bench
/// --no-winograd`). Process-wide.
pub fn set_winograd(enabled: bool) {
    // SAFETY: stores one atomic flag.
    unsafe { gtn_set_winograd(enabled) }
}

/// Whether our CPU kernels take tensors on `device` on this thread: on the CPU, unless
/// [`LibtorchOps`] has turned them off. Elsewhere (a GPU) every function here runs libtorch's ops.
pub fn cpu_kernels_take(device: Device) -> bool {
    // SAFETY: reads a thread-local flag.
    device == Device::Cpu && unsafe { gtn_cpu_kernels_enabled() }
}

/// While alive, this thread's calls run the libtorch ops a GPU runs instead of our CPU kernels,
/// so that path, which no GPU-less test would reach otherwise, is held to the kernels' results.
/// Per thread: the tests run side by side, and a CPU graph's backward runs on the calling thread.
#[cfg(test)]
pub struct LibtorchOps {
    /// The setting to restore.
    was_enabled: bool,
}

#[cfg(test)]
impl LibtorchOps {
    pub fn begin() -> LibtorchOps {
        // SAFETY: reads, then sets, a thread-local flag.
        let was_enabled = unsafe { gtn_cpu_kernels_enabled() };
        unsafe { gtn_set_cpu_kernels(false) };
        LibtorchOps { was_enabled }
    }
}

#[cfg(test)]
impl Drop for LibtorchOps {
    fn drop(&mut self) {
        // SAFETY: sets a thread-local flag.
        unsafe { gtn_set_cpu_kernels(self.was_enabled) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::gradcheck::{leaf, value_and_grads};
    use tch::Kind;

    /// First and second derivatives of `f` and `reference` agree, in f64: the gradient of a
    /// loss, and the gradient of a function of that gradient (as the meta-gradient takes it).
    fn assert_same_to_second_order(x: &Tensor, f: impl Fn(&Tensor) -> Tensor, reference: impl Fn(&Tensor) -> Tensor) {
        let probe = leaf(&f(x).size(), 7).detach();
        let twice = |g: &dyn Fn(&Tensor) -> Tensor| {
            let y = g(x);
            let first =
                crate::nn::grads(&[(&y * &probe).sum(Kind::Double) + y.square().sum(Kind::Double)], &[x], true, true);
            let second = crate::nn::grads(&[first[0].square().sum(Kind::Double)], &[x], false, false);
            (y.detach(), first[0].detach(), second[0].detach())
        };
        let (a, b) = (twice(&f), twice(&reference));
        for (name, u, v) in [("values", &a.0, &b.0), ("first derivative", &a.1, &b.1), ("second", &a.2, &b.2)] {
            let err = (u - v).abs().max().double_value(&[]);
            // Sums in another order differ by rounding, relative to the values' size.
            let rounding = if x.kind() == Kind::Float { 1e-5 } else { 1e-12 };
            let tolerance = rounding * v.abs().max().double_value(&[]).max(1.0);
            assert!(err <= tolerance, "{name} differ by {err:e}");
        }
    }

    #[test]
    fn row_norm_matches_libtorch() {
        for shape in [[4i64, 6, 1, 1], [3, 2, 3, 3]] {
            let v = leaf(&shape, 3);
            let plain = |v: &Tensor| (v * v).sum_dim_intlist([1i64, 2, 3].as_slice(), true, None::<Kind>).sqrt();
            assert_same_to_second_order(&v, row_norm, plain);
        }
        let v = leaf(&[5, 7], 4);
        assert_same_to_second_order(&v, row_norm, |v| {
            v.square().sum_dim_intlist([1i64].as_slice(), true, None::<Kind>).sqrt()
        });
    }

    extern "C" {
        fn gtn_momentum_kernel_backwards() -> i64;
        fn gtn_conv_paths_taken(out: *mut i64);
        fn gtn_cpu_kernels_taken() -> i64;
    }

    fn taken() -> [i64; 3] {
        let mut out = [0i64; 3];
        // SAFETY: writes three counts into `out`.
        unsafe { gtn_conv_paths_taken(out.as_mut_ptr()) };
        out
    }

    /// The paper's generator takes its wide layer's F(4x4, 2x2) form in the forward and in the
    /// meta-backward (which differentiates the images once, recording no graph).
    #[test]
    fn the_generator_takes_the_winograd_wide_layer_in_both_passes() {
        use rand::SeedableRng;
        let config = crate::config::Config::paper();
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let teacher = crate::teacher::Teacher::new(&config, &mut rng, Device::Cpu).unwrap();
        let plan = teacher.curriculum.plan(&mut rng, Device::Cpu);
        let start = taken();
        let (images, _) = teacher.synthesize(&plan[0]);
        let forward = taken();
        crate::nn::grads(&[images.square().sum(Kind::Float)], &teacher.params(), false, false);
        let backward = taken();
        assert!(forward[2] > start[2] && backward[2] > forward[2], "{start:?} {forward:?} {backward:?}");
    }

    /// base_fc, as meta-training runs it (float32, channels-last), takes the fused first layer
    /// and Winograd's form in the forward, the inner backward and the meta-backward: the value
    /// tests would pass on a silent fallback to libtorch's kernels too.
    #[test]
    fn base_fc_takes_the_fused_first_layer_and_winograd_in_every_pass() {
        use crate::learner::{Arch, Learner};
        use rand::SeedableRng;
        let learner = Learner::new(Arch::Cnn { conv1: 64, conv2: 128, fc: 256 }, [1, 28, 28], 10).unwrap();
        let params: Vec<Tensor> = learner
            .init(&mut rand::rngs::StdRng::seed_from_u64(0), Device::Cpu)
            .iter()
            .map(|p| p.detach().set_requires_grad(true))
            .collect();
        let x = leaf(&[16, 1, 28, 28], 3).to_kind(Kind::Float).detach().set_requires_grad(true);
        let labels = Tensor::arange(16, (Kind::Int64, Device::Cpu)).remainder(10);
        let start = taken();
        let loss = crate::nn::cross_entropy(&learner.forward(&params, &x), &labels);
        let forward = taken();
        let grads = crate::nn::grads(&[loss], &params, true, true);
        let inner = taken();
        let meta = grads.iter().map(|g| g.square().sum(Kind::Float)).reduce(|a, b| a + b).unwrap();
        crate::nn::grads(&[meta], &[&x], false, false);
        let outer = taken();
        for (pass, before, after) in
            [("forward", start, forward), ("inner backward", forward, inner), ("meta-backward", inner, outer)]
        {
            assert!(after[0] > before[0], "{pass}: Winograd's form not taken");
            assert!(after[1] > before[1], "{pass}: the fused first layer not taken");
        }
    }

    /// The meta-gradient on the device a run takes (`Device::cuda_if_available()`) equals the CPU
    /// kernels' one: on a machine without a GPU, what a GPU runs, libtorch's ops in place of every
    /// kernel (the fused first layer through im2col), on the CPU. A 3-step unroll in f64 (no TF32)
    /// of a generator and a base_fc learner wide enough for Winograd's forms, with soft labels, an
    /// intermediate loss and scoring with the last training batch's statistics; random "real"
    /// images, so the test binary runs on a GPU machine without the data (scripts/gpu-check.sh).
    #[test]
    fn the_devices_ops_give_the_cpu_kernels_meta_gradient() {
        use crate::config::Config;
        use crate::generator::GeneratorConfig;
        use crate::learner::{Arch, BnEval, Learner};
        use crate::teacher::Teacher;
        use rand::{rngs::StdRng, SeedableRng};
        let config = Config {
            inner_steps: 3,
            batch_size: 4,
            soft_labels: true,
            intermediate_loss_every: 2,
            bn_eval: BnEval::Train,
            generator: GeneratorConfig { noise_dim: 4, fc_width: 8, conv1_channels: 16, conv2_channels: 16 },
            ..Config::tiny()
        };
        let learner = Learner::new(Arch::Cnn { conv1: 16, conv2: 16, fc: 8 }, [1, 28, 28], 10)
            .unwrap()
            .scored_with(BnEval::Train);
        let real_x = crate::nn::randn(&mut StdRng::seed_from_u64(4), &[8, 1, 28, 28], Kind::Double, Device::Cpu);
        let real_y = Tensor::arange(8, (Kind::Int64, Device::Cpu)).remainder(10);
        let run = |device: Device| {
            let teacher = Teacher::new(&config, &mut StdRng::seed_from_u64(1), device).unwrap();
            let params: Vec<Tensor> =
                teacher.params().iter().map(|p| p.detach().to_kind(Kind::Double).set_requires_grad(true)).collect();
            let teacher = teacher.with_params(&params);
            let start = learner
                .init(&mut StdRng::seed_from_u64(2), device)
                .iter()
                .map(|p| p.detach().to_kind(Kind::Double).set_requires_grad(true))
                .collect();
            let last = (real_x.to_device(device), real_y.to_device(device));
            let real = crate::meta::RealBatches { last, fresh: Vec::new() };
            let plan = teacher.curriculum.plan(&mut StdRng::seed_from_u64(3), device);
            let result = crate::meta::meta_gradient(&teacher, &learner, start, &real, &plan);
            let names = teacher.named_params().into_iter().map(|(name, _)| name);
            (result.loss, names.zip(result.grads.iter().map(|g| g.to_device(Device::Cpu))).collect::<Vec<_>>())
        };
        // SAFETY: reads thread-local counters.
        let kernel_paths = || (taken(), unsafe { gtn_momentum_kernel_backwards() }, unsafe { gtn_cpu_kernels_taken() });
        let before = kernel_paths();
        let kernels = run(Device::Cpu);
        let between = kernel_paths();
        let device = Device::cuda_if_available();
        let other = if device == Device::Cpu {
            let _ops = LibtorchOps::begin();
            run(Device::Cpu)
        } else {
            run(device)
        };
        let after = kernel_paths();
        assert!(between.0.iter().zip(&before.0).all(|(b, a)| b > a), "kernels not all taken: {before:?} {between:?}");
        assert!(between.1 > before.1, "the update's backward kernels not taken");
        assert_eq!(after, between, "a CPU kernel (or its gate's yes) on {device:?} or under LibtorchOps");
        assert!((kernels.0 - other.0).abs() < 1e-12, "{device:?}: meta-loss {} vs {}", other.0, kernels.0);
        for ((name, a), (_, b)) in kernels.1.iter().zip(&other.1) {
            let scale = a.abs().max().double_value(&[]).max(1e-12);
            let diff = (a - b).abs().max().double_value(&[]);
            // Sums in another order, some cancelling: ~1e-10 of a small gradient.
            assert!(diff / scale < 1e-9, "{device:?}: {name}'s meta-gradient differs by {diff:e} (scale {scale:e})");
        }
    }

    #[test]
    fn libtorch_ops_restore_the_setting_they_found() {
        assert!(cpu_kernels_take(Device::Cpu));
        {
            let _outer = LibtorchOps::begin();
            {
                let _inner = LibtorchOps::begin();
            }
            assert!(!cpu_kernels_take(Device::Cpu), "the inner guard turned the kernels on");
        }
        assert!(cpu_kernels_take(Device::Cpu));
    }

    /// `(p, m, g, lr, mu) -> (p', m')`.
    type Update = dyn Fn(&Tensor, &Tensor, &Tensor, &Tensor, &Tensor) -> (Tensor, Tensor);

    /// The update and its derivatives with respect to all five inputs equal those of libtorch's
    /// two `addcmul`s: the first derivative from the kernels (no graph recorded; checked to have
    /// run them), the second through the differentiable form. With the new parameter or the new
    /// momentum unused after the step (its gradient then undefined), the old momentum constant or
    /// not, a gradient in another layout (the differentiable form throughout), and in float32 a
    /// parameter spread over several tasks (per-thread partial sums).
    #[test]
    fn momentum_step_matches_libtorch() {
        let plain = |p: &Tensor, m: &Tensor, g: &Tensor, lr: &Tensor, mu: &Tensor| {
            let m_new = g.addcmul(mu, m);
            (p.addcmul(&-lr, &m_new), m_new)
        };
        for (shape, kind, p_used, m_used, momentum_leaf, g_nhwc) in [
            (vec![3i64, 4], Kind::Double, true, true, true, false),
            (vec![3, 4], Kind::Double, true, false, true, false),
            (vec![3, 4], Kind::Double, false, true, true, false),
            (vec![2, 3, 2, 2], Kind::Double, true, true, false, false),
            (vec![2, 3, 2, 2], Kind::Double, true, true, true, true),
            (vec![70_000], Kind::Float, true, true, true, false),
        ] {
            let case = format!("{shape:?} {kind:?}, p' used {p_used}, m' used {m_used}, m a leaf {momentum_leaf}");
            let data = |seed| leaf(&shape, seed).detach().to_kind(kind);
            let (p, m, g) = (data(1), data(2), data(3));
            let g = if g_nhwc { crate::nn::channels_last(&g) } else { g };
            let scalar = |v: f64| Tensor::from(v).to_kind(kind).set_requires_grad(true);
            let (p, g, lr, mu) = (p.set_requires_grad(true), g.set_requires_grad(true), scalar(0.3), scalar(0.7));
            let m = if momentum_leaf { m.set_requires_grad(true) } else { m };
            let mut inputs = vec![&p, &g, &lr, &mu];
            if momentum_leaf {
                inputs.push(&m);
            }
            let (probe_p, probe_m) = (data(4), data(5));
            let loss = |f: &Update| {
                let (p_new, m_new) = f(&p, &m, &g, &lr, &mu);
                let mut loss = Tensor::zeros([], (kind, Device::Cpu));
                if p_used {
                    loss = loss + (&p_new * &probe_p).sum(kind) + p_new.square().sum(kind);
                }
                if m_used {
                    loss = loss + (&m_new * &probe_m).sum(kind) + m_new.square().sum(kind);
                }
                loss
            };
            // An input a loss does not reach gets an undefined gradient: zero.
            let zero_if_unreached = |grads: Vec<Tensor>| -> Vec<Tensor> {
                grads.into_iter().zip(&inputs).map(|(t, x)| if t.defined() { t } else { x.zeros_like() }).collect()
            };
            let first = |f: &Update, graph| zero_if_unreached(crate::nn::grads(&[loss(f)], &inputs, graph, graph));
            let second = |f: &Update| {
                let sum = first(f, true).iter().map(|t| t.square().sum(kind)).reduce(|a, b| a + b).unwrap();
                zero_if_unreached(crate::nn::grads(&[sum], &inputs, false, false))
            };
            // SAFETY: reads a thread-local counter.
            let kernel_runs = || unsafe { gtn_momentum_kernel_backwards() };
            let before = kernel_runs();
            let ours_first = first(&momentum_step, false);
            let kernels = p_used && !g_nhwc;
            assert_eq!(kernel_runs() > before, kernels, "{case}: the backward's kernels ran");
            let tolerance = if kind == Kind::Float { 1e-5 } else { 1e-12 };
            let ((p_theirs, m_theirs), (p_ours, m_ours)) =
                (plain(&p, &m, &g, &lr, &mu), momentum_step(&p, &m, &g, &lr, &mu));
            let pairs =
                [("values", p_theirs.detach(), p_ours.detach()), ("momentum", m_theirs.detach(), m_ours.detach())];
            let derivatives = first(&plain, false)
                .into_iter()
                .zip(ours_first)
                .map(|(a, b)| ("first derivative", a, b))
                .chain(second(&plain).into_iter().zip(second(&momentum_step)).map(|(a, b)| ("second", a, b)));
            for (i, (name, theirs, ours)) in pairs.into_iter().chain(derivatives).enumerate() {
                let scale = theirs.abs().max().double_value(&[]).max(1.0);
                let err = (&ours - &theirs).abs().max().double_value(&[]);
                assert!(err <= tolerance * scale, "{case}: {name} ({i}) differs by {err:e}");
            }
        }
    }

    #[test]
    fn leaky_relu_matches_libtorch() {
        let x = leaf(&[4, 6], 2);
        assert_same_to_second_order(&x, |x| leaky_relu(x, 0.1), |x| x.leaky_relu_backward(x, 0.1, false));
        let y = Vec::<f64>::try_from(leaky_relu(&Tensor::from_slice(&[-2.0f64, 3.0]), 0.1)).unwrap();
        assert_eq!(y, [-0.2, 3.0]);
    }

    /// The parity gather as views of libtorch's: each parity's taps cropped and summed, the four
    /// parities interleaved by stacking.
    fn gather_by_views(grid: &Tensor, taps: i64, h: i64, w: i64) -> Tensor {
        let k = grid.size()[1] / (4 * taps);
        let parity = |p: i64| {
            let tap = |t: i64| {
                let (a, b) = if taps == 4 { (t / 2, t % 2) } else { (0, 0) };
                grid.narrow(1, (p * taps + t) * k, k).narrow(2, p / 2 + a, h).narrow(3, p % 2 + b, w)
            };
            (1..taps).fold(tap(0), |sum, t| sum + tap(t))
        };
        let rows = [0, 2].map(|p| Tensor::stack(&[parity(p), parity(p + 1)], -1));
        Tensor::stack(&rows, 3).reshape([grid.size()[0], k, 2 * h, 2 * w])
    }

    #[test]
    fn parity_gather_equals_its_views_to_second_order() {
        // Windows that fill the grid, and windows inside a larger one (grid rows the gather skips).
        // Channels-last grids of 8 channels per group and up take the channels-last kernels.
        for (taps, grid, h, w, channels_last) in [
            (1, [2, 12, 4, 6], 3, 5, false),
            (4, [2, 32, 5, 4], 3, 2, false),
            (4, [1, 16, 6, 6], 2, 3, false),
            (1, [2, 32, 4, 6], 3, 5, true),
            (4, [1, 128, 5, 4], 3, 2, true),
        ] {
            let x = leaf(&grid, 3);
            let x = if channels_last { crate::nn::channels_last(&x.detach()).set_requires_grad(true) } else { x };
            assert_same_to_second_order(&x, |x| parity_gather(x, taps, h, w), |x| gather_by_views(x, taps, h, w));
        }
    }

    #[cfg(feature = "jemalloc")]
    #[test]
    fn padding_and_gather_keep_only_their_results() {
        const MIB: i64 = 1 << 20;
        let grid = |t: &Tensor| t.view([16, 16, 128, 128]);
        let ours = kept_by(|t| replicate_pad1(&grid(t)));
        let libtorch = kept_by(|t| grid(t).replication_pad2d([1, 1, 1, 1]));
        // The padded result is 16.5 MiB.
        assert!(ours < 17 * MIB && libtorch >= 32 * MIB, "padding kept: ours {ours} bytes, libtorch's {libtorch}");
        // Its result, 4 channels at twice the size, is 15.8 MiB; the grid would be 16 more.
        let gathered = kept_by(|t| parity_gather(&grid(t), 1, 127, 127));
        assert!(gathered < 17 * MIB, "gather kept {gathered} bytes");
    }

    /// The wide layer as libtorch's padding and convolution, then the gather as views.
    fn plain_pad_conv_gather(x: &Tensor, w: &Tensor) -> Tensor {
        let grid = x.replication_pad2d([1, 1, 1, 1]).conv2d(w, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1);
        gather_by_views(&grid, 1, x.size()[2], x.size()[3])
    }

    #[test]
    fn pad_conv_gather_equals_padding_convolution_and_gather() {
        let (x, w) = (leaf(&[2, 5, 4, 6], 1), leaf(&[12, 5, 2, 2], 2));
        assert_same_to_second_order(&x, |x| pad_conv_gather(x, &w), |x| plain_pad_conv_gather(x, &w));
        // With 16 channels and sizes one short of multiples of 4, Winograd's form (csrc/winograd.h)
        // forward and, where no graph is recorded, backward; a graph recorded takes the
        // differentiable ops.
        let (x, w) = (leaf(&[3, 16, 7, 11], 3), leaf(&[20, 16, 2, 2], 4));
        assert_same_to_second_order(&x, |x| pad_conv_gather(x, &w), |x| plain_pad_conv_gather(x, &w));
        let probe = leaf(&[3, 5, 14, 22], 5).detach();
        let ours = value_and_grads(&pad_conv_gather(&x, &w), &probe, [&x, &w]);
        let theirs = value_and_grads(&plain_pad_conv_gather(&x, &w), &probe, [&x, &w]);
        for ((a, b), what) in ours.iter().zip(&theirs).zip(["values", "input gradient", "weight gradient"]) {
            let err = (a - b).abs().max().double_value(&[]);
            assert!(err < 1e-11, "Winograd's pad_conv_gather: {what} differ by {err:e}");
        }
    }

    #[cfg(feature = "jemalloc")]
    #[test]
    fn pad_conv_gather_keeps_the_activation_only() {
        const MIB: i64 = 1 << 20;
        let grid = |t: &Tensor| leaky_relu(&t.view([16, 16, 128, 128]), 0.1);
        let w = Tensor::ones([4, 16, 2, 2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        // The activation's output is 16 MiB, the result 3.9 MiB; the padded copy would be 16.5
        // MiB more.
        let ours = kept_by(|t| pad_conv_gather(&grid(t), &w));
        let padded_first = kept_by(|t| replicate_pad1(&grid(t)).conv2d(&w, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1));
        assert!(ours < 21 * MIB && padded_first > 32 * MIB, "kept: ours {ours} bytes, padded first {padded_first}");
    }

    extern "C" {
        fn gtn_parity_gather_raw(grid: *const C_tensor, taps: i64, h: i64, w: i64, generic: bool) -> *mut C_tensor;
        fn gtn_parity_gather_adjoint_raw(
            grad: *const C_tensor,
            taps: i64,
            grid: *const C_tensor,
            generic: bool,
        ) -> *mut C_tensor;
    }

    #[test]
    fn parity_gather_kernels_equal_the_generic_form_and_are_adjoint() {
        // Channels-last with 8 channels per group and up: the channels-last kernels, whose results
        // are channels-last; with 1, the channels-first ones, the adjoint's result channels-last.
        for (taps, kind, k, channels_last) in [
            (1, Kind::Float, 5, false),
            (4, Kind::Double, 5, false),
            (1, Kind::Float, 9, true),
            (4, Kind::Double, 8, true),
            (4, Kind::Float, 1, true),
        ] {
            let layout = |t: Tensor| if channels_last { crate::nn::channels_last(&t) } else { t };
            let grid = layout(Tensor::randn([3, 4 * taps * k, 8, 9], (kind, Device::Cpu)));
            let grad = layout(Tensor::randn([3, k, 12, 14], (kind, Device::Cpu)));
            // SAFETY: live tensors for the duration of each call.
            let run = |generic| unsafe {
                let y = owned(gtn_parity_gather_raw(grid.as_ptr(), taps, 6, 7, generic), "gather");
                let x = owned(gtn_parity_gather_adjoint_raw(grad.as_ptr(), taps, grid.as_ptr(), generic), "adjoint");
                (y, x)
            };
            let ((y, x), (y_generic, x_generic)) = (run(false), run(true));
            assert!(
                y.equal(&y_generic) && x.equal(&x_generic),
                "{taps} taps, {k} channels: kernels differ from the ATen form"
            );
            let nhwc = |t: &Tensor| t.stride()[1] == 1;
            assert_eq!((nhwc(&y), nhwc(&x)), (channels_last && k >= 8, channels_last), "{taps} taps, {k}: layouts");
            // <G grid, grad> = <grid, G^T grad>.
            let (lhs, rhs) = ((&y * &grad).sum(Kind::Double), (&grid * &x).sum(Kind::Double));
            assert!(lhs.allclose(&rhs, 1e-5, 1e-9, false), "{taps} taps: {lhs:?} != {rhs:?}");
        }
        let grid = Tensor::zeros([1, 8, 3, 3], (Kind::Float, Device::Cpu));
        let err = std::panic::catch_unwind(|| parity_gather(&grid, 1, 3, 3)).unwrap_err();
        let message = err.downcast_ref::<String>().unwrap();
        assert!(message.starts_with("parity_gather: ") && message.contains("too small"), "{message}");
    }

    #[cfg(feature = "jemalloc")]
    /// Bytes that `op(&intermediate)` keeps alive, with its result, once the caller has dropped
    /// the 16 MiB intermediate it was applied to.
    fn kept_by(op: impl Fn(&Tensor) -> Tensor) -> i64 {
        let x = Tensor::ones([4 << 20], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let before = crate::allocator::live_bytes_on_this_thread();
        let intermediate = &x * 2.0;
        let y = op(&intermediate);
        drop(intermediate);
        let kept = crate::allocator::live_bytes_on_this_thread() - before;
        drop(y);
        kept
    }

    #[cfg(feature = "jemalloc")]
    #[test]
    fn conv_max_pool_keeps_neither_the_convolution_output_nor_its_gradient() {
        // What the graph of an inner gradient keeps, once only that gradient is held.
        let kept_by_gradient = |f: &dyn Fn(&Tensor, &Tensor) -> Tensor| {
            let x = crate::nn::channels_last(&Tensor::randn([32, 32, 28, 28], (Kind::Float, Device::Cpu)))
                .set_requires_grad(true);
            let w = crate::nn::channels_last(&Tensor::randn([32, 32, 3, 3], (Kind::Float, Device::Cpu)))
                .set_requires_grad(true);
            let before = crate::allocator::live_bytes_on_this_thread();
            let y = f(&x, &w);
            let grad = crate::nn::grads(&[y.square().sum(Kind::Float)], &[&w], true, true);
            drop(y);
            let kept = crate::allocator::live_bytes_on_this_thread() - before;
            drop(grad);
            kept
        };
        // The first call also allocates the matrix-product library's buffers, which it keeps.
        kept_by_gradient(&|x, w| conv_max_pool(x, w, 1, 1));
        let ours = kept_by_gradient(&|x, w| conv_max_pool(x, w, 1, 1));
        let libtorch = kept_by_gradient(&|x, w| {
            x.conv2d(w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1).max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false)
        });
        let conv_output: i64 = 32 * 32 * 28 * 28 * 4;
        assert!(
            ours < conv_output && libtorch > 2 * conv_output,
            "kept: ours {ours} bytes, libtorch's convolution and max-pool {libtorch}, one convolution output {conv_output}"
        );
    }

    #[test]
    fn max_pool_gradients_follow_libtorchs_arg_max_through_ties() {
        let native = |x: &Tensor| x.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        // Through a 1x1 identity convolution, which leaves the values exact.
        let pooled = |x: &Tensor| {
            let c = x.size()[1];
            conv_max_pool(x, &Tensor::eye(c, (x.kind(), Device::Cpu)).view([c, c, 1, 1]), 1, 0)
        };
        // Channels-last and NCHW, even and odd sizes. Up to 16 channels the 1x1 convolution and
        // the pool are fused (csrc/pointwise_pool.h); above, csrc/maxpool.h's kernels pool
        // libtorch's convolution, and in float32 the unpooling streams its stores, from images
        // whose size is a multiple of 4 values (aligned) and from ones that are not (the second
        // image unaligned).
        for (c, h, w, nhwc, kind) in [
            (4, 9, 8, true, Kind::Double),
            (5, 8, 7, true, Kind::Double),
            (4, 9, 8, false, Kind::Double),
            (4, 9, 8, true, Kind::Float),
            (3, 7, 5, true, Kind::Float),
            (16, 9, 8, true, Kind::Float),
            (16, 7, 6, true, Kind::Double),
            (17, 8, 7, true, Kind::Double),
            (20, 9, 8, true, Kind::Float),
            (17, 7, 5, true, Kind::Float),
        ] {
            // Small integers: most windows hold their maximum more than once, and which of them
            // is the arg-max decides where the gradients go.
            let x = Tensor::randint(3, [2, c, h, w], (kind, Device::Cpu));
            let x = if nhwc { crate::nn::channels_last(&x) } else { x };
            assert_same_to_second_order(&x.set_requires_grad(true), pooled, native);
        }
    }

    extern "C" {
        fn gtn_cpu_level() -> i64;
        fn gtn_pointwise_levels() -> i64;
        fn gtn_force_pointwise_level(level: i64) -> bool;
    }

    /// The C++ side asks the CPU for a few of each level's features (what older compilers can
    /// name): the level it finds is the one every feature of the level gives.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_cpu_level_is_the_one_its_features_give() {
        use std::arch::is_x86_feature_detected as has;
        let v3 = has!("avx")
            && has!("avx2")
            && has!("fma")
            && has!("bmi1")
            && has!("bmi2")
            && has!("f16c")
            && has!("lzcnt")
            && has!("movbe");
        let v4 = v3 && has!("avx512f") && has!("avx512bw") && has!("avx512cd") && has!("avx512dq") && has!("avx512vl");
        // SAFETY: reads the CPU's features.
        assert_eq!(
            unsafe { gtn_cpu_level() },
            if v4 {
                3
            } else if v3 {
                2
            } else {
                1
            }
        );
    }

    /// Runs `f(level)` with the kernels of csrc/pointwise_kernels.h forced to each instruction set
    /// level this CPU runs, then back to the best however `f` ends. The level is process-wide:
    /// one test at a time forces it.
    fn at_every_instruction_set_level(mut f: impl FnMut(i64)) {
        static FORCING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = FORCING.lock().unwrap_or_else(|e| e.into_inner());
        struct Best;
        impl Drop for Best {
            fn drop(&mut self) {
                // SAFETY: stores one atomic value.
                unsafe { gtn_force_pointwise_level(-1) };
            }
        }
        let _best = Best;
        // SAFETY: reads a cached count.
        let levels = unsafe { gtn_pointwise_levels() };
        assert!((1..=3).contains(&levels), "{levels} levels");
        for level in 0..levels {
            // SAFETY: stores one atomic value.
            assert!(unsafe { gtn_force_pointwise_level(level) }, "level {level}");
            f(level);
        }
    }

    /// The first layer's fused convolution and max-pool (csrc/pointwise_pool.h), built for each
    /// instruction set level this CPU runs, against libtorch's convolution and max-pool, to second
    /// order with respect to the input and to the weight: 1x1 convolutions with output channels
    /// that fill whole vectors and ones left over, as many input channels as the kernels take, odd
    /// sizes, and 3x3 convolutions of one-channel images (which the kernels take as the 1x1
    /// convolution of nine shifted copies).
    #[test]
    fn fused_first_layer_matches_libtorch_at_every_instruction_set_level() {
        let native = |x: &Tensor, w: &Tensor, pad: i64| {
            x.conv2d(w, None::<Tensor>, [1, 1], [pad, pad], [1, 1], 1).max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false)
        };
        at_every_instruction_set_level(|level| {
            for (c, k, size, h, w, kind) in [
                (9, 64, 1, 8, 7, Kind::Double),
                (16, 20, 1, 5, 6, Kind::Double),
                (9, 64, 1, 8, 7, Kind::Float),
                (3, 21, 1, 3, 4, Kind::Float),
                (1, 64, 3, 8, 7, Kind::Double),
                (1, 21, 3, 3, 4, Kind::Float),
                (1, 5, 3, 1, 2, Kind::Double),
            ] {
                let pad = size / 2;
                let x = leaf(&[2, c, h, w], 1).detach().to_kind(kind);
                let x = x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
                let weight = leaf(&[k, c, size, size], 2).detach().to_kind(kind);
                let case = format!("level {level}: {c} -> {k} channels, {size}x{size}, {h}x{w}, {kind:?}");
                let ours = conv_max_pool(&x, &weight, 1, pad);
                assert_eq!(ours.stride()[1], 1, "{case}: not channels-last");
                let input = x.set_requires_grad(true);
                let probe = std::panic::AssertUnwindSafe(|| {
                    let ours = |x: &Tensor| conv_max_pool(x, &weight, 1, pad);
                    assert_same_to_second_order(&input, ours, |x| native(x, &weight, pad));
                    let weight = weight.set_requires_grad(true);
                    assert_same_to_second_order(&weight, |w| conv_max_pool(&x, w, 1, pad), |w| native(&x, w, pad));
                });
                if let Err(e) = std::panic::catch_unwind(probe) {
                    panic!("{case}: {}", e.downcast_ref::<String>().cloned().unwrap_or_default());
                }
            }
        });
    }

    #[cfg(feature = "jemalloc")]
    #[test]
    fn leaky_relu_keeps_only_its_output() {
        const MIB: i64 = 1 << 20;
        let ours = kept_by(|t| leaky_relu(t, 0.1));
        let libtorch = kept_by(|t| t.leaky_relu_backward(t, 0.1, false));
        assert!(ours < 17 * MIB && libtorch >= 32 * MIB, "kept: ours {ours} bytes, libtorch's form {libtorch}");
    }

    extern "C" {
        fn gtn_winograd_conv(input: *const C_tensor, weight: *const C_tensor) -> *mut C_tensor;
        fn gtn_winograd_grad(
            grad_out: *const C_tensor,
            input: *const C_tensor,
            weight: *const C_tensor,
            weight_grad: bool,
        ) -> *mut C_tensor;
        fn gtn_winograd_pad_conv(input: *const C_tensor, weight: *const C_tensor, gathered: bool) -> *mut C_tensor;
        fn gtn_winograd_pad_conv_grad(
            grad_out: *const C_tensor,
            input: *const C_tensor,
            weight: *const C_tensor,
            gathered: bool,
            weight_grad: bool,
        ) -> *mut C_tensor;
    }

    /// `ours`, a convolution of `x` with `w` and its two gradients (input's, weight's) for the
    /// output gradient `probe`, next to libtorch's by `conv`: (ours, libtorch's) for each.
    fn against_libtorch(
        ours: [Tensor; 3],
        x: &Tensor,
        w: &Tensor,
        probe: &Tensor,
        conv: impl Fn(&Tensor, &Tensor) -> Tensor,
    ) -> [(Tensor, Tensor); 3] {
        let (x, w) = (x.detach().set_requires_grad(true), w.detach().set_requires_grad(true));
        let [y, gx, gw] = value_and_grads(&conv(&x, &w), probe, [&x, &w]);
        let [a, b, c] = ours;
        [(a, y), (b, gx), (c, gw)]
    }

    /// Winograd's F(4x4, 3x3) convolution of `x` with `w` and its two gradients, against libtorch's.
    fn winograd_and_libtorch(x: &Tensor, w: &Tensor, probe: &Tensor) -> [(Tensor, Tensor); 3] {
        // SAFETY: live tensors for the duration of each call.
        let ours = unsafe {
            [
                owned(gtn_winograd_conv(x.as_ptr(), w.as_ptr()), "winograd conv"),
                owned(gtn_winograd_grad(probe.as_ptr(), x.as_ptr(), w.as_ptr(), false), "winograd input grad"),
                owned(gtn_winograd_grad(probe.as_ptr(), x.as_ptr(), w.as_ptr(), true), "winograd weight grad"),
            ]
        };
        against_libtorch(ours, x, w, probe, |x, w| x.conv2d(w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1))
    }

    /// Winograd's F(4x4, 2x2) convolution of `x` replicate-padded by one with `w` (`gathered`:
    /// then the parity gather), and its two gradients, against libtorch's padding and convolution
    /// (and the gather as views).
    fn padded_winograd_and_libtorch(x: &Tensor, w: &Tensor, probe: &Tensor, gathered: bool) -> [(Tensor, Tensor); 3] {
        let (px, pw, pp) = (x.as_ptr(), w.as_ptr(), probe.as_ptr());
        // SAFETY: live tensors for the duration of each call.
        let ours = unsafe {
            [
                owned(gtn_winograd_pad_conv(px, pw, gathered), "winograd pad conv"),
                owned(gtn_winograd_pad_conv_grad(pp, px, pw, gathered, false), "input grad"),
                owned(gtn_winograd_pad_conv_grad(pp, px, pw, gathered, true), "weight grad"),
            ]
        };
        against_libtorch(ours, x, w, probe, |x, w| {
            if gathered {
                plain_pad_conv_gather(x, w)
            } else {
                x.replication_pad2d([1, 1, 1, 1]).conv2d(w, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1)
            }
        })
    }

    /// Each of `results` within `f64_tolerance` of libtorch's (absolute, in f64) or, in float32,
    /// within 1e-5 of the largest value.
    fn assert_close(results: &[(Tensor, Tensor); 3], f64_tolerance: f64, case: &str) {
        for ((ours, theirs), what) in results.iter().zip(["convolution", "input gradient", "weight gradient"]) {
            assert_eq!(ours.size(), theirs.size(), "{what}");
            let err = (ours - theirs).abs().max().double_value(&[]);
            if theirs.kind() == Kind::Double {
                assert!(err < f64_tolerance, "{what} differs by {err:e} ({case})");
            } else {
                let relative = err / theirs.abs().max().double_value(&[]);
                assert!(relative < 1e-5, "{what}: float32 relative error {relative:e} ({case})");
            }
        }
    }

    /// At every instruction set level the transforms' kernels are built for (csrc/pointwise_kernels.h).
    #[test]
    fn winograd_convolution_and_gradients_equal_libtorchs() {
        at_every_instruction_set_level(|level| {
            // 30 images of 14x14 are two chunks of transformed tiles, the last one partial; tiles
            // overhang 14 x 14 and 6 x 6 images, not 8 x 8 ones; 17 and 20 channels leave some
            // over after whole vectors.
            for (n, c, k, h, w, channels_last) in
                [(30, 16, 20, 14, 14, true), (3, 17, 16, 6, 8, false), (2, 16, 17, 7, 9, true)]
            {
                let x = Tensor::randn([n, c, h, w], (Kind::Double, Device::Cpu));
                let x = if channels_last { crate::nn::channels_last(&x) } else { x };
                let wt = Tensor::randn([k, c, 3, 3], (Kind::Double, Device::Cpu));
                let probe = Tensor::randn([n, k, h, w], (Kind::Double, Device::Cpu));
                let results = winograd_and_libtorch(&x, &wt, &probe);
                assert_eq!(results[0].0.stride()[1] == 1, channels_last, "the convolution keeps the input's layout");
                assert_close(&results, 1e-11, &format!("level {level}: {n}x{c}x{h}x{w} -> {k}"));
            }
            // In float32, base_fc's second layer: rounding apart (relative to the largest value).
            let x = crate::nn::channels_last(&Tensor::randn([16, 64, 14, 14], (Kind::Float, Device::Cpu)));
            let wt = Tensor::randn([128, 64, 3, 3], (Kind::Float, Device::Cpu)) * 0.05;
            let probe = Tensor::randn([16, 128, 14, 14], (Kind::Float, Device::Cpu));
            let x17 = crate::nn::channels_last(&Tensor::randn([3, 17, 6, 8], (Kind::Float, Device::Cpu)));
            let wt17 = Tensor::randn([20, 17, 3, 3], (Kind::Float, Device::Cpu)) * 0.05;
            let probe17 = Tensor::randn([3, 20, 6, 8], (Kind::Float, Device::Cpu));
            assert_close(
                &winograd_and_libtorch(&x, &wt, &probe),
                0.0,
                &format!("level {level}: base_fc's second layer"),
            );
            assert_close(&winograd_and_libtorch(&x17, &wt17, &probe17), 0.0, &format!("level {level}: 17 -> 20"));
        });
    }

    /// F(4x4, 2x2) over the replicate-padded input (the generator's wide layer), the grid and its
    /// parity gather, at every instruction set level: images of 3 x 3 pixels to several chunks of
    /// tiles (65 images of 7x7 are two, the last one partial), channels left over after whole
    /// vectors, either layout in, and MNIST's wide layer in float32.
    #[test]
    fn padded_winograd_convolution_and_gradients_equal_libtorchs() {
        at_every_instruction_set_level(padded_winograd_at_one_level);
    }

    fn padded_winograd_at_one_level(level: i64) {
        for (n, c, k, h, w) in [(65, 16, 20, 7, 7), (3, 17, 16, 3, 11), (2, 16, 24, 11, 3), (2, 16, 40, 3, 3)] {
            let x = crate::nn::channels_last(&Tensor::randn([n, c, h, w], (Kind::Double, Device::Cpu)));
            let wt = Tensor::randn([k, c, 2, 2], (Kind::Double, Device::Cpu));
            for gathered in [false, true] {
                let probe = if gathered { [n, k / 4, 2 * h, 2 * w] } else { [n, k, h + 1, w + 1] };
                let probe = Tensor::randn(probe, (Kind::Double, Device::Cpu));
                let case = format!("level {level}: {n}x{c}x{h}x{w} -> {k}, gathered: {gathered}");
                assert_close(&padded_winograd_and_libtorch(&x, &wt, &probe, gathered), 1e-11, &case);
                let x = x.contiguous();
                assert_close(&padded_winograd_and_libtorch(&x, &wt, &probe, gathered), 1e-11, &(case + ", NCHW"));
            }
        }
        let x = crate::nn::channels_last(&Tensor::randn([16, 128, 7, 7], (Kind::Float, Device::Cpu)));
        let wt = Tensor::randn([256, 128, 2, 2], (Kind::Float, Device::Cpu)) * 0.05;
        let probe = Tensor::randn([16, 64, 14, 14], (Kind::Float, Device::Cpu));
        assert_close(
            &padded_winograd_and_libtorch(&x, &wt, &probe, true),
            0.0,
            &format!("level {level}: MNIST's wide layer"),
        );
    }

    /// conv_max_pool where its 3x3 convolutions take Winograd's form (csrc/winograd.h: 16
    /// channels or more, channels-last), the pool's backward scattered into its transform an image
    /// at a time: against libtorch's convolution and max-pool, to second order with respect to the
    /// input and to the weight. 30 images of 14x14 are two chunks of tiles; odd sizes overhang.
    #[test]
    fn winograd_conv_max_pool_matches_libtorch_to_second_order() {
        let native = |x: &Tensor, w: &Tensor| {
            x.conv2d(w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1).max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false)
        };
        // In float32 too: base_fc trains through this form.
        let shapes = [(30, 16, 17, 14, 14), (2, 17, 16, 6, 8), (2, 16, 16, 7, 9)];
        for ((n, c, k, h, w), kind) in shapes.into_iter().flat_map(|s| [(s, Kind::Double), (s, Kind::Float)]) {
            let nhwc = |t: Tensor| t.to_kind(kind).permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
            let x = nhwc(leaf(&[n, c, h, w], 1).detach());
            let weight = nhwc(leaf(&[k, c, 3, 3], 2).detach());
            let input = x.set_requires_grad(true);
            assert_same_to_second_order(&input, |x| conv_max_pool(x, &weight, 1, 1), |x| native(x, &weight));
            let weight = weight.set_requires_grad(true);
            assert_same_to_second_order(&weight, |w| conv_max_pool(&x, w, 1, 1), |w| native(&x, w));
        }
    }

    /// A third derivative (the gradient of a meta-gradient taken with `create_graph`) runs the
    /// meta-backward's ops with a graph, where our kernels, which record none, give way to
    /// libtorch's: against libtorch's convolution and max-pool, for the fused first layer's cases
    /// (a 1x1 convolution, channels-last and not, and a one-channel image's 3x3 one), Winograd's
    /// and the plain convolution.
    #[test]
    fn conv_max_pool_is_differentiable_three_times() {
        for (c, k, size, h, w, channels_last) in [
            (9, 5, 1, 6, 5, true),
            (9, 5, 1, 6, 5, false),
            (1, 5, 3, 6, 5, false),
            (16, 16, 3, 6, 8, true),
            (3, 4, 3, 5, 5, false),
        ] {
            let (x, weight) = (leaf(&[2, c, h, w], 1).detach(), leaf(&[k, c, size, size], 2).detach());
            let (x, weight) = if channels_last {
                (crate::nn::channels_last(&x), crate::nn::channels_last(&weight))
            } else {
                (x, weight)
            };
            let (x, weight) = (x.set_requires_grad(true), weight.set_requires_grad(true));
            let pad = size / 2;
            let third = |f: &dyn Fn(&Tensor, &Tensor) -> Tensor| {
                let y = f(&x, &weight);
                let inner = crate::nn::grads(&[(&y * &y).sum(Kind::Double)], &[&weight], true, true);
                let meta = crate::nn::grads(&[inner[0].square().sum(Kind::Double)], &[&x, &weight], true, true);
                let loss = meta[0].square().sum(Kind::Double) + meta[1].square().sum(Kind::Double);
                crate::nn::grads(&[loss], &[&x, &weight], false, false)
            };
            let ours = third(&|x, w| conv_max_pool(x, w, 1, pad));
            let theirs = third(&|x, w| {
                x.conv2d(w, None::<Tensor>, [1, 1], [pad, pad], [1, 1], 1).max_pool2d(
                    [3, 3],
                    [2, 2],
                    [1, 1],
                    [1, 1],
                    false,
                )
            });
            for (a, b) in ours.iter().zip(&theirs) {
                let err = (a - b).abs().max().double_value(&[]) / b.abs().max().double_value(&[]).max(1.0);
                assert!(err < 1e-10, "{c} -> {k} channels, {size}x{size}, channels-last {channels_last}: {err:e}");
            }
        }
    }

    extern "C" {
        fn gtn_kernel_threads(items: i64) -> i64;
    }

    #[test]
    fn our_kernels_run_on_every_thread() {
        // At least one item per thread: libtorch never starts more threads than items.
        let items = 64 * i64::from(tch::get_num_threads());
        // SAFETY: no arguments but a count.
        let used = unsafe { gtn_kernel_threads(items) };
        assert_eq!(used, i64::from(tch::get_num_threads()), "csrc's parallel_for ran on {used} threads");
    }

    #[test]
    fn winograd_refuses_what_it_does_not_compute() {
        // Eight input channels: too few for the products to pay for the transforms.
        let x = Tensor::ones([1, 8, 6, 4], (Kind::Float, Device::Cpu));
        let w = Tensor::ones([16, 8, 3, 3], (Kind::Float, Device::Cpu));
        // SAFETY: live tensors for the duration of the call.
        let err = std::panic::catch_unwind(|| owned(unsafe { gtn_winograd_conv(x.as_ptr(), w.as_ptr()) }, "winograd"));
        let message = err.unwrap_err().downcast_ref::<String>().cloned().unwrap();
        assert!(message.contains("not a convolution Winograd's form takes"), "{message}");
        // A gradient of another batch than the input's (it read past the input).
        let (x, w) = (
            Tensor::ones([2, 16, 6, 4], (Kind::Float, Device::Cpu)),
            Tensor::ones([16, 16, 3, 3], (Kind::Float, Device::Cpu)),
        );
        let g = Tensor::ones([3, 16, 6, 4], (Kind::Float, Device::Cpu));
        // SAFETY: live tensors for the duration of the call.
        let grad = || owned(unsafe { gtn_winograd_grad(g.as_ptr(), x.as_ptr(), w.as_ptr(), true) }, "winograd");
        let message = std::panic::catch_unwind(grad).unwrap_err().downcast_ref::<String>().cloned().unwrap();
        assert!(message.contains("output gradient [3, 16, 6, 4] does not match input [2, 16, 6, 4]"), "{message}");
    }

    #[test]
    fn errors_name_the_op() {
        let x = Tensor::ones([1, 3, 4, 4], (Kind::Float, Device::Cpu));
        let w = Tensor::ones([2, 5, 3, 3], (Kind::Float, Device::Cpu));
        let err = std::panic::catch_unwind(|| conv_max_pool(&x, &w, 1, 1)).unwrap_err();
        let message = err.downcast_ref::<String>().unwrap();
        assert!(message.starts_with("conv_max_pool: ") && message.contains("channels"), "{message}");
        let bias = Tensor::zeros([3], (Kind::Float, Device::Cpu));
        let err = std::panic::catch_unwind(|| bn_leaky_relu(&x, &bias, -0.1)).unwrap_err();
        let message = err.downcast_ref::<String>().unwrap();
        assert!(message.starts_with("bn_leaky_relu: ") && message.contains("slope -0.1"), "{message}");
        let err = std::panic::catch_unwind(|| leaky_relu(&x, -0.1)).unwrap_err();
        let message = err.downcast_ref::<String>().unwrap();
        assert!(message.starts_with("leaky_relu: ") && message.contains("slope -0.1, expected >= 0"), "{message}");
        let err = std::panic::catch_unwind(|| row_norm(&bias)).unwrap_err();
        let message = err.downcast_ref::<String>().unwrap();
        assert!(message.starts_with("row_norm: ") && message.contains("at least 2 dimensions"), "{message}");
    }
}
