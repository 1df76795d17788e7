//! A cell architecture stacked into a network, as a pure function of an explicit parameter list
//! (so the GTN unroll can train it): stem conv, `reductions + 1` stages of `cells` normal cells
//! with one reduction cell between stages, and a head (by default base_fc's: the flattened last
//! state, a hidden layer of 256 with batch norm, a weight-normalised linear classifier). Every
//! conv is followed by batch norm with batch statistics (ReLU-conv-BN, as in ENAS): with mean-only
//! batch norm, as in the other learners, activations grew with each summed node and half of the
//! sampled cells diverged at the learning rates GTN teaches with (README, GTN-NAS).
//!
//! Each cell reads the outputs of the two cells before it (ENAS), each first mapped to the cell's
//! width by LReLU -> 1x1 conv -> BN; the older one is also strided when a reduction lies between.
//! A reduction cell doubles the width and applies its ops at stride 2 to the cell's inputs.
//! Separable conv = LReLU -> depthwise kxk (groups) -> pointwise 1x1 -> BN.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::arch::{Cell, Op};
use crate::nn::{self, Init, Norm, ParamSpec};

/// What the classifier reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Head {
    /// The last state flattened (faster to learn in a few steps than global pooling), then a
    /// hidden layer of 256 units with batch norm, as in base-fc, which keeps a teacher's unrolled
    /// learners stable (README, GTN-NAS).
    // Flattening learns several times faster in the first hundred steps than global pooling,
    // which is what a few-step proxy needs; the hidden layer (`HIDDEN` units) is what lets a
    // teacher teach it: a classifier reading 1,568-6,272 features directly moved the logits by
    // ~20 per SGD step (median of sampled cells, lr 0.02; tested below), and the unrolled
    // learners exploded.
    #[default]
    Hidden,
    /// The last state flattened, read by the classifier directly.
    Flatten,
    /// Global average pool (ENAS), for searches at full scale.
    GlobalPool,
}

impl Head {
    /// Whether the head's batch norm averages over the batch alone (the hidden layer's): over
    /// one image it is constant, so the network's outputs would not depend on its input.
    pub fn normalises_over_the_batch_alone(self) -> bool {
        self == Head::Hidden
    }
}

/// Width of `Head::Hidden`'s hidden layer (base_fc's).
pub const HIDDEN: i64 = 256;

/// How a cell is stacked into a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NetConfig {
    /// Normal cells per stage.
    pub cells: usize,
    /// Width of the stem and the first stage; doubled by each reduction.
    pub channels: i64,
    /// Reduction cells (each halves the resolution).
    pub reductions: usize,
    #[serde(default)]
    pub head: Head,
}

/// The most normal cells per stage: a stack far deeper than any search space of the field (the
/// paper's NAS uses a handful), and a bound that keeps a mistyped count from allocating forever.
pub const MAX_CELLS: usize = 64;

impl NetConfig {
    /// Sized for 2 shared CPU cores: stem at full resolution (width 8), then two reduction cells
    /// (16 wide at 14x14, 32 wide at 7x7). Normal cells (`cells > 0`) cost 2-3x more per step.
    pub const CPU: NetConfig = NetConfig { cells: 0, channels: 8, reductions: 2, head: Head::Hidden };

    pub fn validate(&self) -> Result<()> {
        if self.channels <= 0 {
            bail!("network: channels {} must be positive", self.channels);
        }
        if self.cells == 0 && self.reductions == 0 {
            bail!("network: cells and reductions are both 0, so there is no cell");
        }
        if self.cells > MAX_CELLS {
            bail!("network: cells {} per stage (--cells), expected at most {MAX_CELLS}", self.cells);
        }
        // Each reduction doubles the width: the widest stage must be a tensor size.
        let widest = (self.reductions <= 20).then(|| self.channels.checked_mul(1 << self.reductions)).flatten();
        if widest.is_none_or(|c| c > 1 << 20) {
            bail!(
                "network: channels {} doubled at each of {} reductions is over 2^20 channels; expected fewer reductions",
                self.channels,
                self.reductions
            );
        }
        Ok(())
    }

