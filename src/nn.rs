//! Functional layers: every function takes its parameters explicitly, so a network is plain
//! code over a parameter list and the inner-loop unroll can differentiate through it.

use rand::{rngs::StdRng, Rng};
use rand_distr::StandardNormal;
use tch::{Device, Kind, Tensor};

/// Slope of the LeakyReLU used throughout the reference design.
pub const LEAKY_SLOPE: f64 = 0.1;
const BN_EPS: f64 = 1e-5;

/// How a parameter tensor is initialised.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Normal with std sqrt(2 / fan_in), fan_in = product of all but the first dimension.
    KaimingNormal,
    /// The weight-norm gain: the per-output-unit norm of the preceding `v`, so w = v at start.
    GainOfPrevious,
    Zeros,
    Ones,
}

/// Name, shape and initialisation of one parameter; a network is a list of these.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<i64>,
    pub init: Init,
}

impl ParamSpec {
    pub fn new(name: impl Into<String>, shape: &[i64], init: Init) -> ParamSpec {
        ParamSpec { name: name.into(), shape: shape.to_vec(), init }
    }
}

/// Specs for a weight-normalised layer `prefix`: direction `v` and gain `g`, plus a bias if asked.
pub fn wn_specs(prefix: &str, v_shape: &[i64], bias: bool) -> Vec<ParamSpec> {
    let mut specs = vec![
        ParamSpec::new(format!("{prefix}.v"), v_shape, Init::KaimingNormal),
        ParamSpec::new(format!("{prefix}.g"), &[v_shape[0]], Init::GainOfPrevious),
    ];
    if bias {
        specs.push(ParamSpec::new(format!("{prefix}.b"), &[v_shape[0]], Init::Zeros));
    }
    specs
}

/// Standard-normal samples from our own seeded stream. Torch's generator is global to the
/// process, so tests running in parallel threads would race on it; this one is not shared.
pub fn randn(rng: &mut StdRng, shape: &[i64], kind: Kind, device: Device) -> Tensor {
    let n: i64 = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| rng.sample::<f32, _>(StandardNormal)).collect();
    Tensor::from_slice(&values).view(shape).to_kind(kind).to_device(device)
}

/// Draws fresh parameters; the tensors are leaves that require gradients. Computed on the CPU,
/// then moved to `device`: the same draws give the same values on every device (a GPU sums a
/// gain's norm in another order).
pub fn init_params(specs: &[ParamSpec], rng: &mut StdRng, kind: Kind, device: Device) -> Vec<Tensor> {
    let mut out: Vec<Tensor> = Vec::with_capacity(specs.len());
    for spec in specs {
        let t = match spec.init {
            Init::KaimingNormal => {
                let fan_in: i64 = spec.shape[1..].iter().product();
                randn(rng, &spec.shape, kind, Device::Cpu) * (2.0 / fan_in as f64).sqrt()
            }
            Init::GainOfPrevious => {
                let v = out.last().expect("a gain follows its direction tensor");
                row_norm(v).view([-1])
            }
            Init::Zeros => Tensor::zeros(spec.shape.as_slice(), (kind, Device::Cpu)),
            Init::Ones => Tensor::ones(spec.shape.as_slice(), (kind, Device::Cpu)),
        };
        assert_eq!(t.size(), spec.shape, "{}: init produced a wrong shape", spec.name);
        out.push(t.detach());
    }
    out.into_iter().map(|t| t.to_device(device).set_requires_grad(true)).collect()
}

/// Norm of each output unit's weights (dimension 0), keeping dimensions for broadcasting.
///
/// A C++ autograd function ([`crate::custom::row_norm`]) whose backward is one product with `v`:
/// neither `square` (whose gradient `grad · 2 · v¹`, a `pow`, is a new weight-sized tensor a
/// differentiated inner gradient keeps per step, 6.4 MB for base_fc's 6272 x 256 layer) nor `v *
/// v` (two products and their sum per backward).
fn row_norm(v: &Tensor) -> Tensor {
    crate::custom::row_norm(v)
}

/// Weight normalisation: w = g · v / ‖v‖ per output unit.
pub fn weight_norm(v: &Tensor, g: &Tensor) -> Tensor {
    let mut shape = vec![-1i64];
    shape.resize(v.dim(), 1);
    v * (g.view(shape.as_slice()) / row_norm(v))
}

/// Weight-normalised linear layer, `x · (g · v / ‖v‖)ᵀ + b`, with the per-unit factor `g / ‖v‖`
/// applied to the `[N, out]` output instead of the `[out, in]` weight. In a differentiated unroll
/// the weight form keeps two weight-sized tensors per step (the normalised weight, and the
/// gradient with respect to it, which its product with the factor holds on to): 13 MB per inner
/// step for base_fc's 6272 x 256 layer. This form keeps only the `[N, out]` product.
pub fn wn_linear(x: &Tensor, v: &Tensor, g: &Tensor, b: Option<&Tensor>) -> Tensor {
    let y = x.linear(v, None::<Tensor>) * (g / row_norm(v).view([-1]));
    match b {
        Some(b) => y + b,
        None => y,
    }
}

/// Weight-normalised 3x3 convolution with zero padding 1 (same size at stride 1).
///
/// On a one-channel input it runs as a 1x1 convolution of the image's nine shifted copies
/// (im2col); base_fc's first layer, which is followed by a max-pool, builds them inside
/// [`wn_conv3x3_max_pool`]'s fused kernels instead, on the CPU. The meta-gradient needs the
/// gradient with respect to that input (to reach the generator), and libtorch's 3x3 convolution
/// reduces 64 channels into one at ~13 GFLOP/s (its one-output-channel kernels: 2 x 8.7 ms per
/// base_fc inner step, in the meta-backward and in the double backward of the weight gradient);
/// the 1x1 form reduces them into nine at the usual rate. base_fc's first block (convolution,
/// max-pool, batch norm, leaky ReLU), forward, inner gradient and meta-backward: 1.9 -> 1.5 s per
/// T = 32 meta-step when base_fc took this form, though the forward alone is slower (7 vs 5 ms);
/// it keeps the nine copies (3.6 MB per inner step of 128 images) instead of the image. Three
/// input channels (CIFAR) are slower this way (1.6 -> 1.8 s), so they keep the plain convolution.
///
/// The one-channel form lays its patches and weight out channels-last, and a channels-last input
/// gets a channels-last weight, so libtorch runs the convolution, its gradients and its double
/// backward in that layout, outputs included: from base_fc's first layer on, oneDNN's kernels
/// work on the tensors as they are, where NCHW tensors were converted to its blocked layout and
/// back around every call (1.4 s of base_fc's 6.3 s of oneDNN time per meta-step,
/// `ONEDNN_VERBOSE=1`). An NCHW input with several channels stays NCHW: the CIFAR learner,
/// which has no max-pool, was 2-3% slower channels-last.
pub fn wn_conv3x3(x: &Tensor, v: &Tensor, g: &Tensor, b: Option<&Tensor>, stride: i64) -> Tensor {
    let (input, weight, stride, padding) = conv3x3_operands(x, &weight_norm(v, g), stride);
    input.conv2d(&weight, b, [stride, stride], [padding, padding], [1, 1], 1)
}

