// Autograd functions that libtorch's own ops cannot express and tch has no way to define: each
// keeps less for its backward than the ops it replaces, with the same values and first and
// second derivatives (the order the meta-gradient needs: the backwards are ATen ops, recorded in
// the graph when an inner gradient is taken with `create_graph`). Called from src/custom.rs; a
// `torch::Tensor *` (= `at::Tensor *`) is what tch's `C_tensor` points to.
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include "bn_leaky_relu.h"
#include "cpu_kernels.h"
#include "maxpool.h"
#include "momentum.h"
#include "pointwise_kernels.h"
#include "pointwise_pool.h"
#include "upsample.h"
#include "winograd.h"

#include <algorithm>
#include <atomic>
#include <exception>
#include <memory>
#include <numeric>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace cpu_kernels {

namespace {
thread_local bool on = true;
// How often this thread's gates let a kernel take its tensor, for the test that none does while
// the kernels are off.
thread_local int64_t taken = 0;
}  // namespace

bool take(const at::Tensor &t) {
    bool yes = on && t.device().is_cpu();
    taken += yes;
    return yes;
}

void set_enabled(bool enabled) { on = enabled; }

bool enabled() { return on; }

int64_t taken_count() { return taken; }

}  // namespace cpu_kernels

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

namespace {

// Off only where a benchmark compares Winograd's form with libtorch's kernels.
std::atomic<bool> winograd_enabled{true};

// How often this thread's convolution + pool took Winograd's form and the fused first layer, and
// the generator's wide layer its F(4x4, 2x2) form, for the test that training's configuration does (value tests pass on a silent fallback too).
thread_local int64_t winograd_taken = 0, pointwise_taken = 0, pad_conv_taken = 0;

// Leaky ReLU keeping its output (which the next layer keeps anyway) instead of its input. Its
// second derivative is zero, so the backward reads the output as a constant: no zero gradient
// flows back into it, as one does through libtorch's `leaky_relu_backward(x, x)` form.
struct LeakyReluKeepingOutput : public torch::autograd::Function<LeakyReluKeepingOutput> {
    static at::Tensor forward(AutogradContext *ctx, const at::Tensor &x, double slope) {
        // The backward reads the input's sign from the output's, which a negative slope flips.
        TORCH_CHECK(slope >= 0, "leaky_relu keeping its output: slope ", slope, ", expected >= 0");
        auto y = at::leaky_relu(x, slope);
        ctx->saved_data["slope"] = slope;
        ctx->save_for_backward({y});
        return y;
    }

    static variable_list backward(AutogradContext *ctx, variable_list grads) {
        auto y = ctx->get_saved_variables()[0].detach();
        auto slope = ctx->saved_data["slope"].toDouble();
        return {at::leaky_relu_backward(grads[0], y, slope, /*self_is_result=*/true), at::Tensor()};
    }
};

// Mean-only batch norm then leaky ReLU (the learners' hidden layers) as one node keeping its
// output, and its backward as a pair of linear maps (csrc/bn_leaky_relu.h), each the other's
// adjoint and backward, so exact to every order: two passes over the data per map where
// libtorch's sum, add and leaky ReLU, their backwards and double backwards made three to five
// each, keeping the same one tensor.
namespace bn_relu {

struct GradAdjoint;

// (gy, y) -> (gradient with respect to x, gradient with respect to bias).
struct Grad : public torch::autograd::Function<Grad> {
    static variable_list forward(AutogradContext *ctx, const at::Tensor &gy, const at::Tensor &y, double slope) {
        ctx->saved_data["slope"] = slope;
        ctx->save_for_backward({y});
        auto [gx, gb] = bn_leaky_relu::grad(gy, y, slope);
        return {gx, gb};
    }

    static variable_list backward(AutogradContext *ctx, variable_list grads);
};

// (gx, gb, y) -> gy.
struct GradAdjoint : public torch::autograd::Function<GradAdjoint> {
    static at::Tensor forward(AutogradContext *ctx, const at::Tensor &gx, const at::Tensor &gb, const at::Tensor &y,
                              double slope) {
        ctx->saved_data["slope"] = slope;
        ctx->save_for_backward({y});
        return bn_leaky_relu::grad_adjoint(gx, gb, y, slope);
    }

