#include "pointwise_pool.h"

#include "cpu_kernels.h"
#include "pointwise_kernels.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <iterator>
#include <limits>
#include <vector>

namespace pointwise_kernels {

#define GTN_KERNELS(isa)                  \
    namespace isa {                       \
    extern const Table<float> floats;     \
    extern const Table<double> doubles;   \
    }
GTN_KERNELS(baseline)
#if defined(__x86_64__)
GTN_KERNELS(avx2)
GTN_KERNELS(avx512)
#endif
#undef GTN_KERNELS

// The CPU's instruction set level, as the builds' `level` counts it. Asked feature by feature:
// the level names ("x86-64-v3") are accepted from GCC 12 and clang 18 on only. The features
// named are those older compilers know; a CPU with them has its level's others (F16C, LZCNT,
// MOVBE: every one from Haswell and Zen on).
int cpu_level() {
#if defined(__x86_64__)
    bool v3 = __builtin_cpu_supports("avx") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
              __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2");
    bool v4 = v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
              __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq") &&
              __builtin_cpu_supports("avx512vl");
    return v4 ? 3 : v3 ? 2 : 1;
#else
    return 1;
#endif
}

namespace {

// The builds of csrc/pointwise_kernels.cpp by instruction set level: the baseline, then on x86-64
// v3 (AVX2, FMA) and v4 (AVX-512).
const Table<float> *const kFloats[] = {
    &baseline::floats,
#if defined(__x86_64__)
    &avx2::floats,
    &avx512::floats,
#endif
};
const Table<double> *const kDoubles[] = {
    &baseline::doubles,
#if defined(__x86_64__)
    &avx2::doubles,
    &avx512::doubles,
#endif
};

// The builds this CPU runs, by index into kFloats and kDoubles, best last: those whose code needs
// no more than the CPU has (a `-march` in CXXFLAGS can leave a build below or above the level
// build.rs asked for). The baseline alone if none qualifies.
const std::vector<int> &runnable() {
    static const std::vector<int> builds = [] {
        std::vector<int> fit;
        for (int i = 0; i < static_cast<int>(std::size(kFloats)); ++i)
            if (kFloats[i]->level <= cpu_level()) fit.push_back(i);
        if (fit.empty()) fit.push_back(0);
        return fit;
    }();
    return builds;
}

std::atomic<int> forced_level{-1};

int build() {
    int forced = forced_level;
    return runnable()[forced >= 0 ? forced : levels() - 1];
}

}  // namespace

int levels() { return static_cast<int>(runnable().size()); }

bool force_level(int level) {
    if (level >= levels()) return false;
    forced_level = level;
    return true;
}

template <>
const Table<float> &table<float>() {
    return *kFloats[build()];
}

template <>
const Table<double> &table<double>() {
    return *kDoubles[build()];
}

}  // namespace pointwise_kernels