    /// Per cell in order: whether it reduces, and its width.
    fn layout(&self) -> Vec<(bool, i64)> {
        let mut out = Vec::new();
        let mut c = self.channels;
        for stage in 0..=self.reductions {
            out.extend(std::iter::repeat_n((false, c), self.cells));
            if stage < self.reductions {
                c *= 2;
                out.push((true, c));
            }
        }
        out
    }
}

/// How one cell of the stack is computed.
#[derive(Debug, Clone, Copy)]
struct CellPlan {
    reduce: bool,
    width: i64,
    /// The older input is at twice the resolution (a reduction cell lies between).
    older_strided: bool,
    /// Whether the output reaches the classifier. A cell that reads only state 0 leaves the
    /// second-to-last cell's output unread; it gets no parameters and is not computed, so every
    /// parameter has a gradient.
    live: bool,
}

fn plan(cell: &Cell, net: &NetConfig) -> Vec<CellPlan> {
    let layout = net.layout();
    let n = layout.len();
    let mut live = vec![false; n];
    for k in (0..n).rev() {
        live[k] = k + 1 == n || (cell.reads(1) && live[k + 1]) || (cell.reads(0) && k + 2 < n && live[k + 2]);
    }
    (0..n)
        .map(|k| CellPlan {
            reduce: layout[k].0,
            width: layout[k].1,
            older_strided: k >= 1 && layout[k - 1].0,
            live: live[k],
        })
        .collect()
}

/// Parameter specs of `cell` stacked by `net` for `image` (`[C, H, W]`) and `classes`, and the
/// forward multiply-adds per example (convolutions and the classifier).
pub fn specs(cell: &Cell, net: &NetConfig, image: [i64; 3], classes: i64) -> Result<(Vec<ParamSpec>, f64)> {
    net.validate()?;
    let [c_in, mut h, mut w] = image;
    let mut specs = conv_bn_specs("stem", &[net.channels, c_in, 3, 3]).to_vec();
    let mut pixels = (h * w) as f64;
    let mut macs = pixels * (net.channels * c_in * 9) as f64;
    // Widths (and pixel counts) of the two previous states.
    let (mut prev2, mut prev1) = ((net.channels, pixels), (net.channels, pixels));
    let out_nodes = cell.unused_nodes().len() as i64;
    for (k, cp) in plan(cell, net).into_iter().enumerate() {
        let c = cp.width;
        let out_pixels = if cp.reduce { ((h + 1) / 2 * ((w + 1) / 2)) as f64 } else { pixels };
        if cp.live {
            for (state, name, (c_prev, px_prev)) in [(0, "pre0", prev2), (1, "pre1", prev1)] {
                if cell.reads(state) {
                    specs.extend(conv_bn_specs(&format!("cell{k}.{name}"), &[c, c_prev, 1, 1]));
                    // The older input is strided down to the cell's input resolution.
                    macs += px_prev.min(pixels) * (c * c_prev) as f64;
                }
            }
            for (j, node) in cell.nodes.iter().enumerate() {
                for (slot, input) in node.inputs.iter().enumerate() {
                    if let Some(kernel) = input.op.sep_kernel() {
                        let name = format!("cell{k}.node{j}.{slot}");
                        specs.push(ParamSpec::new(format!("{name}.dw"), &[c, 1, kernel, kernel], Init::KaimingNormal));
                        specs.extend(conv_bn_specs(&format!("{name}.pw"), &[c, c, 1, 1]));
                        macs += out_pixels * (c * kernel * kernel + c * c) as f64;
                    }
                }
            }
        }
        if cp.reduce {
            (h, w) = ((h + 1) / 2, (w + 1) / 2);
            pixels = out_pixels;
        }
        (prev2, prev1) = (prev1, (c * out_nodes, pixels));
    }
    let mut features = match net.head {
        Head::Flatten | Head::Hidden => prev1.0 * h * w,
        Head::GlobalPool => prev1.0,
    };
    if net.head == Head::Hidden {
        specs.extend(conv_bn_specs("hidden", &[HIDDEN, features]));
        macs += (features * HIDDEN) as f64;
        features = HIDDEN;
    }
    specs.extend(nn::wn_specs("fc", &[classes, features], true));
    macs += (features * classes) as f64;
    Ok((specs, macs))
}