    static variable_list backward(AutogradContext *ctx, variable_list grads) {
        auto out = Grad::apply(grads[0], ctx->get_saved_variables()[0], ctx->saved_data["slope"].toDouble());
        return {out[0], out[1], at::Tensor(), at::Tensor()};
    }
};

// The mask the maps apply is constant almost everywhere: no gradient flows into y.
variable_list Grad::backward(AutogradContext *ctx, variable_list grads) {
    return {GradAdjoint::apply(grads[0], grads[1], ctx->get_saved_variables()[0], ctx->saved_data["slope"].toDouble()),
            at::Tensor(), at::Tensor()};
}

struct BnLeakyRelu : public torch::autograd::Function<BnLeakyRelu> {
    static at::Tensor forward(AutogradContext *ctx, const at::Tensor &x, const at::Tensor &bias, double slope) {
        // The backward reads the activation's slope from the sign of the output.
        TORCH_CHECK(slope >= 0, "bn_leaky_relu: slope ", slope, " must not be negative");
        auto y = bn_leaky_relu::forward(x, bias, slope);
        ctx->saved_data["slope"] = slope;
        ctx->save_for_backward({y});
        return y;
    }

    static variable_list backward(AutogradContext *ctx, variable_list grads) {
        // The output as a constant (see Grad::backward).
        auto y = ctx->get_saved_variables()[0].detach();
        auto out = Grad::apply(grads[0], y, ctx->saved_data["slope"].toDouble());
        return {out[0], out[1], at::Tensor()};
    }
};

}  // namespace bn_relu

// The norm of each output unit's weights (the slices along dimension 0), keeping dimensions for
// broadcasting: weight normalisation's denominator. Its backward is one product, `v · (grad /
// norm)`, differentiable again through this function; written as `sqrt(sum(v · v))`, libtorch
// takes two products and a sum of them (three passes over the weight, 6.4 MB for base_fc's
// linear layer, per inner step, and more in the meta-backward).
struct RowNorm : public torch::autograd::Function<RowNorm> {
    static at::Tensor forward(AutogradContext *ctx, const at::Tensor &v) {
        // An empty dimension list would make linalg_vector_norm reduce over everything.
        TORCH_CHECK(v.dim() >= 2, "row norm: weight of shape ", v.sizes(), ", expected at least 2 dimensions");
        std::vector<int64_t> dims(v.dim() - 1);
        std::iota(dims.begin(), dims.end(), 1);
        auto norm = at::linalg_vector_norm(v, 2, dims, /*keepdim=*/true);
        ctx->save_for_backward({v, norm});
        return norm;
    }

    static variable_list backward(AutogradContext *ctx, variable_list grads) {
        auto saved = ctx->get_saved_variables();
        return {saved[0] * (grads[0] / saved[1])};
    }
};

// The inner optimiser's update `m' = g + mu·m, p' = p - lr·m'` (src/inner.rs) as one node: one
// pass over each parameter forward and one backward (csrc/momentum.h) where libtorch's two
// `addcmul`s took ~7 in the meta-backward. With a graph being recorded (a third derivative) or
// where the kernels do not apply, the same backward in differentiable libtorch ops.
struct MomentumStep : public torch::autograd::Function<MomentumStep> {
    static variable_list forward(AutogradContext *ctx, const at::Tensor &p, const at::Tensor &m, const at::Tensor &g,
                                 const at::Tensor &lr, const at::Tensor &mu) {
        at::Tensor p_new, m_new;
        if (momentum::applies(p, m, g, lr, mu)) {
            std::tie(p_new, m_new) = momentum::step(p, m, g, lr, mu);
        } else {
            m_new = g.addcmul(mu, m);
            p_new = p.addcmul(-lr, m_new);
        }
        ctx->save_for_backward({m, m_new, lr, mu});
        // An output unused downstream (the last step's momentum) sends an undefined gradient, not
        // a tensor of zeros to read.
        ctx->set_materialize_grads(false);
        return {p_new, m_new};
    }