namespace pointwise_pool {
namespace {

using pointwise_kernels::Dims;
using pointwise_kernels::kMaxChannels;

constexpr auto kNhwc = at::MemoryFormat::ChannelsLast;

int64_t pixels(const Dims &d) { return d.h * d.w; }
int64_t pooled(const Dims &d) { return (d.h + 1) / 2 * ((d.w + 1) / 2); }

// A 3x3 convolution (stride 1, zero padding 1) of a one-channel image: the kernels take it as
// the 1x1 convolution of the image's nine shifted copies, built per image in scratch (and the
// gradient with respect to them summed back into the image there), where libtorch's im2col and
// col2im ran serially over the whole batch and the graph kept the copies.
bool image_form(const at::Tensor &weight) { return weight.dim() == 4 && weight.size(2) == 3; }

Dims dims_of(const at::Tensor &input, const at::Tensor &weight) {
    return {input.size(2), input.size(3), image_form(weight) ? 9 : input.size(1), weight.size(0)};
}

// [K, C, 1, 1] or [K, 1, 3, 3] -> [K, kMaxChannels], zero beyond C.
at::Tensor padded(const at::Tensor &weight) {
    auto k = weight.size(0);
    auto wp = at::zeros({k, kMaxChannels}, weight.options());
    auto w = weight.reshape({k, -1});
    wp.narrow(1, 0, w.size(1)).copy_(w);
    return wp;
}

// [K, C, 1, 1] or [K, 1, 3, 3] -> [C, K], contiguous.
at::Tensor transposed(const at::Tensor &weight) { return weight.reshape({weight.size(0), -1}).t().contiguous(); }

std::vector<int64_t> pooled_sizes(const at::Tensor &input, const Dims &d) {
    return {input.size(0), d.k, (d.h + 1) / 2, (d.w + 1) / 2};
}

at::Tensor pooled_like(const at::Tensor &input, const Dims &d, at::ScalarType kind) {
    return at::empty(pooled_sizes(input, d), input.options().dtype(kind).memory_format(kNhwc));
}

// A per-thread [h + 2, w + 2] image, zero on its border (and, until written, inside).
template <typename T>
T *bordered(const Dims &d) {
    thread_local std::vector<T> image;
    image.assign((d.h + 2) * (d.w + 2), T(0));
    return image.data();
}

// The nine shifted copies [pixels, 9] of image `x` [h, w], zero where they overhang it.
template <typename T>
void shifted(const Dims &d, const T *x, T *out) {
    const int64_t row = d.w + 2;
    T *p = bordered<T>(d);
    for (int64_t y = 0; y < d.h; ++y) std::copy(x + y * d.w, x + (y + 1) * d.w, p + (y + 1) * row + 1);
    for (int64_t y = 0; y < d.h; ++y)
        for (int64_t z = 0; z < d.w; ++z, out += 9)
            for (int64_t r = 0; r < 3; ++r)
                for (int64_t s = 0; s < 3; ++s) out[r * 3 + s] = p[(y + r) * row + z + s];
}

// The adjoint of `shifted`: gi [h, w] = the sum of the copies' gradients g [pixels, 9] that
// each pixel went to.
template <typename T>
void unshifted(const Dims &d, const T *g, T *gi) {
    const int64_t row = d.w + 2;
    T *p = bordered<T>(d);
    for (int64_t y = 0; y < d.h; ++y)
        for (int64_t z = 0; z < d.w; ++z, g += 9)
            for (int64_t r = 0; r < 3; ++r)
                for (int64_t s = 0; s < 3; ++s) p[(y + r) * row + z + s] += g[r * 3 + s];
    for (int64_t y = 0; y < d.h; ++y) std::copy(p + (y + 1) * row + 1, p + (y + 1) * row + 1 + d.w, gi + y * d.w);
}

// One input image of the kernels: image b of `x` as it is, or (image form) its shifted copies
// built in `scratch`.
template <typename T>
const T *kernel_input(const at::Tensor &x, bool image, const Dims &d, int64_t b, T *scratch) {
    if (!image) return x.const_data_ptr<T>() + b * pixels(d) * d.c;
    shifted(d, x.const_data_ptr<T>() + b * pixels(d), scratch);
    return scratch;
}

// The scratch image [pixels, k], then (image form) room for `copies` sets of shifted copies.
int64_t scratch_size(const Dims &d, bool image, int64_t copies) {
    return pixels(d) * (d.k + (image ? copies * d.c : 0));
}

// Runs `f(image, scratch)` over `n` images in parallel, each thread with a scratch image of
// `size` values.
template <typename T, typename F>
void for_each_image(int64_t n, int64_t size, F f) {
    at::parallel_for(0, n, 1, [&](int64_t lo, int64_t hi) {
        thread_local std::vector<T> scratch;
        if (static_cast<int64_t>(scratch.size()) < size) scratch.resize(size);
        for (int64_t b = lo; b < hi; ++b) f(b, scratch.data());
    });
}

}  // namespace

bool applies(const at::Tensor &input, const at::Tensor &weight, int64_t stride, int64_t padding) {
    auto kind = input.scalar_type();
    if (!(cpu_kernels::take(input) && (kind == at::kFloat || kind == at::kDouble) && weight.scalar_type() == kind &&
          input.dim() == 4 && weight.dim() == 4 && weight.size(1) == input.size(1) && stride == 1 &&
          input.size(2) * input.size(3) <= std::numeric_limits<int32_t>::max()))
        return false;
    bool pointwise = weight.size(2) == 1 && weight.size(3) == 1 && padding == 0 && input.size(1) <= kMaxChannels;
    bool image = weight.size(2) == 3 && weight.size(3) == 3 && padding == 1 && input.size(1) == 1;
    return pointwise || image;
}

std::tuple<at::Tensor, at::Tensor> conv_max_pool(const at::Tensor &input, const at::Tensor &weight) {
    TORCH_CHECK(applies(input, weight, 1, image_form(weight) ? 1 : 0), "pointwise max-pool: input ", input.sizes(),
                " and weight ", weight.sizes(), " do not fit");
    auto x = input.contiguous(kNhwc), wt = transposed(weight);
    auto d = dims_of(input, weight);
    bool image = image_form(weight);
    auto y = pooled_like(input, d, input.scalar_type()), arg = pooled_like(input, d, at::kInt);
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "pointwise_max_pool", [&] {
        const auto &kernels = pointwise_kernels::table<scalar_t>();
        for_each_image<scalar_t>(x.size(0), scratch_size(d, image, 1), [&](int64_t b, scalar_t *s) {
            kernels.conv_max_pool(d, kernel_input(x, image, d, b, s + pixels(d) * d.k), wt.const_data_ptr<scalar_t>(),
                                s, y.data_ptr<scalar_t>() + b * pooled(d) * d.k,
                                arg.data_ptr<int32_t>() + b * pooled(d) * d.k);
        });
    });
    return {y, arg};
}