/// [`wn_conv3x3`] (stride 1, no bias) followed by a 3x3 max-pool with stride 2 and padding 1,
/// which halves the spatial size (rounding up), as one C++ autograd function
/// ([`crate::custom::conv_max_pool`]) whose graph keeps neither the convolution's output nor, in
/// a differentiated inner gradient, the gradient with respect to it: per base_fc inner step of
/// 128 images, 38 MB of convolution outputs (both layers', which libtorch's gather or max-pool
/// keeps for a backward that reads only their shape) and 38 MB of gradients with respect to them
/// (four times the pooled ones, which the convolution's double backward reads; the pooled
/// gradient is kept and scattered again when the meta-backward needs it), and the arg-max as
/// int32 instead of int64 (9.6 MB).
///
/// On a one-channel input, the convolution, the pool and their gradients run fused, an image at
/// a time in cache (csrc/pointwise_pool.h), the image's nine shifted copies built there too: the
/// convolution's output and its gradient, 25.7 MB each per base_fc batch of 128, never go
/// through memory, and neither do the copies (libtorch's im2col and col2im, below, ran serially
/// and the graph kept the copies, 3.6 MB per inner step). On a channels-last input with at least
/// 16 channels in and out (base_fc's second layer), Winograd's kernels (csrc/winograd.h) compute
/// the convolution and pool it with their own int32 arg-max. Elsewhere (fewer channels, NCHW, a
/// GPU) the arg-max comes from libtorch's channels-last max-pool kernel (~10x faster than its
/// NCHW one), and the values are
/// gathered at it along `[N, H·W, C]` rows of a channels-last tensor: gathering along the spatial
/// dimension of that layout, or converting layouts, cost more than the layout saves in the
/// convolutions. Forward, backward and double backward of a gather took
/// 0.6x the time of libtorch's own max-pool on 2 CPU cores.
pub fn wn_conv3x3_max_pool(x: &Tensor, v: &Tensor, g: &Tensor) -> Tensor {
    // Elsewhere (a GPU) the im2col form below: libtorch's direct one-channel convolution is the
    // slow reduction that form avoids on the CPU, where the fused kernels take the image itself.
    if x.size()[1] == 1 && crate::custom::cpu_kernels_take(x.device()) {
        return crate::custom::conv_max_pool(x, &weight_norm(v, g), 1, 1);
    }
    let (input, weight, stride, padding) = conv3x3_operands(x, &weight_norm(v, g), 1);
    crate::custom::conv_max_pool(&input, &weight, stride, padding)
}

/// What a 3x3 convolution of `x` with zero padding 1 runs as: (input, weight, stride, padding).
fn conv3x3_operands(x: &Tensor, weight: &Tensor, stride: i64) -> (Tensor, Tensor, i64, i64) {
    let size = x.size();
    if size[1] == 1 {
        let (h, w) = ((size[2] - 1) / stride + 1, (size[3] - 1) / stride + 1);
        let patches = x.im2col([3, 3], [1, 1], [1, 1], [stride, stride]); // [N, 9, h·w]
        let shifted = channels_last(&patches.view([size[0], 9, h, w]));
        (shifted, channels_last(&weight.view([-1, 9, 1, 1])), 1, 0)
    } else if is_channels_last(x) {
        (x.shallow_clone(), channels_last(weight), stride, 1)
    } else {
        (x.shallow_clone(), weight.shallow_clone(), stride, 1)
    }
}

/// The same `[N, C, H, W]` tensor laid out channels-last (NHWC) in memory.
pub(crate) fn channels_last(x: &Tensor) -> Tensor {
    x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

fn is_channels_last(x: &Tensor) -> bool {
    x.stride()[1] == 1
}

/// Mean-only batch norm (subtract the batch mean per channel, add a learned bias; no variance, no
/// running statistics: it uses the batch it is given; see [`Norm`] for scoring with a training
/// batch's statistics instead), then
/// [`leaky_relu`], as one autograd node ([`crate::custom::bn_leaky_relu`]) keeping only its
/// output. Its derivatives are two linear maps, each the other's derivative, that make two passes
/// over the data on the CPU, where the two layers as libtorch's ops (a sum, an addition and the
/// activation), their backwards and double backwards made three to five each.
pub fn bn_leaky_relu(x: &Tensor, bias: &Tensor) -> Tensor {
    crate::custom::bn_leaky_relu(x, bias, LEAKY_SLOPE)
}

/// Full batch norm with batch statistics (the generator always sees a whole batch), no running
/// statistics. libtorch's fused op keeps only its input and two per-channel vectors for the
/// backward; the same formula composed of tensor ops kept the centred and the normalised tensor
/// as well and took six passes over the data.
pub fn batch_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor) -> Tensor {
    Tensor::batch_norm(x, Some(gamma), Some(beta), None::<&Tensor>, None::<&Tensor>, true, 0.0, BN_EPS, true)
}

/// Where a learner's batch-norm layers take their statistics from. Training always uses the
/// batch being forwarded; scoring (meta-loss, test accuracy) can use either that batch too, or
/// the statistics of the learner's last training batch, as the reference's learners are scored:
/// in eval mode, their running statistics updated with momentum 0 (a `lerp` all the way to each
/// batch's), so holding the last training batch's.
pub enum Norm<'a> {
    /// The batch being forwarded.
    Batch,
    /// The batch being forwarded, keeping each layer's statistics in layer order (mean-only
    /// layers: the mean; full batch norm: the mean, then the biased variance it normalised with).
    /// They keep their graph: a loss scored with them differentiates into the training batch.
    Record(Vec<Tensor>),
    /// Statistics recorded by [`Norm::Record`], consumed in the same order (`used` so far).
    Given { stats: &'a [Tensor], used: usize },
    /// No statistics yet (a learner scored before its first training step): the reference's
    /// initial running statistics, mean 0 and variance 1.
    Init,
}

