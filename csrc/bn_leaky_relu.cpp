#include "bn_leaky_relu.h"

#include "cpu_kernels.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

namespace bn_leaky_relu {
namespace {

bool channels_last(const at::Tensor &t) { return t.dim() == 4 && t.is_contiguous(at::MemoryFormat::ChannelsLast); }

bool kernels_apply(const at::Tensor &t) {
    auto kind = t.scalar_type();
    return cpu_kernels::take(t) && (kind == at::kFloat || kind == at::kDouble) && (t.dim() == 2 || t.dim() == 4) &&
           (t.is_contiguous() || channels_last(t));
}

// `t` laid out as `ref` (one the kernels take). Where a tensor is contiguous in both layouts (one
// channel, or one pixel), the two orders are the same.
at::Tensor like(const at::Tensor &t, const at::Tensor &ref) {
    return channels_last(ref) ? t.contiguous(at::MemoryFormat::ChannelsLast) : t.contiguous();
}

// A tensor the kernels take as [outer, channels, inner] in memory: channels-last images are
// [N·H·W, C, 1], NCHW ones [N, C, H·W], matrices [N, C, 1].
struct Shape {
    int64_t outer, channels, inner;

    explicit Shape(const at::Tensor &t)
        : outer(t.size(0)), channels(t.size(1)), inner(t.dim() == 4 ? t.size(2) * t.size(3) : 1) {
        if (channels_last(t)) outer *= inner, inner = 1;
    }

    int64_t count() const { return outer * inner; }
    // Rows of the outer dimension per task: enough elements to pay for a thread's start.
    int64_t grain() const { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, channels * inner)); }
};

// The compiler cannot prove that the rows read and written do not overlap.
#define VECTORIZE _Pragma("GCC ivdep")

// The elementwise pass of each map, given a per-channel shift `sh` and the output y's mask m:
// the forward leaky_relu(g + sh), the backward m·g + sh, the backward's adjoint m·(g + sh).
enum class Pass { Forward, Grad, Adjoint };

// m·g: leaky ReLU's derivative at y times g (build.rs compiles with -fno-trapping-math, without
// which GCC keeps loops with such a select scalar, with a branch: its arm could raise a
// floating-point exception).
template <typename T>
inline T masked(T g, T y, T slope) {
    return y > 0 ? g : slope * g;
}

template <Pass P, typename T>
inline T value(T g, T y, T sh, T slope) {
    if constexpr (P == Pass::Grad) {
        return masked(g, y, slope) + sh;
    } else if constexpr (P == Pass::Forward) {
        return masked(g + sh, g + sh, slope);
    } else {
        return masked(g + sh, y, slope);
    }
}

// out = value<P>(g, y, sh[channel]) over every element, rows of the outer dimension in parallel
// (`y` is read only by the passes that take the mask from it).
template <Pass P, typename T>
void elementwise(const Shape &s, const T *g, const T *y, const std::vector<T> &shift, T slope, T *out) {
    const int64_t channels = s.channels, inner = s.inner;
    const T *sh = shift.data();
    at::parallel_for(0, s.outer, s.grain(), [=](int64_t lo, int64_t hi) {
        for (int64_t i = lo; i < hi; ++i) {
            const T *gr = g + i * channels * inner, *yr = y + i * channels * inner;
            T *o = out + i * channels * inner;
            if (inner == 1) {
                VECTORIZE for (int64_t c = 0; c < channels; ++c) o[c] = value<P>(gr[c], yr[c], sh[c], slope);
                continue;
            }
            for (int64_t c = 0; c < channels; ++c) {
                const T *gc = gr + c * inner, *yc = yr + c * inner;
                T *oc = o + c * inner;
                const T shc = sh[c];
                VECTORIZE for (int64_t j = 0; j < inner; ++j) oc[j] = value<P>(gc[j], yc[j], shc, slope);
            }
        }
    });
}

// The per-channel sums, in double, of g (`with_mask`: of m·g, m from the output y) over every
// element: per-thread partial sums, added in thread order.
template <typename T>
std::vector<double> channel_sums(const Shape &s, const T *g, const T *y, bool with_mask, T slope) {
    const int64_t channels = s.channels, inner = s.inner;
    std::vector<std::vector<double>> partial(at::get_num_threads(), std::vector<double>(channels, 0.0));
    at::parallel_for(0, s.outer, s.grain(), [&](int64_t lo, int64_t hi) {
        double *acc = partial[at::get_thread_num()].data();
        for (int64_t i = lo; i < hi; ++i) {
            const T *gr = g + i * channels * inner, *yr = y + i * channels * inner;
            if (inner == 1 && with_mask) {
                VECTORIZE for (int64_t c = 0; c < channels; ++c) acc[c] += masked(gr[c], yr[c], slope);
            } else if (inner == 1) {
                VECTORIZE for (int64_t c = 0; c < channels; ++c) acc[c] += gr[c];
            } else {
                for (int64_t c = 0; c < channels; ++c) {
                    const T *gc = gr + c * inner, *yc = yr + c * inner;
                    double sum = 0;
                    for (int64_t j = 0; j < inner; ++j) sum += with_mask ? masked(gc[j], yc[j], slope) : gc[j];
                    acc[c] += sum;
                }
            }
        }
    });
    std::vector<double> total(channels, 0.0);
    for (const auto &p : partial)
        for (int64_t c = 0; c < channels; ++c) total[c] += p[c];
    return total;
}