at::Tensor conv_at_index(const at::Tensor &input, const at::Tensor &weight, const at::Tensor &other,
                         const at::Tensor &other_weight, const at::Tensor &index) {
    bool image = image_form(weight);
    int64_t padding = image ? 1 : 0;
    TORCH_CHECK(applies(input, weight, 1, padding) &&
                    (!other.defined() || (applies(other, other_weight, 1, padding) &&
                                          other.sizes() == input.sizes() && other_weight.sizes() == weight.sizes())) &&
                    index.scalar_type() == at::kInt,
                "pointwise max-pool: input ", input.sizes(), ", weight ", weight.sizes(), " and index ",
                index.sizes(), " do not fit");
    auto d = dims_of(input, weight);
    TORCH_CHECK(index.sizes() == at::IntArrayRef(pooled_sizes(input, d)), "pointwise max-pool: index ",
                index.sizes(), " does not pool input ", input.sizes());
    auto x = input.contiguous(kNhwc), wt = transposed(weight), arg = index.contiguous(kNhwc);
    at::Tensor o, owt;
    if (other.defined()) o = other.contiguous(kNhwc), owt = transposed(other_weight);
    auto y = pooled_like(input, d, input.scalar_type());
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "pointwise_at_index", [&] {
        const auto &kernels = pointwise_kernels::table<scalar_t>();
        for_each_image<scalar_t>(x.size(0), scratch_size(d, image, 2), [&](int64_t b, scalar_t *s) {
            const int64_t cell = b * pooled(d) * d.k;
            scalar_t *copies = s + pixels(d) * d.k;
            kernels.conv_at_index(d, kernel_input(x, image, d, b, copies), wt.const_data_ptr<scalar_t>(),
                                o.defined() ? kernel_input(o, image, d, b, copies + pixels(d) * d.c) : nullptr,
                                o.defined() ? owt.const_data_ptr<scalar_t>() : nullptr,
                                arg.const_data_ptr<int32_t>() + cell, s, y.data_ptr<scalar_t>() + cell);
        });
    });
    return y;
}

std::tuple<at::Tensor, at::Tensor> grads(const at::Tensor &grad, const at::Tensor &index, const at::Tensor &input,
                                         const at::Tensor &weight, bool want_input, bool want_weight) {
    auto d = dims_of(input, weight);
    bool image = image_form(weight);
    TORCH_CHECK(applies(input, weight, 1, image ? 1 : 0) && index.scalar_type() == at::kInt &&
                    grad.sizes() == index.sizes() && index.sizes() == at::IntArrayRef(pooled_sizes(input, d)),
                "pointwise max-pool gradients: gradient ", grad.sizes(), " and index ", index.sizes(),
                " do not pool input ", input.sizes(), " and weight ", weight.sizes());
    auto g = grad.contiguous(kNhwc), arg = index.contiguous(kNhwc);
    auto x = want_weight ? input.contiguous(kNhwc) : at::Tensor();
    auto wp = want_input ? padded(weight) : at::Tensor();
    auto gi = want_input ? at::empty(input.sizes(), input.options().memory_format(kNhwc)) : at::Tensor();
    // The weight's gradient summed per thread (each into its own [c, k] row), then over threads.
    auto acc = want_weight ? at::zeros({at::get_num_threads(), d.c, d.k}, input.options()) : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "pointwise_grads", [&] {
        const auto &kernels = pointwise_kernels::table<scalar_t>();
        for_each_image<scalar_t>(g.size(0), scratch_size(d, image, 2), [&](int64_t b, scalar_t *s) {
            const int64_t cell = b * pooled(d) * d.k;
            scalar_t *copies = s + pixels(d) * d.k, *copies_grad = copies + pixels(d) * d.c;
            scalar_t *input_grad = nullptr;
            if (want_input) input_grad = image ? copies_grad : gi.data_ptr<scalar_t>() + b * pixels(d) * d.c;
            kernels.grads(d, g.const_data_ptr<scalar_t>() + cell, arg.const_data_ptr<int32_t>() + cell,
                          want_weight ? kernel_input(x, image, d, b, copies) : nullptr,
                          want_input ? wp.const_data_ptr<scalar_t>() : nullptr, s, input_grad,
                          want_weight ? acc.data_ptr<scalar_t>() + at::get_thread_num() * d.c * d.k : nullptr);
            if (want_input && image) unshifted(d, copies_grad, gi.data_ptr<scalar_t>() + b * pixels(d));
        });
    });
    auto gw = want_weight ? acc.sum(0).t().reshape(weight.sizes()) : at::Tensor();
    return {gi, gw};
}

}  // namespace pointwise_pool