    static variable_list backward(AutogradContext *ctx, variable_list grads) {
        auto saved = ctx->get_saved_variables();
        auto &m = saved[0], &m_new = saved[1], &lr = saved[2], &mu = saved[3];
        auto &grad_p = grads[0], &grad_m = grads[1];
        bool want_m = ctx->needs_input_grad(1);
        if (!at::GradMode::is_enabled() && momentum::backward_applies(grad_p, grad_m, m, m_new, lr, mu)) {
            auto [grad_g, grad_mom, grad_lr, grad_mu] = momentum::step_backward(grad_p, grad_m, m, m_new, lr, mu, want_m);
            return {grad_p, grad_mom, grad_g, grad_lr, grad_mu};
        }
        // The gradient of m' in all: its own and, through p', -lr times p''s.
        at::Tensor total = grad_m;
        if (grad_p.defined()) total = total.defined() ? total - lr * grad_p : -lr * grad_p;
        if (!total.defined()) return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
        at::Tensor grad_lr, grad_mu;
        if (grad_p.defined() && ctx->needs_input_grad(3)) grad_lr = -(grad_p * m_new).sum().reshape(lr.sizes());
        if (ctx->needs_input_grad(4)) grad_mu = (total * m).sum().reshape(mu.sizes());
        return {grad_p, want_m ? mu * total : at::Tensor(), total, grad_lr, grad_mu};
    }
};

// The upsampling block's replicate padding and parity gather (csrc/upsample.h), each a linear
// map whose backward is its adjoint, itself an autograd function whose backward is the map: exact
// to every order, and keeping only shapes. As libtorch's ops and views, the padding kept its
// input, and the gather's crops each filled a zero tensor of the whole grid and summed it in
// their backward.
namespace resample {

struct PadAdjoint;

struct Pad : public torch::autograd::Function<Pad> {
    static at::Tensor forward(AutogradContext *ctx, const at::Tensor &x) {
        ctx->saved_data["sizes"] = x.sizes().vec();
        return upsample::pad(x);
    }

    static variable_list backward(AutogradContext *ctx, variable_list grads);
};

struct PadAdjoint : public torch::autograd::Function<PadAdjoint> {
    static at::Tensor forward(AutogradContext *, const at::Tensor &grad, std::vector<int64_t> sizes) {
        return upsample::pad_adjoint(grad, sizes);
    }

    static variable_list backward(AutogradContext *, variable_list grads) { return {Pad::apply(grads[0]), at::Tensor()}; }
};

variable_list Pad::backward(AutogradContext *ctx, variable_list grads) {
    return {PadAdjoint::apply(grads[0], ctx->saved_data["sizes"].toIntVector())};
}

struct GatherAdjoint;

struct Gather : public torch::autograd::Function<Gather> {
    static at::Tensor forward(AutogradContext *ctx, const at::Tensor &grid, int64_t taps, int64_t h, int64_t w) {
        ctx->saved_data["sizes"] = grid.sizes().vec();
        ctx->saved_data["taps"] = taps;
        ctx->saved_data["channels_last"] = grid.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
        return upsample::gather(grid, taps, h, w);
    }

    static variable_list backward(AutogradContext *ctx, variable_list grads);
};

struct GatherAdjoint : public torch::autograd::Function<GatherAdjoint> {
    // The gradient of a grid in the grid's layout (`channels_last`), whatever the output's.
    static at::Tensor forward(AutogradContext *ctx, const at::Tensor &grad, int64_t taps, std::vector<int64_t> sizes,
                              bool channels_last) {
        ctx->saved_data["taps"] = taps;
        ctx->saved_data["hw"] = std::vector<int64_t>{grad.size(2) / 2, grad.size(3) / 2};
        return upsample::gather_adjoint(
            grad, taps, sizes, channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
    }

    static variable_list backward(AutogradContext *ctx, variable_list grads) {
        auto hw = ctx->saved_data["hw"].toIntVector();
        return {Gather::apply(grads[0], ctx->saved_data["taps"].toInt(), hw[0], hw[1]), at::Tensor(), at::Tensor(),
                at::Tensor()};
    }
};

variable_list Gather::backward(AutogradContext *ctx, variable_list grads) {
    return {GatherAdjoint::apply(grads[0], ctx->saved_data["taps"].toInt(), ctx->saved_data["sizes"].toIntVector(),
                                 ctx->saved_data["channels_last"].toBool()),
            at::Tensor(), at::Tensor(), at::Tensor()};
}

// The generator's wide layer: a convolution (stride 1, no padding) of the replicate-padded input,
// then the parity gather with one tap (the four parities' kernels stacked as the convolution's
// output channel groups), keeping the unpadded input for its backward, where libtorch's
// convolution of the padded tensor keeps that one: 2.1 MB less per generator batch of 128 at
// MNIST's 128 x 7 x 7 (67 MB per meta-step of 32). Where it applies (MNIST's layer), Winograd's
// F(4x4, 2x2) (csrc/winograd.h), forward and, where no graph is recorded, backward: 25 products
// per 4x4 tile of the grid where oneDNN's direct kernels take 64, the padding read from the unpadded
// input, and the gather done by the output transform (its adjoint read by the transform's
// adjoint), so the grid is never formed. Elsewhere, and where the gradient is itself to be
// differentiated, the same as the padding, libtorch's convolution and the gather, differentiable.
struct PadConvGather : public torch::autograd::Function<PadConvGather> {
    static at::Tensor forward(AutogradContext *ctx, const at::Tensor &x, const at::Tensor &weight) {
        ctx->save_for_backward({x, weight});
        if (winograd_enabled && winograd::pad_conv_applies(x, weight)) {
            ++pad_conv_taken;
            return winograd::pad_conv(x, weight, true);
        }
        return upsample::gather(at::conv2d(upsample::pad(x), weight), 1, x.size(2), x.size(3));
    }