impl Norm<'_> {
    /// `forward` run with [`Norm::Record`]: its result and the statistics it recorded.
    pub fn recorded<T>(forward: impl FnOnce(&mut Norm) -> T) -> (T, Vec<Tensor>) {
        let mut norm = Norm::Record(Vec::new());
        let out = forward(&mut norm);
        let Norm::Record(stats) = norm else { unreachable!("a recording stays a recording") };
        (out, stats)
    }

    /// `forward` run with [`Norm::Given`] `stats`, which it must consume to the last: statistics
    /// left over were recorded by another network.
    pub fn given<T>(stats: &[Tensor], forward: impl FnOnce(&mut Norm) -> T) -> T {
        let mut norm = Norm::Given { stats, used: 0 };
        let out = forward(&mut norm);
        let Norm::Given { used, .. } = norm else { unreachable!("given statistics stay given") };
        assert_eq!(used, stats.len(), "batch-norm statistics given, more than the network's layers took");
        out
    }

    /// [`bn_leaky_relu`] with this source of statistics.
    pub fn bn_leaky_relu(&mut self, x: &Tensor, bias: &Tensor) -> Tensor {
        match self {
            Norm::Batch => bn_leaky_relu(x, bias),
            Norm::Record(stats) => {
                stats.push(x.mean_dim(channel_dims(x), false, None::<Kind>));
                bn_leaky_relu(x, bias)
            }
            Norm::Given { stats, used } => {
                let mean = next_stat(stats, used);
                leaky_relu(&(x + per_channel(x, &(bias - mean))))
            }
            Norm::Init => leaky_relu(&(x + per_channel(x, bias))),
        }
    }

    /// [`batch_norm`] with this source of statistics.
    pub fn batch_norm(&mut self, x: &Tensor, gamma: &Tensor, beta: &Tensor) -> Tensor {
        match self {
            Norm::Batch => batch_norm(x, gamma, beta),
            Norm::Record(stats) => {
                let (var, mean) = x.var_mean_correction(channel_dims(x), 0, false);
                stats.extend([mean, var]);
                batch_norm(x, gamma, beta)
            }
            Norm::Given { stats, used } => {
                let (mean, var) = (next_stat(stats, used), next_stat(stats, used));
                let scale = gamma * (var + BN_EPS).rsqrt();
                (x - per_channel(x, mean)) * per_channel(x, &scale) + per_channel(x, beta)
            }
            Norm::Init => x * per_channel(x, &(gamma / (1.0 + BN_EPS).sqrt())) + per_channel(x, beta),
        }
    }
}

/// The next of the given statistics, which must have been recorded by the same network.
fn next_stat<'a>(stats: &'a [Tensor], used: &mut usize) -> &'a Tensor {
    let stat = stats.get(*used).unwrap_or_else(|| {
        panic!("the network's batch-norm layers take more than the {} statistics given", stats.len())
    });
    *used += 1;
    stat
}

/// The dimensions batch statistics reduce over: all but the channels (dimension 1).
fn channel_dims(x: &Tensor) -> Vec<i64> {
    (0..x.dim() as i64).filter(|&d| d != 1).collect()
}

/// A per-channel vector shaped to broadcast against `x` (`[C]` -> `[1, C, 1, 1]` for images).
fn per_channel(x: &Tensor, v: &Tensor) -> Tensor {
    let mut shape = vec![1i64; x.dim()];
    shape[1] = -1;
    v.view(shape.as_slice())
}

/// Leaky ReLU with slope [`LEAKY_SLOPE`], as a C++ autograd function
/// ([`crate::custom::leaky_relu`]) that keeps its output for the backward, where libtorch's ops
/// keep their input: every leaky ReLU of the project but the CIFAR learner's last feeds a layer
/// that keeps that output anyway, so one tensor per activation is kept instead of two. Written
/// with tch's ops instead, it costs more: tch's `leaky_relu` has only PyTorch's default slope
/// 0.01, `a·x + (1 - a)·relu(x)` takes four passes, a select on `x > 0` 3x as long.
pub fn leaky_relu(x: &Tensor) -> Tensor {
    crate::custom::leaky_relu(x, LEAKY_SLOPE)
}

/// Nearest upsampling x2, reflection padding 1, then a 3x3 convolution (no padding): the
/// generator's upsampling block, computed without the upsampled image. Its kernels are derived
/// from the 3x3 weight once ([`UpsampleConv::new`]) and applied to many batches (the generator's
/// T batches of a meta-step), so the derivation and its gradient are not repeated per batch.
///
/// Each output pixel of a given row/column parity sees only 2x2 distinct low-resolution pixels,
/// so the block equals four 2x2 convolutions on the input with replicate padding 1 (reflection of
/// the upsampled image is replication at low resolution), one per parity, whose kernels sum the
/// 3x3 kernel's rows and columns that fall on the same low-resolution pixel: parity 0 uses
/// `[k0, k1 + k2]`, parity 1 uses `[k0 + k1, k2]`. 2.25x fewer multiply-adds and no large copy.
///
/// With few output channels (the image layer) four thin convolutions run far below the
/// machine's rate, and so do their gradients. There the block is one 1x1 convolution from the
/// input's channels to a group of `out` channels per (parity, kernel tap), a plain matrix product
/// with 16x the outputs, then each parity's four taps summed at their offsets. Forward and
/// backward of 32 batches on 2 CPU cores: MNIST's 64 -> 1 layer 0.42-0.45 -> 0.15-0.19 s against
/// the four kernels embedded in 3x3 ones as one convolution (itself 3x faster than four thin
/// convolutions), CIFAR's 64 -> 3 0.54 -> 0.40-0.43 s; the wide 128 -> 64 layer stays
/// with the 2x2 kernels (as one convolution, [`UpsampleConv::Split`]), 2x faster there.
#[derive(Debug)]
pub enum UpsampleConv {
    /// The four parities' 2x2 kernels stacked (parity `2 * row + col` is output group `parity`)
    /// as one convolution over the whole padded input, each parity cropping its own window.
    Split { kernels: Tensor, bias: Option<Tensor> },
    /// A 1x1 convolution to one group of `out` channels per (parity, kernel tap), then each
    /// parity's four taps summed at their offsets.
    Taps { kernels: Tensor, bias: Option<Tensor> },
}

impl UpsampleConv {
    pub fn new(weight: &Tensor, bias: Option<&Tensor>) -> UpsampleConv {
        // From 64 input channels on 2 cores: the taps are faster up to 8 outputs, not at 16.
        const TAPS_MAX_OUT_CHANNELS: i64 = 8;
        if weight.size()[0] <= TAPS_MAX_OUT_CHANNELS {
            UpsampleConv::taps(weight, bias)
        } else {
            UpsampleConv::split(weight, bias)
        }
    }