// `base[c] + scale · sums[c]` per channel (an undefined base: zero), in T.
template <typename T>
std::vector<T> per_channel(const at::Tensor &base, const std::vector<double> &sums, double scale) {
    at::Tensor b = base.defined() ? base.contiguous() : at::Tensor();
    const T *bp = b.defined() ? b.const_data_ptr<T>() : nullptr;
    std::vector<T> out(sums.size());
    for (size_t c = 0; c < sums.size(); ++c)
        out[c] = static_cast<T>((bp ? static_cast<double>(bp[c]) : 0.0) + scale * sums[c]);
    return out;
}

// The same formulas in ATen ops, for any device and layout.
std::vector<int64_t> stat_dims(const at::Tensor &t) {
    std::vector<int64_t> dims{0};
    for (int64_t d = 2; d < t.dim(); ++d) dims.push_back(d);
    return dims;
}

at::Tensor broadcast(const at::Tensor &p, const at::Tensor &t) {
    std::vector<int64_t> shape(t.dim(), 1);
    shape[1] = -1;
    return p.view(shape);
}

}  // namespace

at::Tensor forward(const at::Tensor &x, const at::Tensor &bias, double slope) {
    if (!kernels_apply(x) || bias.scalar_type() != x.scalar_type() || !bias.device().is_cpu() ||
        bias.numel() != x.size(1))
        return at::leaky_relu(x + (broadcast(bias, x) - x.mean(stat_dims(x), true)), slope);
    Shape s(x);
    auto y = at::empty_like(x);
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bn_leaky_relu", [&] {
        const auto *xp = x.const_data_ptr<scalar_t>();
        const auto a = static_cast<scalar_t>(slope);
        auto shift = per_channel<scalar_t>(bias, channel_sums(s, xp, xp, false, a), -1.0 / s.count());
        elementwise<Pass::Forward>(s, xp, xp, shift, a, y.data_ptr<scalar_t>());
    });
    return y;
}

std::tuple<at::Tensor, at::Tensor> grad(const at::Tensor &gy, const at::Tensor &y, double slope) {
    if (!kernels_apply(y) || gy.scalar_type() != y.scalar_type()) {
        auto d = at::leaky_relu_backward(gy, y, slope, /*self_is_result=*/true);
        auto dims = stat_dims(y);
        return {d - d.mean(dims, true), d.sum(dims)};
    }
    Shape s(y);
    auto g = like(gy, y);
    auto gx = at::empty_like(y);
    auto gb = at::empty({s.channels}, y.options());
    AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "bn_leaky_relu_grad", [&] {
        const auto *gp = g.const_data_ptr<scalar_t>(), *yp = y.const_data_ptr<scalar_t>();
        const auto a = static_cast<scalar_t>(slope);
        auto sums = channel_sums(s, gp, yp, true, a);
        auto *gbp = gb.data_ptr<scalar_t>();
        for (int64_t c = 0; c < s.channels; ++c) gbp[c] = static_cast<scalar_t>(sums[c]);
        auto shift = per_channel<scalar_t>(at::Tensor(), sums, -1.0 / s.count());
        elementwise<Pass::Grad>(s, gp, yp, shift, a, gx.data_ptr<scalar_t>());
    });
    return {gx, gb};
}

at::Tensor grad_adjoint(const at::Tensor &gx, const at::Tensor &gb, const at::Tensor &y, double slope) {
    if (!kernels_apply(y) || gx.scalar_type() != y.scalar_type() || gb.scalar_type() != y.scalar_type() ||
        !gb.device().is_cpu() || gb.numel() != y.size(1))
        return at::leaky_relu_backward(gx - gx.mean(stat_dims(y), true) + broadcast(gb, gx), y, slope, true);
    Shape s(y);
    auto g = like(gx, y);
    auto out = at::empty_like(y);
    AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "bn_leaky_relu_grad_adjoint", [&] {
        const auto *gp = g.const_data_ptr<scalar_t>(), *yp = y.const_data_ptr<scalar_t>();
        const auto a = static_cast<scalar_t>(slope);
        auto shift = per_channel<scalar_t>(gb, channel_sums(s, gp, yp, false, a), -1.0 / s.count());
        elementwise<Pass::Adjoint>(s, gp, yp, shift, a, out.data_ptr<scalar_t>());
    });
    return out;
}

}  // namespace bn_leaky_relu