    static variable_list backward(AutogradContext *ctx, variable_list grads) {
        auto saved = ctx->get_saved_variables();
        auto &x = saved[0], &weight = saved[1];
        bool input_grad = ctx->needs_input_grad(0);
        // Winograd's form records no graph: a second derivative takes the differentiable ops below.
        if (winograd_enabled && !at::GradMode::is_enabled() && winograd::pad_conv_applies(x, weight)) {
            ++pad_conv_taken;
            auto [grad_x, grad_weight] =
                winograd::pad_conv_grads(grads[0], x, weight, true, input_grad, ctx->needs_input_grad(1));
            return {grad_x, grad_weight};
        }
        std::vector<int64_t> grid{x.size(0), weight.size(0), x.size(2) + 1, x.size(3) + 1};
        bool channels_last = x.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
        auto grad_grid = GatherAdjoint::apply(grads[0], 1, grid, channels_last);
        auto grads_padded = at::convolution_backward(grad_grid, Pad::apply(x), weight, std::nullopt, {1, 1}, {0, 0},
                                                     {1, 1}, false, {0, 0}, 1,
                                                     {input_grad, ctx->needs_input_grad(1), false});
        auto grad_x = input_grad ? PadAdjoint::apply(std::get<0>(grads_padded), x.sizes().vec()) : at::Tensor();
        return {grad_x, std::get<1>(grads_padded)};
    }
};

}  // namespace resample

// A convolution followed by a 3x3 max-pool (stride 2, padding 1) whose graph keeps only the
// convolution's input and weight, the arg-max as int32, and the pooled gradient.
//
// Unfused, the inner gradient's graph keeps the gradient with respect to the convolution's
// output (four times the pooled one: 25.7 MB per base_fc inner step of 128 images for the first
// layer, 12.8 MB for the second), because libtorch's convolution double backward reads it, and
// the arg-max as int64. Here the backward is itself an autograd function (ConvMaxPoolGrads)
// that keeps the pooled gradient and scatters it again when the meta-backward reaches it. Its
// own backward runs libtorch's first-order convolution kernels on the recomputed gradient.
namespace pool {

// Pooling runs over `[N, H·W, C]` rows of a channels-last tensor (dimension 1), or over
// `[N, C, H·W]` of an NCHW one (dimension 2): gathering along a strided dimension is slow.
bool nhwc(const at::Tensor &t) { return t.dim() == 4 && t.stride(1) == 1 && t.size(1) > 1; }

at::Tensor flat(const at::Tensor &t, bool nhwc) { return nhwc ? t.permute({0, 2, 3, 1}).flatten(1, 2) : t.flatten(2, 3); }

at::Tensor unflat(const at::Tensor &t, at::IntArrayRef nchw, bool nhwc) {
    return nhwc ? t.view({nchw[0], nchw[2], nchw[3], nchw[1]}).permute({0, 3, 1, 2}) : t.view(nchw);
}

// The values of `conv` at the arg-max `index` (int32, pooled shape): on the CPU, channels-last,
// csrc/maxpool.h's kernel, which reads the int32 arg-max where ATen's gather takes int64, unless
// a graph is being recorded (a third derivative: the kernel records none, libtorch's gather does).
at::Tensor gather(const at::Tensor &conv, const at::Tensor &index, bool nhwc) {
    if (!at::GradMode::is_enabled() && maxpool::applies(conv, index)) return maxpool::at_index(conv, index);
    auto sizes = index.sizes().vec();
    auto rows = flat(conv, nhwc).gather(nhwc ? 1 : 2, flat(index, nhwc).to(at::kLong));
    return unflat(rows, sizes, nhwc);
}

// Max-pool's backward: `grad` (pooled shape) added into zeros of `conv_sizes` at the arg-max. On
// the CPU, channels-last, csrc/maxpool.h's kernel where no graph is being recorded; elsewhere
// libtorch's (1.4x faster than a scatter-add over the flattened planes, and differentiable), with
// the arg-max widened to int64.
at::Tensor scatter(const at::Tensor &grad, const at::Tensor &index, at::IntArrayRef conv_sizes, bool nhwc) {
    if (nhwc && !at::GradMode::is_enabled()) {
        auto g = grad.contiguous(at::MemoryFormat::ChannelsLast);
        if (maxpool::applies(g, index)) return maxpool::unpool(g, index, conv_sizes);
    }
    auto format = nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
    // Read for its shape and layout only.
    auto like = at::empty(conv_sizes, grad.options().memory_format(format));
    return at::max_pool2d_with_indices_backward(grad.contiguous(format), like, {3, 3}, {2, 2}, {1, 1}, {1, 1}, false,
                                                index.to(at::kLong));
}

struct Geometry {
    std::vector<int64_t> conv_sizes;
    int64_t stride, padding;
    bool nhwc;