/// A bias-free conv (or linear) weight and the batch norm after it (gain and bias).
fn conv_bn_specs(name: &str, shape: &[i64]) -> [ParamSpec; 3] {
    [
        ParamSpec::new(format!("{name}.weight"), shape, Init::KaimingNormal),
        ParamSpec::new(format!("{name}.bn.gain"), &[shape[0]], Init::Ones),
        ParamSpec::new(format!("{name}.bn.bias"), &[shape[0]], Init::Zeros),
    ]
}

/// Hands out parameters in the order `specs` lists them.
struct Params<'a> {
    all: &'a [Tensor],
    next: usize,
}

impl<'a> Params<'a> {
    fn take<const N: usize>(&mut self) -> [&'a Tensor; N] {
        let out = std::array::from_fn(|i| &self.all[self.next + i]);
        self.next += N;
        out
    }
}

fn conv1x1_bn(x: &Tensor, p: &mut Params, stride: i64, norm: &mut Norm) -> Tensor {
    let [w, gain, bias] = p.take();
    let y = nn::leaky_relu(x).conv2d(w, None::<Tensor>, [stride, stride], [0, 0], [1, 1], 1);
    norm.batch_norm(&y, gain, bias)
}

/// One op of a node at `stride` (1, or 2 on a reduction cell's inputs).
pub fn apply_op(op: Op, x: &Tensor, stride: i64, p: &mut impl FnMut() -> [Tensor; 4], norm: &mut Norm) -> Tensor {
    match op {
        Op::Identity if stride == 1 => x.shallow_clone(),
        // Parameter-free subsampling: the same output size as the strided pools and convs.
        Op::Identity => x.slice(2, 0, None, stride).slice(3, 0, None, stride),
        Op::Avg3 => x.avg_pool2d([3, 3], [stride, stride], [1, 1], false, false, None),
        Op::Max3 => x.max_pool2d([3, 3], [stride, stride], [1, 1], [1, 1], false),
        Op::Sep3 | Op::Sep5 => {
            let k = op.sep_kernel().expect("a separable conv");
            let [depthwise, pointwise, gain, bias] = p();
            let channels = x.size()[1];
            let y = nn::leaky_relu(x).conv2d(
                &depthwise,
                None::<Tensor>,
                [stride, stride],
                [k / 2, k / 2],
                [1, 1],
                channels,
            );
            let y = y.conv2d(&pointwise, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1);
            norm.batch_norm(&y, &gain, &bias)
        }
    }
}