    fn split(weight: &Tensor, bias: Option<&Tensor>) -> UpsampleConv {
        let kernels: Vec<Tensor> = (0..4).map(|p| parity_kernel(weight, p / 2, p % 2)).collect();
        UpsampleConv::Split { kernels: Tensor::cat(&kernels, 0), bias: bias.map(Tensor::shallow_clone) }
    }

    /// Group `(4 * parity + tap) * out + o` of the 1x1 kernel is `[o, :, row, col]` of the
    /// parity's 2x2 kernel, for tap `2 * row + col`.
    fn taps(weight: &Tensor, bias: Option<&Tensor>) -> UpsampleConv {
        let (out, c_in) = (weight.size()[0], weight.size()[1]);
        let taps_first: Vec<Tensor> =
            (0..4).map(|p| parity_kernel(weight, p / 2, p % 2).permute([2, 3, 0, 1])).collect();
        UpsampleConv::Taps {
            kernels: Tensor::stack(&taps_first, 0).reshape([16 * out, c_in, 1, 1]),
            bias: bias.map(Tensor::shallow_clone),
        }
    }

    /// `[N, C, h, w]` -> `[N, out, 2h, 2w]`.
    pub fn apply(&self, x: &Tensor) -> Tensor {
        self.apply_activated(x, Tensor::shallow_clone)
    }

    /// [`UpsampleConv::apply`] to `activation(x)`, for an elementwise `activation` (it commutes
    /// with the padding). Each convolution keeps for its backward the tensor the activation
    /// returns (the wide layer's pads it itself, [`crate::custom::pad_conv_gather`]), so an
    /// activation that keeps its output (as [`leaky_relu`] does) keeps that same tensor, not a
    /// second one.
    pub fn apply_activated(&self, x: &Tensor, activation: impl Fn(&Tensor) -> Tensor) -> Tensor {
        let (h, w) = (x.size()[2], x.size()[3]);
        match self {
            UpsampleConv::Split { kernels, bias } => {
                // Over the whole padded input, each parity's output is its window's cropped out
                // of an output one pixel larger (1.31x the multiply-adds at MNIST's 7 x 7), but
                // no window is copied to be convolved, forward or backward, and one convolution
                // runs where four did: the wide 128 -> 64 layer's 32 batches, forward and
                // backward, 1.91-2.48 -> 1.79 s on 2 cores with oneDNN's kernels. On the CPU the
                // convolution takes Winograd's F(4x4, 2x2) (csrc/winograd.h), which writes the
                // gathered output without the grid. Channels-last from here on (the gather keeps
                // the layout, and the batch norm, activation and image layer after it follow):
                // Winograd's transforms read that layout without a copy, oneDNN's convolutions
                // (elsewhere) are faster in it, and the layer after this one gets no layout copy
                // (MLP meta-step 1.85-1.93 -> 1.69-1.84 s with oneDNN's kernels).
                with_bias(crate::custom::pad_conv_gather(&activation(&channels_last(x)), kernels), bias)
            }
            UpsampleConv::Taps { kernels, bias } => {
                // Padding commutes with a 1x1 convolution, so its thinner output is padded.
                let y = activation(x).conv2d(kernels, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1);
                with_bias(crate::custom::parity_gather(&crate::custom::replicate_pad1(&y), 4, h, w), bias)
            }
        }
    }
}

/// `y` `[N, C, H, W]` plus a per-channel `bias`, if any.
fn with_bias(y: Tensor, bias: &Option<Tensor>) -> Tensor {
    match bias {
        Some(b) => y + b.view([1, -1, 1, 1]),
        None => y,
    }
}

/// The 2x2 kernel of output parity `(row, col)`: rows, then columns, of the 3x3 kernel summed
/// where they fall on the same low-resolution pixel.
fn parity_kernel(weight: &Tensor, row: i64, col: i64) -> Tensor {
    let collapse = |k: &Tensor, dim: i64, parity: i64| {
        let (head, tail) = if parity == 0 { (1, 2) } else { (2, 1) };
        let first = k.narrow(dim, 0, head).sum_dim_intlist(dim, true, None::<Kind>);
        let second = k.narrow(dim, head, tail).sum_dim_intlist(dim, true, None::<Kind>);
        Tensor::cat(&[first, second], dim)
    };
    collapse(&collapse(weight, 2, row), 3, col)
}

/// Cross-entropy of logits against hard labels (int64 `[N]`) or soft ones (probabilities `[N, K]`).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Tensor {
    let logp = logits.log_softmax(-1, None::<Kind>);
    if targets.kind() == Kind::Int64 {
        logp.nll_loss(targets)
    } else {
        -(logp * targets).sum_dim_intlist(-1, false, None::<Kind>).mean(None::<Kind>)
    }
}

/// Whether every element of `t` is a finite number.
pub fn all_finite(t: &Tensor) -> bool {
    first_non_finite(std::slice::from_ref(t)).is_none()
}

/// The index of the first tensor holding a NaN or infinite value, if any (one wait for the
/// device, not one per tensor).
pub fn first_non_finite(tensors: &[Tensor]) -> Option<usize> {
    let flags: Vec<Tensor> = tensors.iter().map(|t| t.isfinite().all()).collect();
    let flags = Vec::<bool>::try_from(Tensor::stack(&flags, 0)).expect("booleans");
    flags.iter().position(|&finite| !finite)
}

/// The gradients of the sum of `roots` w.r.t. `inputs` (`Tensor::run_backward`), refusing a root
/// with no graph: libtorch's engine crashes the process on one instead of erring.
pub fn grads<R: std::borrow::Borrow<Tensor>, I: std::borrow::Borrow<Tensor>>(
    roots: &[R],
    inputs: &[I],
    keep_graph: bool,
    create_graph: bool,
) -> Vec<Tensor> {
    if let Some(k) = roots.iter().position(|r| !r.borrow().requires_grad()) {
        panic!(
            "backward: root {k} of {} has no graph (computed under no_grad, or from tensors that require no gradient)",
            roots.len()
        );
    }
    Tensor::run_backward(roots, inputs, keep_graph, create_graph)
}

/// Fraction of rows whose arg-max equals the label.
pub fn accuracy(logits: &Tensor, labels: &Tensor) -> f64 {
    logits.argmax(-1, false).eq_tensor(labels).to_kind(Kind::Double).mean(None::<Kind>).double_value(&[])
}