    void save(AutogradContext *ctx) const {
        ctx->saved_data["conv_sizes"] = conv_sizes;
        ctx->saved_data["stride"] = stride;
        ctx->saved_data["padding"] = padding;
        ctx->saved_data["nhwc"] = nhwc;
    }

    static Geometry load(AutogradContext *ctx) {
        return {ctx->saved_data["conv_sizes"].toIntVector(), ctx->saved_data["stride"].toInt(),
                ctx->saved_data["padding"].toInt(), ctx->saved_data["nhwc"].toBool()};
    }

    // Winograd's form where it applies and no graph is being recorded (its transforms have none:
    // a third derivative, taken through ConvMaxPoolGrads's backward, runs libtorch's
    // differentiable ops, as `scatter` and `gather` then do).
    bool winograd(const at::Tensor &input, const at::Tensor &weight) const {
        bool taken =
            winograd_enabled && !at::GradMode::is_enabled() && winograd::applies(input, weight, stride, padding);
        winograd_taken += taken;
        return taken;
    }

    // A 1x1 convolution of few channels, or a one-channel image's 3x3 one (base_fc's first
    // layer), fused with its pool (csrc/pointwise_pool.h), on the same terms.
    bool pointwise(const at::Tensor &input, const at::Tensor &weight) const {
        bool taken = !at::GradMode::is_enabled() && pointwise_pool::applies(input, weight, stride, padding);
        pointwise_taken += taken;
        return taken;
    }

    at::Tensor conv(const at::Tensor &input, const at::Tensor &weight) const {
        if (winograd(input, weight)) return winograd::conv(input, weight);
        return at::conv2d(input, weight, {}, {stride, stride}, {padding, padding});
    }

    // conv(input, weight) + conv(other, other_weight), where `other` is defined, read at the
    // arg-max `index`.
    at::Tensor conv_at(const at::Tensor &index, const at::Tensor &input, const at::Tensor &weight,
                       const at::Tensor &other, const at::Tensor &other_weight) const {
        if (pointwise(input, weight)) return pointwise_pool::conv_at_index(input, weight, other, other_weight, index);
        if (nhwc && winograd(input, weight) && (!other.defined() || winograd(other, other_weight)))
            return winograd::conv_sum_at(input, weight, other, other_weight, index);
        at::Tensor sum;
        if (!other.defined())
            sum = conv(input, weight);
        else if (winograd(input, weight) && winograd(other, other_weight))
            sum = winograd::conv_sum(input, weight, other, other_weight);
        else
            sum = conv(input, weight).add(conv(other, other_weight));
        return gather(sum, index, nhwc);
    }