/// `x`: `[N, C, H, W]` -> logits; `params` as listed by [`specs`]; batch norm's statistics as
/// `norm` says.
pub fn forward(cell: &Cell, net: &NetConfig, params: &[Tensor], x: &Tensor, norm: &mut Norm) -> Tensor {
    let mut p = Params { all: params, next: 0 };
    let [w, gain, bias] = p.take();
    let stem = norm.batch_norm(&x.conv2d(w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1), gain, bias);
    let (mut s0, mut s1) = (stem.shallow_clone(), stem);
    let unused = cell.unused_nodes();
    for cp in plan(cell, net) {
        if !cp.live {
            // Never read by a live cell, so any placeholder keeps the two-state window moving.
            (s0, s1) = (s1.shallow_clone(), s1);
            continue;
        }
        let mut states = Vec::with_capacity(unused.len() + 2 + cell.nodes.len());
        for (state, input) in [(0, &s0), (1, &s1)] {
            let stride = if state == 0 && cp.older_strided { 2 } else { 1 };
            // An unread input needs no preprocessing; its slot is never indexed.
            states.push(if cell.reads(state) {
                conv1x1_bn(input, &mut p, stride, norm)
            } else {
                input.shallow_clone()
            });
        }
        for node in &cell.nodes {
            let mut sum: Option<Tensor> = None;
            for input in node.inputs {
                let stride = if cp.reduce && input.from < 2 { 2 } else { 1 };
                let mut take = || p.take::<4>().map(Tensor::shallow_clone);
                let y = apply_op(input.op, &states[input.from as usize], stride, &mut take, norm);
                sum = Some(match sum {
                    Some(s) => s + y,
                    None => y,
                });
            }
            states.push(sum.expect("a node has two inputs"));
        }
        let outputs: Vec<&Tensor> = unused.iter().map(|&s| &states[s]).collect();
        (s0, s1) = (s1, Tensor::cat(&outputs, 1));
    }
    let last = nn::leaky_relu(&s1);
    let features = match net.head {
        Head::Flatten => last.flatten(1, -1),
        Head::GlobalPool => last.mean_dim([2i64, 3].as_slice(), false, None::<Kind>),
        Head::Hidden => {
            let [w, gain, bias] = p.take();
            nn::leaky_relu(&norm.batch_norm(&last.flatten(1, -1).matmul(&w.tr()), gain, bias))
        }
    };
    let [v, g, b] = p.take();
    assert_eq!(p.next, params.len(), "network: parameters left over");
    nn::wn_linear(&features, v, g, Some(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::gradcheck::{leaf, max_rel_error, project};
    use rand::{rngs::StdRng, SeedableRng};
    use tch::Device;

    fn forward(cell: &Cell, net: &NetConfig, params: &[Tensor], x: &Tensor) -> Tensor {
        super::forward(cell, net, params, x, &mut Norm::Batch)
    }

    fn sep_params(c: i64, k: i64) -> [Tensor; 4] {
        let mut specs = vec![ParamSpec::new("dw", &[c, 1, k, k], Init::KaimingNormal)];
        specs.extend(conv_bn_specs("pw", &[c, c, 1, 1]));
        let p = nn::init_params(&specs, &mut StdRng::seed_from_u64(0), Kind::Double, Device::Cpu);
        p.try_into().unwrap()
    }

    #[test]
    fn every_op_keeps_or_halves_the_shape() {
        for (h, w) in [(28, 28), (7, 7), (32, 32), (5, 6)] {
            let x = leaf(&[2, 4, h, w], 1);
            for op in Op::ALL {
                let k = op.sep_kernel().unwrap_or(3);
                assert_eq!(
                    apply_op(op, &x, 1, &mut || sep_params(4, k), &mut Norm::Batch).size(),
                    [2, 4, h, w],
                    "{op:?} {h}x{w}"
                );
                let half = [2, 4, (h + 1) / 2, (w + 1) / 2];
                assert_eq!(
                    apply_op(op, &x, 2, &mut || sep_params(4, k), &mut Norm::Batch).size(),
                    half,
                    "{op:?} {h}x{w} stride 2"
                );
            }
        }
    }

    fn check_forward(cell: &Cell, net: &NetConfig, image: [i64; 3]) {
        let (specs, macs) = specs(cell, net, image, 10).unwrap();
        assert!(macs > 0.0);
        let params = nn::init_params(&specs, &mut StdRng::seed_from_u64(1), Kind::Float, Device::Cpu);
        let mut shape = vec![3];
        shape.extend(image);
        let x = leaf(&shape, 2).to_kind(Kind::Float);
        let y = forward(cell, net, &params, &x);
        assert_eq!(y.size(), [3, 10], "{cell} {net:?} {image:?}");
        assert!(y.isfinite().all().int64_value(&[]) == 1);
    }

    #[test]
    fn networks_forward_for_mnist_and_cifar_shapes() {
        let mut rng = StdRng::seed_from_u64(3);
        let nets = [
            NetConfig::CPU,
            NetConfig { cells: 0, channels: 4, reductions: 1, head: Head::GlobalPool },
            NetConfig { cells: 2, channels: 4, reductions: 0, ..NetConfig::CPU },
        ];
        for net in nets {
            for _ in 0..3 {
                let cell = Cell::sample(&mut rng);
                check_forward(&cell, &net, [1, 28, 28]);
                check_forward(&cell, &net, [3, 32, 32]);
            }
        }
        // Every state used but the last: the output is one node wide.
        let chain: Cell = "0:sep3,1:sep5/0:id,2:max3/1:avg3,3:sep3/2:id,4:id/5:sep5,5:max3".parse().unwrap();
        let (specs, _) = specs(&chain, &NetConfig::CPU, [1, 28, 28], 10).unwrap();
        assert_eq!(specs.last().unwrap().shape, [10]);
        assert_eq!(specs[specs.len() - 3].shape, [10, HIDDEN]);
        assert_eq!(specs[specs.len() - 6].shape, [HIDDEN, 32 * 7 * 7], "last cell is 32 wide at 7x7, one output node");
        let classifier_input = |head| {
            let specs = super::specs(&chain, &NetConfig { head, ..NetConfig::CPU }, [1, 28, 28], 10).unwrap().0;
            specs[specs.len() - 3].shape.clone()
        };
        assert_eq!(classifier_input(Head::Flatten), [10, 32 * 7 * 7]);
        assert_eq!(classifier_input(Head::GlobalPool), [10, 32]);
        let normal = NetConfig { cells: 1, ..NetConfig::CPU };
        assert!(specs.len() < super::specs(&chain, &normal, [1, 28, 28], 10).unwrap().0.len());
        check_forward(&chain, &NetConfig::CPU, [1, 28, 28]);
        assert!(NetConfig { cells: 0, channels: 4, reductions: 0, ..NetConfig::CPU }.validate().is_err());
        assert!(NetConfig { cells: MAX_CELLS, ..NetConfig::CPU }.validate().is_ok());
        for cells in [MAX_CELLS + 1, usize::MAX] {
            let err = NetConfig { cells, ..NetConfig::CPU }.validate().unwrap_err().to_string();
            assert_eq!(err, format!("network: cells {cells} per stage (--cells), expected at most 64"));
        }
        let wide = |channels, reductions| NetConfig { channels, reductions, ..NetConfig::CPU }.validate();
        assert!(wide(1 << 10, 10).is_ok());
        for (channels, reductions) in [(1 << 10, 11), (8, 61), (1, 21), (i64::MAX, 1)] {
            let err = wide(channels, reductions).unwrap_err().to_string();
            assert!(
                err.ends_with("is over 2^20 channels; expected fewer reductions"),
                "{channels} {reductions}: {err}"
            );
        }
    }

    #[test]
    fn every_parameter_gets_a_gradient() {
        let only_older: Cell = "0:sep3,0:id/0:max3,2:sep5/0:avg3,3:id/0:sep3,4:id/0:sep5,5:avg3".parse().unwrap();
        let only_newer: Cell = "1:sep3,1:id/1:max3,2:sep5/1:avg3,3:id/1:sep3,4:id/1:sep5,5:avg3".parse().unwrap();
        let mut cells = vec![only_older, only_newer];
        let mut rng = StdRng::seed_from_u64(9);
        cells.extend((0..20).map(|_| Cell::sample(&mut rng)));
        for cell in cells {
            for net in [
                NetConfig { cells: 1, channels: 2, reductions: 1, ..NetConfig::CPU },
                NetConfig { cells: 2, channels: 2, reductions: 0, ..NetConfig::CPU },
                NetConfig { cells: 1, channels: 2, reductions: 1, head: Head::Flatten },
                NetConfig { cells: 1, channels: 2, reductions: 1, head: Head::GlobalPool },
            ] {
                let (specs, _) = specs(&cell, &net, [1, 8, 8], 3).unwrap();
                let params = nn::init_params(&specs, &mut StdRng::seed_from_u64(1), Kind::Double, Device::Cpu);
                let y = forward(&cell, &net, &params, &leaf(&[4, 1, 8, 8], 2));
                let grads = nn::grads(&[project(&y)], &params, false, true);
                for (s, g) in specs.iter().zip(&grads) {
                    assert!(g.defined(), "{cell} {net:?}: {} gets no gradient", s.name);
                }
            }
        }
    }

    /// Largest change of a logit after one SGD step (lr 0.02) on the batch itself.
    fn logit_move(cell: &Cell, net: &NetConfig) -> f64 {
        let (specs, _) = specs(cell, net, [1, 28, 28], 10).unwrap();
        let params = nn::init_params(&specs, &mut StdRng::seed_from_u64(0), Kind::Float, Device::Cpu);
        let x = leaf(&[32, 1, 28, 28], 1).to_kind(Kind::Float).detach();
        let labels = Tensor::arange(32, (Kind::Int64, Device::Cpu)).remainder(10);
        let before = forward(cell, net, &params, &x);
        let grads = nn::grads(&[nn::cross_entropy(&before, &labels)], &params, false, false);
        let stepped: Vec<Tensor> = params.iter().zip(&grads).map(|(w, g)| (w - g * 0.02).detach()).collect();
        (forward(cell, net, &stepped, &x) - before).abs().max().double_value(&[])
    }

    /// Why the default head has a hidden layer: a classifier reading the flattened state directly
    /// moves the logits far more per step than a 16-step teacher can absorb.
    #[test]
    fn hidden_head_keeps_one_step_small() {
        let mut rng = StdRng::seed_from_u64(5);
        let (mut hidden, mut flatten) = (Vec::new(), Vec::new());
        for _ in 0..8 {
            let cell = Cell::sample(&mut rng);
            hidden.push(logit_move(&cell, &NetConfig::CPU));
            flatten.push(logit_move(&cell, &NetConfig { head: Head::Flatten, ..NetConfig::CPU }));
        }
        assert!(hidden.iter().all(|&m| m < 4.0), "one step moved a logit by up to {hidden:?} with the hidden head");
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        assert!(mean(&flatten) > 5.0 * mean(&hidden), "flatten {flatten:?} vs hidden {hidden:?}");
    }

    /// Two differentiable SGD steps (lr 0.1) on `images[0]` then `images[1]`, and the second
    /// step's batch statistics.
    fn two_sgd_steps(
        cell: &Cell,
        net: &NetConfig,
        mut params: Vec<Tensor>,
        images: &Tensor,
        labels: &Tensor,
    ) -> (Vec<Tensor>, Vec<Tensor>) {
        let mut stats = Vec::new();
        for t in 0..2 {
            let (logits, recorded) = Norm::recorded(|norm| super::forward(cell, net, &params, &images.get(t), norm));
            let grads = nn::grads(&[nn::cross_entropy(&logits, labels)], &params, true, true);
            params = params.iter().zip(&grads).map(|(w, g)| w - g * 0.1).collect();
            stats = recorded;
        }
        (params, stats)
    }

    /// Second-order: the meta-gradient of a loss after two differentiable SGD steps of a tiny
    /// cell network, with respect to the training images, matches finite differences (f64),
    /// scored with the real batch's statistics and with the last training batch's (full batch
    /// norm's recorded mean and variance, every layer of the cell and the hidden head).
    #[test]
    fn gradcheck_cell_network_through_unroll() {
        let cell: Cell = "0:sep3,1:max3/0:avg3,2:id/1:sep5,3:id/2:sep3,4:avg3/0:id,5:max3".parse().unwrap();
        let net = NetConfig { cells: 1, channels: 2, reductions: 1, ..NetConfig::CPU };
        let (specs, _) = specs(&cell, &net, [1, 6, 6], 3).unwrap();
        let theta0: Vec<Tensor> = nn::init_params(&specs, &mut StdRng::seed_from_u64(0), Kind::Double, Device::Cpu)
            .into_iter()
            .map(|t| t.detach())
            .collect();
        let labels = Tensor::from_slice(&[0i64, 1, 2, 0]);
        let real = leaf(&[4, 1, 6, 6], 9).detach();
        for training_stats in [false, true] {
            let f = |p: &[Tensor]| {
                let params = theta0.iter().map(|t| t.copy().set_requires_grad(true)).collect();
                let (params, stats) = two_sgd_steps(&cell, &net, params, &p[0], &labels);
                let scored = |norm: &mut Norm| super::forward(&cell, &net, &params, &real, norm);
                project(&if training_stats { Norm::given(&stats, scored) } else { scored(&mut Norm::Batch) })
            };
            let images = leaf(&[2, 4, 1, 6, 6], 1);
            let err = max_rel_error(&[images], &f, 12);
            assert!(err < 1e-4, "training statistics {training_stats}: finite-difference relative error {err:e}");
        }
        let direct = |p: &[Tensor]| project(&forward(&cell, &net, &p[..p.len() - 1], &p[p.len() - 1]));
        let mut inputs = nn::init_params(&specs, &mut StdRng::seed_from_u64(4), Kind::Double, Device::Cpu);
        inputs.push(leaf(&[4, 1, 6, 6], 5));
        // Max-pool and LReLU kinks near a probe cost a little finite-difference accuracy; a wrong
        // gradient is off by O(1).
        let err = max_rel_error(&inputs, &direct, 3);
        assert!(err < 1e-4, "cell network gradient finite-difference relative error {err:e}");
    }

    /// The f64 checks above run libtorch's reference kernels; training runs the float32 ones
    /// (oneDNN convolutions, depthwise included). Their meta-gradient must agree at a realistic size.
    #[test]
    fn float32_meta_gradient_matches_float64() {
        let cell: Cell = "0:sep3,1:max3/0:avg3,2:sep5/1:sep5,3:id/2:sep3,4:avg3/0:id,5:max3".parse().unwrap();
        let (specs, _) = specs(&cell, &NetConfig::CPU, [1, 28, 28], 10).unwrap();
        let theta0 = nn::init_params(&specs, &mut StdRng::seed_from_u64(0), Kind::Double, Device::Cpu);
        let labels = Tensor::arange(16, (Kind::Int64, Device::Cpu)).remainder(10);
        let meta_gradient = |kind: Kind| {
            let images = leaf(&[2, 16, 1, 28, 28], 1).to_kind(kind).detach().set_requires_grad(true);
            let params = theta0.iter().map(|t| t.to_kind(kind).detach().set_requires_grad(true)).collect();
            let (params, _) = two_sgd_steps(&cell, &NetConfig::CPU, params, &images, &labels);
            let real = leaf(&[16, 1, 28, 28], 9).to_kind(kind);
            let loss = nn::cross_entropy(&forward(&cell, &NetConfig::CPU, &params, &real), &labels);
            nn::grads(&[loss], &[&images], false, false)[0].to_kind(Kind::Double)
        };
        let (g32, g64) = (meta_gradient(Kind::Float), meta_gradient(Kind::Double));
        let norm = g64.norm().double_value(&[]);
        assert!(norm > 1e-6, "the meta-gradient vanishes");
        let err = (&g32 - &g64).norm().double_value(&[]) / norm;
        assert!(err < 1e-3, "float32 meta-gradient differs from float64 by {err:e} (relative)");
    }
}