#[cfg(test)]
pub(crate) mod gradcheck {
    //! Finite-difference checks in float64.
    use tch::{Kind, Tensor};

    /// Largest relative error between the autograd gradient of `f` with respect to each input
    /// and a central finite difference, over `probes` random coordinates per input.
    pub fn max_rel_error(inputs: &[Tensor], f: &dyn Fn(&[Tensor]) -> Tensor, probes: usize) -> f64 {
        let loss = f(inputs);
        let grads = crate::nn::grads(&[loss], inputs, false, false);
        let h = 1e-5;
        let mut worst: f64 = 0.0;
        for (i, (x, g)) in inputs.iter().zip(&grads).enumerate() {
            let n = x.numel() as i64;
            for p in 0..probes.min(n as usize) as i64 {
                let k = (p * 7919 + i as i64 * 104729) % n;
                let eval = |delta: f64| {
                    let moved: Vec<Tensor> = inputs
                        .iter()
                        .enumerate()
                        .map(|(j, y)| {
                            let y = y.detach().copy();
                            if j == i {
                                let _ = y.view([-1]).get(k).g_add_scalar_(delta);
                            }
                            y
                        })
                        .collect();
                    f(&moved).double_value(&[])
                };
                let numeric = (eval(h) - eval(-h)) / (2.0 * h);
                let analytic = g.reshape([-1]).double_value(&[k]);
                let err = (numeric - analytic).abs() / (numeric.abs().max(analytic.abs()).max(1e-4));
                worst = worst.max(err);
            }
        }
        worst
    }

    /// `y` and the gradients of `sum(y · probe)` (in `y`'s kind) with respect to two inputs.
    pub fn value_and_grads(y: &Tensor, probe: &Tensor, inputs: [&Tensor; 2]) -> [Tensor; 3] {
        let grads = crate::nn::grads(&[(y * probe).sum(y.kind())], &inputs, false, false);
        [y.detach(), grads[0].shallow_clone(), grads[1].shallow_clone()]
    }

    pub fn leaf(shape: &[i64], seed: u64) -> Tensor {
        let mut rng = rand::SeedableRng::seed_from_u64(seed);
        super::randn(&mut rng, shape, Kind::Double, tch::Device::Cpu).set_requires_grad(true)
    }

    /// A fixed projection turns an output into a scalar loss with generic gradients.
    pub fn project(y: &Tensor) -> Tensor {
        let w = Tensor::arange(y.numel() as i64, (Kind::Double, y.device())).g_mul_scalar(0.37).sin();
        (y * w.view(y.size().as_slice())).sum(None::<Kind>)
    }
}

#[cfg(test)]
mod tests {
    use super::gradcheck::{leaf, max_rel_error, project, value_and_grads};
    use super::*;

    const TOL: f64 = 1e-6;

    fn check(inputs: &[Tensor], f: &dyn Fn(&[Tensor]) -> Tensor) {
        let err = max_rel_error(inputs, f, 20);
        assert!(err < TOL, "finite-difference relative error {err:e} exceeds {TOL:e}");
    }

    #[test]
    fn weight_norm_has_gain_as_row_norm() {
        let v = leaf(&[5, 3, 3, 3], 1);
        let g = Tensor::from_slice(&[1.0, 2.0, 3.0, 4.0, 5.0f64]);
        let w = weight_norm(&v, &g);
        let norms = w.square().sum_dim_intlist([1i64, 2, 3].as_slice(), false, None::<Kind>).sqrt();
        assert!(norms.allclose(&g, 1e-12, 1e-12, false));
    }

    #[test]
    fn init_gain_reproduces_direction() {
        let specs = wn_specs("l", &[4, 6], true);
        let p = init_params(&specs, &mut rand::SeedableRng::seed_from_u64(0), Kind::Double, Device::Cpu);
        assert!(weight_norm(&p[0], &p[1]).allclose(&p[0], 1e-12, 1e-12, false));
        assert_eq!(p[2].size(), [4]);
        // Kaiming's std for fan-in 200 is sqrt(2 / 200) = 0.1; 51,200 draws pin it to about 0.3%.
        let p = init_params(
            &wn_specs("l", &[256, 200], true),
            &mut rand::SeedableRng::seed_from_u64(0),
            Kind::Double,
            Device::Cpu,
        );
        let std = f64::try_from(p[0].std(true)).unwrap();
        assert!((std - 0.1).abs() < 0.002, "kaiming std for fan-in 200 is 0.1, got {std}");
    }

    #[test]
    fn given_statistics_must_be_the_networks_own() {
        let x = leaf(&[4, 3], 1);
        let bias = Tensor::zeros([3], (Kind::Double, Device::Cpu));
        let (_, stats) = Norm::recorded(|norm| norm.bn_leaky_relu(&x, &bias));
        assert_eq!(stats.len(), 1);
        let _ = Norm::given(&stats, |norm| norm.bn_leaky_relu(&x, &bias));
        let too_few = std::panic::catch_unwind(|| Norm::given(&[], |norm| norm.bn_leaky_relu(&x, &bias)));
        let message = *too_few.unwrap_err().downcast::<String>().unwrap();
        assert_eq!(message, "the network's batch-norm layers take more than the 0 statistics given");
        let too_many = std::panic::catch_unwind(|| {
            Norm::given(&[stats[0].shallow_clone(), stats[0].shallow_clone()], |norm| norm.bn_leaky_relu(&x, &bias))
        });
        let message = *too_many.unwrap_err().downcast::<String>().unwrap();
        assert!(
            message.starts_with(
                "assertion `left == right` failed: batch-norm statistics given, more than the network's layers took"
            ),
            "{message}"
        );
    }

    #[test]
    fn gradcheck_wn_linear() {
        let inputs = [leaf(&[6, 5], 1), leaf(&[4, 5], 2), leaf(&[4], 3), leaf(&[4], 4)];
        let f = |p: &[Tensor]| project(&wn_linear(&p[0], &p[1], &p[2], Some(&p[3])));
        check(&inputs, &f);
    }

    #[test]
    fn gradcheck_wn_conv() {
        let inputs = [leaf(&[2, 3, 6, 6], 1), leaf(&[4, 3, 3, 3], 2), leaf(&[4], 3), leaf(&[4], 4)];
        for stride in [1, 2] {
            let f = |p: &[Tensor]| project(&wn_conv3x3(&p[0], &p[1], &p[2], Some(&p[3]), stride));
            check(&inputs, &f);
        }
    }