    // The gradients of the pool (at `index`) of the convolution with respect to its input and
    // weight that are asked for, given the pooled gradient.
    std::tuple<at::Tensor, at::Tensor> grads(const at::Tensor &grad, const at::Tensor &index, const at::Tensor &input,
                                             const at::Tensor &weight, bool input_grad, bool weight_grad) const {
        if (pointwise(input, weight))
            return pointwise_pool::grads(grad, index, input, weight, input_grad, weight_grad);
        if (nhwc && winograd(input, weight))
            return winograd::pooled_grads(grad, index, input, weight, input_grad, weight_grad);
        auto grad_out = scatter(grad, index, conv_sizes, nhwc);
        if (winograd(input, weight)) return winograd::grads(grad_out, input, weight, input_grad, weight_grad);
        auto grads = at::convolution_backward(grad_out, input, weight, std::nullopt, {stride, stride},
                                              {padding, padding}, {1, 1}, false, {0, 0}, 1,
                                              {input_grad, weight_grad, false});
        return {std::get<0>(grads), std::get<1>(grads)};
    }
};

// (pooled gradient, input, weight) -> (gradient w.r.t. input, gradient w.r.t. weight).
struct ConvMaxPoolGrads : public torch::autograd::Function<ConvMaxPoolGrads> {
    static variable_list forward(AutogradContext *ctx, const at::Tensor &grad, const at::Tensor &input,
                                 const at::Tensor &weight, const at::Tensor &index, const Geometry &geometry,
                                 bool input_grad) {
        geometry.save(ctx);
        // An unused output's adjoint then arrives undefined, and its pass is skipped, instead
        // of running on zeros.
        ctx->set_materialize_grads(false);
        ctx->saved_data["input_grad"] = input_grad;
        ctx->save_for_backward({grad, input, weight, index});
        auto [grad_input, grad_weight] = geometry.grads(grad, index, input, weight, input_grad, true);
        // Outputs must be defined tensors: an empty placeholder stands for an input gradient
        // not asked for (the inner loop differentiates with respect to the weights only).
        if (!input_grad) {
            grad_input = at::empty({0}, input.options());
            ctx->mark_non_differentiable({grad_input});
        }
        return {grad_input, grad_weight};
    }

    static variable_list backward(AutogradContext *ctx, variable_list adjoints) {
        auto geometry = Geometry::load(ctx);
        auto saved = ctx->get_saved_variables();
        auto &grad = saved[0], &input = saved[1], &weight = saved[2], &index = saved[3];
        // Adjoints of the two outputs; an unused one arrives undefined.
        auto a_input = ctx->saved_data["input_grad"].toBool() ? adjoints[0] : at::Tensor();
        auto &a_weight = adjoints[1];
        bool weight_needed = a_input.defined() && ctx->needs_input_grad(2);
        bool input_needed = a_weight.defined() && ctx->needs_input_grad(1);
        at::Tensor d_grad, d_input, d_weight;
        if (a_input.defined())
            d_grad = geometry.conv_at(index, a_input, weight, a_weight.defined() ? input : at::Tensor(), a_weight);
        else if (a_weight.defined())
            d_grad = geometry.conv_at(index, input, a_weight, at::Tensor(), at::Tensor());
        if (weight_needed || input_needed) {
            // The weight's term is the weight gradient of a convolution of a_input, the input's the
            // input gradient of one with a_weight, both of the pooled gradient scattered again:
            // one call computes both (a stand-in of the same shape fills the slot of the one not
            // needed).
            std::tie(d_input, d_weight) = geometry.grads(grad, index, weight_needed ? a_input : input,
                                                         input_needed ? a_weight : weight, input_needed, weight_needed);
        }
        return {d_grad, d_input, d_weight, at::Tensor(), at::Tensor(), at::Tensor()};
    }
};

// (input, weight) -> max-pool of their convolution.
struct ConvMaxPool : public torch::autograd::Function<ConvMaxPool> {
    static at::Tensor forward(AutogradContext *ctx, const at::Tensor &input, const at::Tensor &weight, int64_t stride,
                              int64_t padding) {
        Geometry geometry{{}, stride, padding, false};
        // Our kernels pool each image from a scratch image where they apply; both keep the
        // input's size (stride 1) and return channels-last results.
        std::optional<std::tuple<at::Tensor, at::Tensor>> fused;
        if (geometry.pointwise(input, weight))
            fused = pointwise_pool::conv_max_pool(input, weight);
        else if (nhwc(input) && geometry.winograd(input, weight))
            fused = winograd::conv_max_pool(input, weight);
        if (fused) {
            auto &[pooled, index] = *fused;
            geometry.conv_sizes = {input.size(0), weight.size(0), input.size(2), input.size(3)};
            geometry.nhwc = true;
            geometry.save(ctx);
            ctx->save_for_backward({input, weight, index});
            return pooled;
        }
        auto conv = geometry.conv(input, weight);
        geometry.conv_sizes = conv.sizes().vec();
        geometry.nhwc = nhwc(conv);
        // libtorch's channels-last max-pool kernel finds the arg-max ~10x faster than its NCHW one.
        auto format = geometry.nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
        auto [pooled, index] = at::max_pool2d_with_indices(conv.contiguous(at::MemoryFormat::ChannelsLast), {3, 3},
                                                           {2, 2}, {1, 1}, {1, 1}, false);
        geometry.save(ctx);
        ctx->save_for_backward({input, weight, index.contiguous(format).to(at::kInt)});
        return pooled.contiguous(format);
    }