    #[test]
    fn gradcheck_bn_leaky_relu_and_batch_norm() {
        let inputs = [leaf(&[4, 3, 5, 5], 1), leaf(&[3], 2), leaf(&[3], 3)];
        let f = |p: &[Tensor]| project(&bn_leaky_relu(&p[0], &p[1]));
        check(&inputs[..2], &f);
        let f = |p: &[Tensor]| project(&batch_norm(&p[0], &p[1], &p[2]));
        check(&inputs, &f);
        let flat = [leaf(&[8, 5], 4), leaf(&[5], 5)];
        let f = |p: &[Tensor]| project(&bn_leaky_relu(&p[0], &p[1]));
        check(&flat, &f);
    }

    /// Mean-only batch norm then leaky ReLU in libtorch's ops.
    fn composite_bn_leaky_relu(x: &Tensor, bias: &Tensor) -> Tensor {
        let centred = x - x.mean_dim(channel_dims(x).as_slice(), true, None::<Kind>) + per_channel(x, bias);
        centred.maximum(&(&centred * LEAKY_SLOPE))
    }

    /// The fused node against its formula in values and three derivatives with respect to both
    /// inputs (the meta-gradient takes two; the adjoint pair closes under more), for matrices and
    /// images in either layout, which take the CPU kernels, and a 3-d tensor, which does not.
    #[test]
    fn bn_leaky_relu_equals_its_formula_to_third_order() {
        for (shape, channels_last) in
            [(&[6i64, 5][..], false), (&[4, 3, 5, 6], false), (&[4, 3, 5, 6], true), (&[5, 4, 3], false)]
        {
            let x = leaf(shape, 1).detach();
            let x = if channels_last { super::channels_last(&x) } else { x }.set_requires_grad(true);
            let inputs = [x, leaf(&[shape[1]], 2)];
            let probe = leaf(shape, 3).detach();
            let derivatives = |f: &dyn Fn(&[Tensor]) -> Tensor| {
                let y = f(&inputs);
                let mut out = vec![y.detach()];
                let mut loss = (&y * &probe).sum(Kind::Double) + y.square().sum(Kind::Double);
                for order in 1..=3 {
                    let grads = crate::nn::grads(&[&loss], &inputs, true, order < 3);
                    loss = grads.iter().map(|g| g.square().sum(Kind::Double)).sum::<Tensor>();
                    out.extend(grads.iter().map(Tensor::detach));
                }
                out
            };
            let fused = derivatives(&|p| bn_leaky_relu(&p[0], &p[1]));
            let plain = derivatives(&|p| composite_bn_leaky_relu(&p[0], &p[1]));
            assert_eq!(fused[0].stride(), inputs[0].stride(), "{shape:?}: the output keeps the input's layout");
            for (i, (a, b)) in fused.iter().zip(&plain).enumerate() {
                let err = (a - b).abs().max().double_value(&[]) / b.abs().max().double_value(&[]).max(1.0);
                assert!(err < 1e-12, "{shape:?}: result {i} differs by {err:e}");
            }
        }
    }

    /// The float32 kernels the learners run, on a channels-last image batch and on one channel
    /// (contiguous in both layouts): value and first derivatives within float32 rounding. The
    /// shape of base_fc's first layer spreads its rows over many tasks (per-thread partial sums).
    #[test]
    fn bn_leaky_relu_in_float32() {
        for shape in [[8i64, 16, 7, 7], [4, 1, 5, 6], [128, 64, 14, 14]] {
            let x = channels_last(&leaf(&shape, 1).detach().to_kind(Kind::Float)).set_requires_grad(true);
            let bias = leaf(&[shape[1]], 2).detach().to_kind(Kind::Float).set_requires_grad(true);
            let probe = leaf(&shape, 3).detach().to_kind(Kind::Float);
            let fused = value_and_grads(&bn_leaky_relu(&x, &bias), &probe, [&x, &bias]);
            let plain = value_and_grads(&composite_bn_leaky_relu(&x, &bias), &probe, [&x, &bias]);
            for ((a, b), what) in fused.iter().zip(&plain).zip(["values", "input gradient", "bias gradient"]) {
                let err = (a - b).abs().max().double_value(&[]) / b.abs().max().double_value(&[]).max(1.0);
                assert!(err < 1e-5, "{shape:?}: {what} differ by {err:e}");
            }
        }
    }