    static variable_list backward(AutogradContext *ctx, variable_list grads) {
        auto geometry = Geometry::load(ctx);
        auto saved = ctx->get_saved_variables();
        bool input_grad = ctx->needs_input_grad(0);
        auto out = ConvMaxPoolGrads::apply(grads[0], saved[0], saved[1], saved[2], geometry, input_grad);
        return {input_grad ? out[0] : at::Tensor(), out[1], at::Tensor(), at::Tensor()};
    }
};

}  // namespace pool

thread_local std::string last_error;

// Runs `f`; an exception's message goes to last_error (for src/custom.rs) instead of unwinding
// into Rust.
template <typename F>
void caught(F f) {
    try {
        f();
    } catch (const std::exception &e) {
        last_error = e.what();
    } catch (...) {
        last_error = "a C++ exception that is not a std::exception";
    }
}

// A fresh heap tensor of `f`'s result, or null with the error in last_error.
template <typename F>
at::Tensor *guarded(F f) {
    at::Tensor *out = nullptr;
    caught([&] { out = new at::Tensor(f()); });
    return out;
}

}  // namespace

extern "C" {

const char *gtn_last_error() { return last_error.c_str(); }

at::Tensor *gtn_conv_max_pool(const at::Tensor *input, const at::Tensor *weight, int64_t stride, int64_t padding) {
    return guarded([&] { return pool::ConvMaxPool::apply(*input, *weight, stride, padding); });
}

// (p', m') of MomentumStep into `out` (two pointers, left null with the error in last_error).
void gtn_momentum_step(const at::Tensor *p, const at::Tensor *m, const at::Tensor *g, const at::Tensor *lr,
                       const at::Tensor *mu, at::Tensor **out) {
    caught([&] {
        auto result = MomentumStep::apply(*p, *m, *g, *lr, *mu);
        auto p_new = std::make_unique<at::Tensor>(result[0]), m_new = std::make_unique<at::Tensor>(result[1]);
        out[0] = p_new.release();
        out[1] = m_new.release();
    });
}

// momentum::backwards(), for the test that checks the update's backward took the kernels.
int64_t gtn_momentum_kernel_backwards() { return momentum::backwards(); }

// This thread's counts of convolution + pool calls that took Winograd's form and the fused first
// layer, and of the generator's wide layer in its F(4x4, 2x2) form, into out[0..3].
void gtn_conv_paths_taken(int64_t *out) {
    out[0] = winograd_taken;
    out[1] = pointwise_taken;
    out[2] = pad_conv_taken;
}

void gtn_set_winograd(bool enabled) { winograd_enabled = enabled; }

void gtn_set_cpu_kernels(bool enabled) { cpu_kernels::set_enabled(enabled); }

bool gtn_cpu_kernels_enabled() { return cpu_kernels::enabled(); }

int64_t gtn_cpu_kernels_taken() { return cpu_kernels::taken_count(); }

// How many threads ATen's parallel_for, as compiled into our kernels, spreads `items` over: it
// runs serially unless this file is built with OpenMP (build.rs). Called by a test.
// -1 on an error (in last_error), as the two below: no exception may unwind into Rust.
int64_t gtn_kernel_threads(int64_t items) {
    int64_t count = -1;
    caught([&] {
        std::vector<std::atomic<bool>> used(at::get_num_threads());
        at::parallel_for(0, items, 1, [&](int64_t, int64_t) { used[at::get_thread_num()] = true; });
        count = std::count(used.begin(), used.end(), true);
    });
    return count;
}

// The instruction set levels of the first layer's fused kernels, which the tests run one by one.
int64_t gtn_pointwise_levels() {
    int64_t levels = -1;
    caught([&] { levels = pointwise_kernels::levels(); });
    return levels;
}

// The CPU's instruction set level as the kernels' builds count it (1 to 3), which a test holds
// to the features Rust's standard library detects.
int64_t gtn_cpu_level() { return pointwise_kernels::cpu_level(); }

bool gtn_force_pointwise_level(int64_t level) {
    bool forced = false;
    caught([&] { forced = pointwise_kernels::force_level(static_cast<int>(level)); });
    return forced;
}

// Winograd's convolution and its gradients, called directly by the tests that hold them to
// libtorch's.
at::Tensor *gtn_winograd_conv(const at::Tensor *input, const at::Tensor *weight) {
    return guarded([&] {
        TORCH_CHECK(winograd::applies(*input, *weight, 1, 1), "not a convolution Winograd's form takes");
        return winograd::conv(*input, *weight);
    });
}

// One of the two gradients (`weight_grad`: the weight's, or the input's), which `grads` computes
// apart or together.
at::Tensor *gtn_winograd_grad(const at::Tensor *grad_out, const at::Tensor *input, const at::Tensor *weight,
                              bool weight_grad) {
    return guarded([&] {
        auto grads = winograd::grads(*grad_out, *input, *weight, !weight_grad, weight_grad);
        return weight_grad ? std::get<1>(grads) : std::get<0>(grads);
    });
}

// The same for F(4x4, 2x2) over the replicate-padded input.
at::Tensor *gtn_winograd_pad_conv(const at::Tensor *input, const at::Tensor *weight, bool gathered) {
    return guarded([&] { return winograd::pad_conv(*input, *weight, gathered); });
}

at::Tensor *gtn_winograd_pad_conv_grad(const at::Tensor *grad_out, const at::Tensor *input, const at::Tensor *weight,
                                       bool gathered, bool weight_grad) {
    return guarded([&] {
        auto grads = winograd::pad_conv_grads(*grad_out, *input, *weight, gathered, !weight_grad, weight_grad);
        return weight_grad ? std::get<1>(grads) : std::get<0>(grads);
    });
}

at::Tensor *gtn_row_norm(const at::Tensor *v) {
    return guarded([&] { return RowNorm::apply(*v); });
}

at::Tensor *gtn_bn_leaky_relu(const at::Tensor *x, const at::Tensor *bias, double slope) {
    return guarded([&] { return bn_relu::BnLeakyRelu::apply(*x, *bias, slope); });
}

at::Tensor *gtn_leaky_relu(const at::Tensor *x, double slope) {
    return guarded([&] { return LeakyReluKeepingOutput::apply(*x, slope); });
}

at::Tensor *gtn_replicate_pad1(const at::Tensor *x) {
    return guarded([&] { return resample::Pad::apply(*x); });
}

at::Tensor *gtn_pad_conv_gather(const at::Tensor *x, const at::Tensor *weight) {
    return guarded([&] { return resample::PadConvGather::apply(*x, *weight); });
}

at::Tensor *gtn_parity_gather(const at::Tensor *grid, int64_t taps, int64_t h, int64_t w) {
    return guarded([&] { return resample::Gather::apply(*grid, taps, h, w); });
}

// The gather and its adjoint as the kernels compute them (`generic`: as ATen's ops do), called
// directly by the tests that hold the two to each other.
at::Tensor *gtn_parity_gather_raw(const at::Tensor *grid, int64_t taps, int64_t h, int64_t w, bool generic) {
    return guarded([&] {
        return generic ? upsample::gather_generic(*grid, taps, h, w) : upsample::gather(*grid, taps, h, w);
    });
}

at::Tensor *gtn_parity_gather_adjoint_raw(const at::Tensor *grad, int64_t taps, const at::Tensor *grid, bool generic) {
    return guarded([&] {
        return generic ? upsample::gather_adjoint_generic(*grad, taps, grid->sizes())
                       : upsample::gather_adjoint(*grad, taps, grid->sizes(), grid->suggest_memory_format());
    });
}
}