    /// Batch norm written out: biased batch variance, as the fused op normalises with.
    fn composite_batch_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor) -> Tensor {
        let dims = channel_dims(x);
        let centred = x - x.mean_dim(dims.as_slice(), true, None::<Kind>);
        let var = centred.square().mean_dim(dims.as_slice(), true, None::<Kind>);
        centred / (var + BN_EPS).sqrt() * per_channel(x, gamma) + per_channel(x, beta)
    }

    #[test]
    fn fused_batch_norm_equals_its_formula_to_second_order() {
        for shape in [&[4i64, 3, 5, 5][..], &[6, 5]] {
            let c = shape[1];
            let inputs = [leaf(shape, 1), leaf(&[c], 2), leaf(&[c], 3)];
            let (fused, plain) = (
                batch_norm(&inputs[0], &inputs[1], &inputs[2]),
                composite_batch_norm(&inputs[0], &inputs[1], &inputs[2]),
            );
            assert!(fused.allclose(&plain, 1e-10, 1e-10, false), "{shape:?}: values differ");
            // The learners of the NAS search space differentiate it twice.
            let probe = leaf(shape, 4);
            let second = |y: &Tensor| {
                let grads = crate::nn::grads(&[project(y)], &inputs, true, true);
                let again: Tensor = grads.iter().map(|g| (g * g).sum(None::<Kind>)).sum::<Tensor>()
                    + (&grads[0] * &probe).sum(None::<Kind>);
                (grads, crate::nn::grads(&[again], &inputs, false, false))
            };
            let ((g_fused, h_fused), (g_plain, h_plain)) = (second(&fused), second(&plain));
            // An undefined gradient is libtorch's zero (beta enters linearly).
            let dense = |g: &Tensor, like: &Tensor| if g.defined() { g.shallow_clone() } else { like.zeros_like() };
            for ((a, b), x) in
                g_fused.iter().zip(&g_plain).chain(h_fused.iter().zip(&h_plain)).zip(inputs.iter().cycle())
            {
                assert!(dense(a, x).allclose(&dense(b, x), 1e-8, 1e-8, false), "{shape:?}: derivatives differ");
            }
        }
    }

    #[test]
    fn bn_leaky_relu_centres_each_channel() {
        let x = leaf(&[4, 3, 5, 5], 1) + 3.0;
        // With a bias this large every value is positive, where the activation is the identity.
        let bias = Tensor::from_slice(&[10.0, 11.0, 12.0f64]);
        let y = bn_leaky_relu(&x, &bias);
        let means = y.mean_dim([0i64, 2, 3].as_slice(), false, None::<Kind>);
        assert!(means.allclose(&bias, 1e-12, 1e-12, false));
        // Only a per-channel shift: y - x is constant within each channel.
        let spread = (&y - &x).std_dim([0i64, 2, 3].as_slice(), true, false).max().double_value(&[]);
        assert!(spread < 1e-12, "{spread}");
        // Below zero the activation is LEAKY_SLOPE times its input (the centred input plus the bias).
        let low = &bias * -10.0;
        let centred = &x - x.mean_dim([0i64, 2, 3].as_slice(), true, None::<Kind>) + low.view([1, 3, 1, 1]);
        assert!(centred.max().double_value(&[]) < 0.0);
        assert!(
            bn_leaky_relu(&x, &low).allclose(&(centred * LEAKY_SLOPE), 1e-12, 1e-12, false),
            "the slope below zero"
        );
    }

    /// Asserts that `fast` and `plain` agree on `inputs` in values, first derivatives (kept in the
    /// graph, as the unroll keeps them) and second derivatives.
    fn assert_same_to_second_order(
        inputs: &[Tensor],
        fast: &dyn Fn(&[Tensor]) -> Tensor,
        plain: &dyn Fn(&[Tensor]) -> Tensor,
    ) {
        let derivatives = |f: &dyn Fn(&[Tensor]) -> Tensor| {
            let y = f(inputs);
            let grads = crate::nn::grads(&[project(&y)], inputs, true, true);
            let again: Tensor = grads.iter().map(|g| (g * g).sum(None::<Kind>)).sum();
            let second = crate::nn::grads(&[again], inputs, false, false);
            (y, grads, second)
        };
        let ((y1, g1, h1), (y2, g2, h2)) = (derivatives(fast), derivatives(plain));
        assert!(y1.allclose(&y2, 1e-12, 1e-12, false), "values differ");
        // An undefined gradient is libtorch's zero (a bias enters linearly).
        let dense = |g: &Tensor, like: &Tensor| if g.defined() { g.shallow_clone() } else { like.zeros_like() };
        for ((a, b), x) in g1.iter().zip(&g2).chain(h1.iter().zip(&h2)).zip(inputs.iter().cycle()) {
            assert!(dense(a, x).allclose(&dense(b, x), 1e-10, 1e-12, false), "derivatives differ");
        }
    }

    #[test]
    fn wn_linear_equals_the_normalised_weight_to_second_order() {
        let inputs = [leaf(&[5, 7], 1), leaf(&[4, 7], 2), leaf(&[4], 3), leaf(&[4], 4)];
        assert_same_to_second_order(&inputs, &|p| wn_linear(&p[0], &p[1], &p[2], Some(&p[3])), &|p| {
            p[0].linear(&weight_norm(&p[1], &p[2]), Some(&p[3]))
        });
    }

    #[test]
    fn one_channel_conv_equals_libtorchs_to_second_order() {
        for (h, w, stride) in [(6, 5, 1), (7, 6, 2), (1, 2, 1)] {
            let inputs = [leaf(&[3, 1, h, w], 1), leaf(&[4, 1, 3, 3], 2), leaf(&[4], 3), leaf(&[4], 4)];
            let plain = |p: &[Tensor]| {
                p[0].conv2d(&weight_norm(&p[1], &p[2]), Some(&p[3]), [stride, stride], [1, 1], [1, 1], 1)
            };
            assert_same_to_second_order(&inputs, &|p| wn_conv3x3(&p[0], &p[1], &p[2], Some(&p[3]), stride), &plain);
            let unbiased = |p: &[Tensor]| wn_conv3x3(&p[0], &p[1], &p[2], None, stride);
            assert_eq!(unbiased(&inputs).size(), plain(&inputs).size(), "{h}x{w} stride {stride}");
        }
    }

    #[test]
    fn conv_layout_follows_the_input_and_one_channel_goes_channels_last() {
        let (v, g) = (leaf(&[4, 1, 3, 3], 1), leaf(&[4], 2));
        let first = wn_conv3x3(&leaf(&[2, 1, 6, 6], 3), &v, &g, None, 1);
        assert!(is_channels_last(&first), "one-channel input: strides {:?}", first.stride());
        let (v, g) = (leaf(&[5, 4, 3, 3], 4), leaf(&[5], 5));
        assert!(is_channels_last(&wn_conv3x3(&first, &v, &g, None, 1)), "channels-last input");
        let nchw = wn_conv3x3(&leaf(&[2, 4, 6, 6], 6), &v, &g, None, 2);
        assert!(!is_channels_last(&nchw) && nchw.is_contiguous(), "NCHW input: strides {:?}", nchw.stride());
    }

    #[test]
    fn replicate_pad_equals_libtorchs_to_second_order() {
        for shape in [[2, 3, 4, 5], [1, 2, 1, 3]] {
            // Squared, so that the gradient depends on the input and its derivative runs the
            // padding's backward's backward.
            let pad = |p: &[Tensor]| p[0].replication_pad2d([1, 1, 1, 1]).square();
            assert_same_to_second_order(&[leaf(&shape, 4)], &|p| crate::custom::replicate_pad1(&p[0]).square(), &pad);
        }
    }

    /// The reference composition the generator's fast upsampling block replaces.
    fn plain_upsample_conv(x: &Tensor, w: &Tensor, b: &Tensor) -> Tensor {
        let s = x.size();
        let up = x.upsample_nearest2d([s[2] * 2, s[3] * 2], 2.0, 2.0);
        up.reflection_pad2d([1, 1, 1, 1]).conv2d(w, Some(b), [1, 1], [0, 0], [1, 1], 1)
    }

    #[test]
    fn fast_upsample_conv_equals_upsample_pad_conv() {
        type Block = fn(&Tensor, &Tensor, Option<&Tensor>) -> Tensor;
        let fast: [Block; 3] = [
            |x, w, b| UpsampleConv::split(w, b).apply(x),
            |x, w, b| UpsampleConv::taps(w, b).apply(x),
            |x, w, b| UpsampleConv::new(w, b).apply(x),
        ];
        for (h, w, out) in [(7, 7, 4), (4, 6, 12), (1, 3, 1)] {
            let inputs = [leaf(&[2, 3, h, w], 1), leaf(&[out, 3, 3, 3], 2), leaf(&[out], 3)];
            let plain = |p: &[Tensor]| plain_upsample_conv(&p[0], &p[1], &p[2]);
            for f in fast {
                let y = f(&inputs[0], &inputs[1], Some(&inputs[2]));
                assert_eq!(y.size(), [2, out, 2 * h, 2 * w]);
                assert_same_to_second_order(&inputs, &|p| f(&p[0], &p[1], Some(&p[2])), &plain);
            }
        }
        for f in fast {
            let inputs = [leaf(&[2, 3, 3, 4], 1), leaf(&[2, 3, 3, 3], 2), leaf(&[2], 3)];
            check(&inputs, &|p| project(&f(&p[0], &p[1], Some(&p[2]))));
        }
    }

    #[test]
    fn activation_inside_the_upsampling_block_equals_activation_before_it() {
        for out in [4, 1] {
            let (x, w, b) = (leaf(&[2, 3, 5, 4], 1), leaf(&[out, 3, 3, 3], 2), leaf(&[out], 3));
            for block in [UpsampleConv::split(&w, Some(&b)), UpsampleConv::taps(&w, Some(&b))] {
                let (inside, before) = (block.apply_activated(&x, leaky_relu), block.apply(&leaky_relu(&x)));
                assert!(inside.allclose(&before, 1e-12, 1e-12, false), "{out} outputs: values differ");
                let grads = |y: &Tensor| crate::nn::grads(&[project(y)], &[&x, &w], true, true);
                let (g_inside, g_before) = (grads(&inside), grads(&before));
                for (gi, gb) in g_inside.iter().zip(&g_before) {
                    assert!(gi.allclose(gb, 1e-12, 1e-12, false), "{out} outputs: gradients differ");
                }
                let second = |g: &[Tensor]| crate::nn::grads(&[(&g[1] * &g[1]).sum(None::<Kind>)], &[&x], false, false);
                assert!(
                    second(&g_inside)[0].allclose(&second(&g_before)[0], 1e-12, 1e-12, false),
                    "{out}: second order"
                );
            }
        }
    }

    #[test]
    fn conv_max_pool_matches_libtorch_in_values_and_two_derivatives() {
        let native = |x: &Tensor, v: &Tensor, g: &Tensor| {
            x.conv2d(&weight_norm(v, g), None::<Tensor>, [1, 1], [1, 1], [1, 1], 1).max_pool2d(
                [3, 3],
                [2, 2],
                [1, 1],
                [1, 1],
                false,
            )
        };
        // One channel takes the fused kernels (csrc/pointwise_pool.h); the others libtorch's
        // convolution and pool (Winograd's form, csrc/winograd.h, needs 16 channels out as well;
        // custom.rs tests it).
        let layouts = [(1, false), (4, false), (4, true), (16, true)];
        for ((h, w), (c, nhwc)) in [(28, 28), (7, 5), (1, 2)].into_iter().flat_map(|s| layouts.map(|l| (s, l))) {
            let x = leaf(&[3, c, h, w], 1);
            let x = if nhwc { channels_last(&x.detach()).set_requires_grad(true) } else { x };
            let (v, g) = (leaf(&[5, c, 3, 3], 2), leaf(&[5], 3));
            let case = format!("{c} channels {h}x{w}, channels-last {nhwc}");
            let (ours, theirs) = (wn_conv3x3_max_pool(&x, &v, &g), native(&x, &v, &g));
            assert_eq!(ours.size(), [3, 5, (h + 1) / 2, (w + 1) / 2], "{case}");
            assert!(ours.allclose(&theirs, 1e-12, 1e-12, false), "values differ: {case}");
            if ours.size()[2] * ours.size()[3] > 1 {
                // One-channel inputs go channels-last (the fused kernels' results); others keep
                // their layout.
                assert_eq!(is_channels_last(&ours), nhwc || c == 1, "layout: {case}");
            }
            let probe = leaf(&ours.size(), 4).detach();
            // The inner gradient (with respect to everything, or to the weights only, as the
            // inner loop takes it), then the gradient of a function of it (as the meta-gradient).
            for inner in [vec![&x, &v, &g], vec![&v, &g]] {
                let second = |f: &dyn Fn(&Tensor, &Tensor, &Tensor) -> Tensor| {
                    let y = f(&x, &v, &g);
                    let loss = (&y * &probe).sum(None::<Kind>) + y.square().sum(None::<Kind>);
                    let first = crate::nn::grads(&[loss], &inner, true, true);
                    let meta =
                        first.iter().map(|t| t.square().sum(None::<Kind>)).fold(y.sum(None::<Kind>), |a, b| a + b);
                    (first, crate::nn::grads(&[meta], &[&x, &v, &g], false, false))
                };
                let ((first_ours, second_ours), (first_theirs, second_theirs)) =
                    (second(&wn_conv3x3_max_pool), second(&native));
                for (i, (a, b)) in
                    first_ours.iter().zip(&first_theirs).chain(second_ours.iter().zip(&second_theirs)).enumerate()
                {
                    assert!(
                        a.allclose(b, 1e-10, 1e-10, false),
                        "derivative {i} differs ({} inner): {case}",
                        inner.len()
                    );
                }
            }
        }
        check(&[leaf(&[2, 3, 6, 5], 4), leaf(&[4, 3, 3, 3], 5), leaf(&[4], 6)], &|p| {
            project(&wn_conv3x3_max_pool(&p[0], &p[1], &p[2]))
        });
    }

    #[test]
    fn leaky_relu_and_pool_shapes() {
        let x = Tensor::from_slice(&[-2.0, 0.5f64]);
        assert_eq!(Vec::<f64>::try_from(leaky_relu(&x)).unwrap(), [-0.2, 0.5]);
        let (img, v, g) = (leaf(&[2, 3, 28, 28], 1), leaf(&[4, 3, 3, 3], 2), leaf(&[4], 3));
        let once = wn_conv3x3_max_pool(&img, &v, &g);
        assert_eq!(once.size(), [2, 4, 14, 14]);
        assert_eq!(wn_conv3x3_max_pool(&once, &leaf(&[4, 4, 3, 3], 4), &g).size(), [2, 4, 7, 7]);
    }

    #[test]
    fn cross_entropy_soft_matches_hard_for_one_hot() {
        let logits = leaf(&[5, 10], 1);
        let labels = Tensor::from_slice(&[1i64, 3, 5, 7, 9]);
        let soft = labels.one_hot(10).to_kind(Kind::Double);
        let a = cross_entropy(&logits, &labels);
        let b = cross_entropy(&logits, &soft);
        assert!(a.allclose(&b, 1e-12, 1e-12, false));
        assert!(f64::try_from(&a).unwrap() > 0.0);
    }
}
