#include "winograd.h"

#include "cpu_kernels.h"
#include "maxpool.h"
#include "pointwise_kernels.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <utility>
#include <vector>

namespace winograd {
namespace {

// Below this many channels on either side the matrix products are too thin to pay for the
// transforms (base_fc's second layer has 64 in, 128 out; its first, one).
constexpr int64_t kMinChannels = 16;

// Tiles transformed and multiplied at a time: small enough that a chunk's transformed input and
// output (points x tiles x channels each) stay in cache between the transform and the product,
// large enough for long product batches. F(4x4, 3x3): 384 tiles (24 of base_fc's 14 x 14 images);
// single one-thread profiles of base_fc's meta-step were ~3% slower with 128 or 512 and ~15%
// with 1024.
// The wide layer's F(4x4, 2x2): 256 tiles (64 of MNIST's images of 2 x 2 tiles); 128 and 512
// were no different within the noise (one-thread profiles of the MLP's meta-step).
constexpr int64_t kChunkTiles4x4 = 384;
constexpr int64_t kChunkTiles4x4x2 = 256;

constexpr auto kNhwc = at::MemoryFormat::ChannelsLast;

// The wide layer's border folds run over channels of distinct rows of its scratch image, which the
// compiler cannot prove do not alias.
#define VECTORIZE _Pragma("GCC ivdep")

// Both forms' output tiles are 4x4; their transformed tiles have 6 x 6 points (F(4x4, 3x3)) and
// 5 x 5 (F(4x4, 2x2), the wide layer).
constexpr int64_t kTile = 4;
constexpr int64_t kPoints = 36;
constexpr int64_t kWidePoints = 25;

// A channels-last batch of images [n, h, w, c] cut into 4x4 output tiles, those of the last row
// and column overhanging the image where its sides are not multiples of 4.
struct Tiles {
    int64_t n, h, w, chunk_tiles;
    int64_t rows() const { return (h + kTile - 1) / kTile; }
    int64_t cols() const { return (w + kTile - 1) / kTile; }
    int64_t per_image() const { return rows() * cols(); }
    int64_t images_per_chunk() const { return std::max<int64_t>(1, chunk_tiles / per_image()); }
    // Offsets, in elements of `c` channels: of pixel (y, x) of image b, and of tile (i, j) of
    // image b within a plane of transformed tiles.
    int64_t pixel(int64_t b, int64_t y, int64_t x, int64_t c) const { return ((b * h + y) * w + x) * c; }
    int64_t tile(int64_t b, int64_t i, int64_t j, int64_t c) const { return ((b * rows() + i) * cols() + j) * c; }
};

// Runs `f(image, tile row, tile column)` over every tile of `images` images, images in parallel.
template <typename F>
void for_each_tile(int64_t images, const Tiles &t, F f) {
    at::parallel_for(0, images, 1, [&](int64_t lo, int64_t hi) {
        for (int64_t b = lo; b < hi; ++b)
            for (int64_t i = 0; i < t.rows(); ++i)
                for (int64_t j = 0; j < t.cols(); ++j) f(b, i, j);
    });
}

// g ⊗ g for a one-dimensional transform g [rows, cols] (row by row), as a [rows², cols²] matrix:
// the transform of every kernel at once.
at::Tensor kron_square(const double *g, int rows, int cols, const at::TensorOptions &options) {
    std::vector<double> m(rows * rows * cols * cols);
    for (int a = 0; a < rows; ++a)
        for (int b = 0; b < rows; ++b)
            for (int k = 0; k < cols; ++k)
                for (int l = 0; l < cols; ++l) m[(a * rows + b) * cols * cols + k * cols + l] = g[a * cols + k] * g[b * cols + l];
    return at::tensor(m, at::kDouble).view({rows * rows, cols * cols}).to(options);
}

// G ⊗ G of F(4x4, 3x3) [36, 9].
at::Tensor g_kron_g(const at::TensorOptions &options) {
    static const double g[6 * 3] = {1,        0,       0,        -1. / 3, -1. / 3, -1. / 3, 1. / 3, -1. / 3, 1. / 3,
                                    1. / 15, 2. / 15, 4. / 15, -16. / 15, 8. / 15, -4. / 15, 0,      0,       1};
    return kron_square(g, 6, 3, options);
}

// [K, C, s, s] -> [points, C, K], by `kron` [points, s²].
at::Tensor weight_transform(const at::Tensor &weight, const at::Tensor &kron) {
    auto k = weight.size(0), c = weight.size(1), points = kron.size(0);
    return at::matmul(kron, weight.reshape({k * c, kron.size(1)}).t()).view({points, k, c}).transpose(1, 2);
}

// Its adjoint: [points, C, K] -> [K, C, s, s].
at::Tensor weight_transform_adjoint(const at::Tensor &u, const at::Tensor &kron, int64_t s) {
    auto points = u.size(0), c = u.size(1), k = u.size(2);
    return at::matmul(u.transpose(1, 2).reshape({points, k * c}).t(), kron).reshape({k, c, s, s});
}

at::Tensor weight_transform(const at::Tensor &weight) { return weight_transform(weight, g_kron_g(weight.options())); }

at::Tensor weight_transform_adjoint(const at::Tensor &u) {
    return weight_transform_adjoint(u, g_kron_g(u.options()), 3);
}

// The pixels of the 6x6 patch around tile (i, j) of image b of `x`: `outside` where the patch
// overhangs the image.
template <typename P>
void patch(P (&p)[6][6], P x, int64_t b, int64_t i, int64_t j, const Tiles &t, int64_t c, P outside) {
    for (int r = 0; r < 6; ++r)
        for (int s = 0; s < 6; ++s) {
            int64_t h = kTile * i - 1 + r, w = kTile * j - 1 + s;
            bool inside = h >= 0 && h < t.h && w >= 0 && w < t.w;
            p[r][s] = inside ? x + t.pixel(b, h, w, c) : outside;
        }
}

// The 4x4 output pixels of tile (i, j) of image b of `y`: `outside` where the tile overhangs it.
template <typename P>
void quad(P (&q)[4][4], P y, int64_t b, int64_t i, int64_t j, const Tiles &t, int64_t c, P outside) {
    for (int r = 0; r < 4; ++r)
        for (int s = 0; s < 4; ++s) {
            int64_t h = kTile * i + r, w = kTile * j + s;
            q[r][s] = h < t.h && w < t.w ? y + t.pixel(b, h, w, c) : outside;
        }
}

constexpr auto kForm = pointwise_kernels::Form::F4x4_3x3;

// A buffer of at least n values per thread and use, kept from call to call: the transforms'
// scratch tile (kept in L1), the sink for pixels past an image's edge, zeros read there instead
// (only ever grown, so zero).
enum class Use { kScratch, kSink, kZeros };
template <typename T, Use U>
T *per_thread(int64_t n) {
    thread_local std::vector<T> buffer;
    if (static_cast<int64_t>(buffer.size()) < n) buffer.resize(n);
    return buffer.data();
}

// The kernels (csrc/pointwise_kernels.h) take a scratch tile of up to 6 x 6 points of c channels.
template <typename T>
T *scratch_tile(int64_t c) {
    return per_thread<T, Use::kScratch>(kPoints * c);
}

// B^T d B for the 6x6 patch around every tile of `images` images from `x` (zero outside the
// image), into `v` [36, tiles, c].
template <typename T>
void input_transform(const T *x, T *v, int64_t images, const Tiles &t, int64_t c) {
    const std::vector<T> zeros(c, T(0));
    const int64_t plane = images * t.per_image() * c;
    const auto kernel = pointwise_kernels::table<T>().winograd_input;
    for_each_tile(images, t, [&](int64_t b, int64_t i, int64_t j) {
        const T *p[6][6];
        patch(p, x, b, i, j, t, c, zeros.data());
        kernel(kForm, p[0], v + t.tile(b, i, j, c), plane, c, scratch_tile<T>(c));
    });
}

// The adjoint of input_transform: B V B^T of every tile of `v` [36, tiles, c], added into the
// pixels of `x` that its patch covers (what falls outside the image goes to a per-thread sink).
// Images run in parallel, the overlapping tiles of one image in order.
template <typename T>
void input_transform_adjoint(const T *v, T *x, int64_t images, const Tiles &t, int64_t c) {
    const int64_t plane = images * t.per_image() * c;
    const auto kernel = pointwise_kernels::table<T>().winograd_input_adjoint;
    for_each_tile(images, t, [&](int64_t b, int64_t i, int64_t j) {
        T *p[6][6];
        patch(p, x, b, i, j, t, c, per_thread<T, Use::kSink>(c));
        kernel(kForm, v + t.tile(b, i, j, c), plane, p[0], c, scratch_tile<T>(c));
    });
}

// A^T m A of every tile of image b in `m` [36, tiles, c] (planes `plane` values apart): the 4x4
// output pixels of `image` (that image's pixels), those past its edge into a per-thread sink.
template <typename T>
void output_transform_image(const T *m, T *image, int64_t b, const Tiles &t, int64_t c, int64_t plane) {
    T *sink = per_thread<T, Use::kSink>(c);
    const auto kernel = pointwise_kernels::table<T>().winograd_output;
    T *scratch = scratch_tile<T>(c);
    for (int64_t i = 0; i < t.rows(); ++i)
        for (int64_t j = 0; j < t.cols(); ++j) {
            T *q[4][4];
            quad(q, image, 0, i, j, t, c, sink);
            kernel(kForm, m + t.tile(b, i, j, c), plane, q[0], c, scratch);
        }
}

// output_transform_image of each of the `images` images of `m`, handed to `f(image, its pixels)`:
// each transformed into a scratch image that stays in cache for `f` to pool or read.
template <typename T, typename Fn>
void for_each_output_image(const T *m, int64_t images, const Tiles &t, int64_t c, Fn f) {
    const int64_t plane = images * t.per_image() * c;
    at::parallel_for(0, images, 1, [&](int64_t lo, int64_t hi) {
        thread_local std::vector<T> image;
        image.resize(t.h * t.w * c);
        for (int64_t b = lo; b < hi; ++b) {
            output_transform_image(m, image.data(), b, t, c, plane);
            f(b, image.data());
        }
    });
}

// The adjoint of output_transform for the tiles of image b: A g A^T of every 4x4 tile of `image`
// (that image's pixels, zero past its edge), into `m` [36, tiles, c] whose planes are `plane`
// values apart.
template <typename T>
void output_transform_adjoint_image(const T *image, T *m, int64_t b, const Tiles &t, int64_t c, int64_t plane) {
    const T *zeros = per_thread<T, Use::kZeros>(c);
    const auto kernel = pointwise_kernels::table<T>().winograd_output_adjoint;
    T *scratch = scratch_tile<T>(c);
    for (int64_t i = 0; i < t.rows(); ++i)
        for (int64_t j = 0; j < t.cols(); ++j) {
            const T *q[4][4];
            quad(q, image, 0, i, j, t, c, zeros);
            kernel(kForm, q[0], m + t.tile(b, i, j, c), plane, c, scratch);
        }
}

// The adjoint of output_transform: A g A^T of every 4x4 tile of `y`, into `m` [36, tiles, c].
template <typename T>
void output_transform_adjoint(const T *y, T *m, int64_t images, const Tiles &t, int64_t c) {
    const int64_t plane = images * t.per_image() * c;
    at::parallel_for(0, images, 1, [&](int64_t lo, int64_t hi) {
        for (int64_t b = lo; b < hi; ++b) output_transform_adjoint_image(y + t.pixel(b, 0, 0, c), m, b, t, c, plane);
    });
}

// output_transform_adjoint of the max-pool's backward: of `grad` [images, pooled, c] scattered at
// its arg-max `arg`, an image at a time in a scratch image that stays in cache.
template <typename T>
void output_transform_adjoint_of_pool(const T *grad, const int32_t *arg, int64_t pooled, T *m, int64_t images,
                                      const Tiles &t, int64_t c) {
    const int64_t plane = images * t.per_image() * c;
    at::parallel_for(0, images, 1, [&](int64_t lo, int64_t hi) {
        thread_local std::vector<T> image;
        image.resize(t.h * t.w * c);
        for (int64_t b = lo; b < hi; ++b) {
            maxpool::unpool_image(image.data(), t.h * t.w, grad + b * pooled * c, arg + b * pooled * c, pooled, c);
            output_transform_adjoint_image(image.data(), m, b, t, c, plane);
        }
    });
}

Tiles tiles_of(const at::Tensor &t) { return {t.size(0), t.size(2), t.size(3), kChunkTiles4x4}; }

// Runs `f(first image, images)` over the batch a chunk at a time.
template <typename F>
void by_chunk(const Tiles &t, F f) {
    for (int64_t b = 0; b < t.n; b += t.images_per_chunk()) f(b, std::min(t.images_per_chunk(), t.n - b));
}

// A chunk's transformed output gradient [36, tiles, c] from the pooled gradient `grad` and the
// pool's arg-max `index` (both channels-last): output_transform_adjoint of the unpooled gradient.
at::Tensor transformed_of_pool(const at::Tensor &grad, const at::Tensor &index, const Tiles &t, int64_t first,
                               int64_t images) {
    auto c = grad.size(1);
    auto pooled = grad.size(2) * grad.size(3);
    auto m = at::empty({kPoints, images * t.per_image(), c}, grad.options());
    AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "winograd_transform_of_pool", [&] {
        output_transform_adjoint_of_pool(grad.const_data_ptr<scalar_t>() + first * pooled * c,
                                         index.const_data_ptr<int32_t>() + first * pooled * c, pooled,
                                         m.data_ptr<scalar_t>(), images, t, c);
    });
    return m;
}

// A chunk's transformed input [36, tiles, c] (or output, for `adjoint_of_output`).
at::Tensor transformed(const at::Tensor &nhwc, int64_t first, int64_t images, bool adjoint_of_output) {
    auto t = tiles_of(nhwc);
    auto c = nhwc.size(1);
    auto v = at::empty({kPoints, images * t.per_image(), c}, nhwc.options());
    AT_DISPATCH_FLOATING_TYPES(nhwc.scalar_type(), "winograd_transform", [&] {
        const auto *x = nhwc.const_data_ptr<scalar_t>() + t.pixel(first, 0, 0, c);
        auto *out = v.data_ptr<scalar_t>();
        if (adjoint_of_output)
            output_transform_adjoint(x, out, images, t, c);
        else
            input_transform(x, out, images, t, c);
    });
    return v;
}

}  // namespace

bool applies(const at::Tensor &input, const at::Tensor &weight, int64_t stride, int64_t padding) {
    auto kind = input.scalar_type();
    return cpu_kernels::take(input) && (kind == at::kFloat || kind == at::kDouble) && weight.scalar_type() == kind &&
           input.dim() == 4 && weight.dim() == 4 && weight.size(1) == input.size(1) && weight.size(2) == 3 &&
           weight.size(3) == 3 && stride == 1 && padding == 1 && input.size(1) >= kMinChannels &&
           weight.size(0) >= kMinChannels;
}

namespace {

// Runs `emit(m, first image, images)` on the transformed output m [36, tiles, K] of each chunk of
// conv(input, weight) + conv(other, other_weight) (`other` may be undefined), summed before the
// output transform.
template <typename Emit>
void conv_sum_by_chunk(const at::Tensor &input, const at::Tensor &weight, const at::Tensor &other,
                       const at::Tensor &other_weight, Emit emit) {
    std::vector<std::pair<at::Tensor, at::Tensor>> terms{{input.contiguous(kNhwc), weight_transform(weight)}};
    if (other.defined()) terms.emplace_back(other.contiguous(kNhwc), weight_transform(other_weight));
    by_chunk(tiles_of(input), [&](int64_t first, int64_t images) {
        at::Tensor m;
        for (auto &[x, u] : terms) {
            auto v = transformed(x, first, images, false);
            m = m.defined() ? m.baddbmm_(v, u) : at::bmm(v, u);
        }
        emit(m, first, images);
    });
}

std::vector<int64_t> pooled_sizes(const at::Tensor &input, const at::Tensor &weight) {
    return {input.size(0), weight.size(0), (input.size(2) + 1) / 2, (input.size(3) + 1) / 2};
}

}  // namespace

at::Tensor conv_sum(const at::Tensor &input, const at::Tensor &weight, const at::Tensor &other,
                    const at::Tensor &other_weight) {
    auto t = tiles_of(input);
    auto k = weight.size(0);
    auto y = at::empty({t.n, k, t.h, t.w}, input.options().memory_format(kNhwc));
    conv_sum_by_chunk(input, weight, other, other_weight, [&](const at::Tensor &m, int64_t first, int64_t images) {
        AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "winograd_output", [&] {
            const int64_t plane = images * t.per_image() * k;
            auto *out = y.data_ptr<scalar_t>();
            at::parallel_for(0, images, 1, [&](int64_t lo, int64_t hi) {
                for (int64_t b = lo; b < hi; ++b)
                    output_transform_image(m.const_data_ptr<scalar_t>(), out + t.pixel(first + b, 0, 0, k), b, t, k,
                                           plane);
            });
        });
    });
    return y.contiguous(input.suggest_memory_format());
}

at::Tensor conv(const at::Tensor &input, const at::Tensor &weight) { return conv_sum(input, weight, {}, {}); }

std::tuple<at::Tensor, at::Tensor> conv_max_pool(const at::Tensor &input, const at::Tensor &weight) {
    auto t = tiles_of(input);
    auto k = weight.size(0);
    auto sizes = pooled_sizes(input, weight);
    auto y = at::empty(sizes, input.options().memory_format(kNhwc));
    auto arg = at::empty(sizes, input.options().dtype(at::kInt).memory_format(kNhwc));
    const pointwise_kernels::Dims d{t.h, t.w, 0, k};
    const int64_t pooled = sizes[2] * sizes[3] * k;
    conv_sum_by_chunk(input, weight, {}, {}, [&](const at::Tensor &m, int64_t first, int64_t images) {
        AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "winograd_max_pool", [&] {
            const auto pool = pointwise_kernels::table<scalar_t>().pool;
            auto *out = y.data_ptr<scalar_t>() + first * pooled;
            auto *at = arg.data_ptr<int32_t>() + first * pooled;
            for_each_output_image(m.const_data_ptr<scalar_t>(), images, t, k, [&](int64_t b, const scalar_t *image) {
                pool(d, image, out + b * pooled, at + b * pooled);
            });
        });
    });
    return {y, arg};
}

at::Tensor conv_sum_at(const at::Tensor &input, const at::Tensor &weight, const at::Tensor &other,
                       const at::Tensor &other_weight, const at::Tensor &index) {
    TORCH_CHECK(index.scalar_type() == at::kInt && index.sizes() == at::IntArrayRef(pooled_sizes(input, weight)),
                "winograd gather: index ", index.sizes(), " does not pool the convolution of ", input.sizes(),
                " with ", weight.sizes());
    auto t = tiles_of(input);
    auto k = weight.size(0);
    auto arg = index.contiguous(kNhwc);
    auto y = at::empty(index.sizes(), input.options().memory_format(kNhwc));
    const int64_t pooled = index.size(2) * index.size(3) * k;
    conv_sum_by_chunk(input, weight, other, other_weight, [&](const at::Tensor &m, int64_t first, int64_t images) {
        AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "winograd_at_index", [&] {
            auto *out = y.data_ptr<scalar_t>() + first * pooled;
            const auto *at = arg.const_data_ptr<int32_t>() + first * pooled;
            for_each_output_image(m.const_data_ptr<scalar_t>(), images, t, k, [&](int64_t b, const scalar_t *image) {
                maxpool::at_index_image(out + b * pooled, image, at + b * pooled, pooled / k, k);
            });
        });
    });
    return y;
}

namespace {

// The gradients with respect to `input` and `weight` from the transformed output gradient of each
// chunk (`output_grad(first image, images)`) over `t`'s tiles.
template <typename OutputGrad>
std::tuple<at::Tensor, at::Tensor> grads_of(const Tiles &t, OutputGrad output_grad, const at::Tensor &input,
                                            const at::Tensor &weight, bool want_input, bool want_weight) {
    auto x = want_weight ? input.contiguous(kNhwc) : at::Tensor();
    auto c = weight.size(1);
    at::Tensor input_grad, u_t, weight_grad;
    if (want_input) {
        u_t = weight_transform(weight).transpose(1, 2);
        // at::zeros would drop the memory format.
        input_grad = at::empty({t.n, c, t.h, t.w}, weight.options().memory_format(kNhwc)).zero_();
    }
    if (want_weight) weight_grad = at::zeros({kPoints, c, weight.size(0)}, weight.options());
    by_chunk(t, [&](int64_t first, int64_t images) {
        // The output gradient's transform, shared by both gradients.
        at::Tensor m = output_grad(first, images);
        if (want_weight) weight_grad.baddbmm_(transformed(x, first, images, false).transpose(1, 2), m);
        if (!want_input) return;
        auto v = at::bmm(m, u_t);
        AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "winograd_input_adjoint", [&] {
            input_transform_adjoint(v.const_data_ptr<scalar_t>(),
                                    input_grad.data_ptr<scalar_t>() + t.pixel(first, 0, 0, c), images, t, c);
        });
    });
    return {input_grad, want_weight ? weight_transform_adjoint(weight_grad) : at::Tensor()};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> grads(const at::Tensor &grad_out, const at::Tensor &input,
                                         const at::Tensor &weight, bool want_input, bool want_weight) {
    TORCH_CHECK(grad_out.dim() == 4 && input.dim() == 4 && grad_out.size(0) == input.size(0),
                "Winograd gradients: output gradient ", grad_out.sizes(), " does not match input ", input.sizes());
    auto g = grad_out.contiguous(kNhwc);
    return grads_of(
        tiles_of(g), [&](int64_t first, int64_t images) { return transformed(g, first, images, true); }, input, weight,
        want_input, want_weight);
}

std::tuple<at::Tensor, at::Tensor> pooled_grads(const at::Tensor &grad, const at::Tensor &index,
                                                const at::Tensor &input, const at::Tensor &weight, bool want_input,
                                                bool want_weight) {
    auto g = grad.contiguous(kNhwc);
    TORCH_CHECK(maxpool::applies(g, index) && g.sizes() == index.sizes() &&
                    g.sizes() == at::IntArrayRef(pooled_sizes(input, weight)),
                "winograd pooled gradients: gradient ", grad.sizes(), " and index ", index.sizes(),
                " do not pool the convolution of ", input.sizes(), " with ", weight.sizes());
    auto t = tiles_of(input);
    return grads_of(
        t, [&](int64_t first, int64_t images) { return transformed_of_pool(g, index, t, first, images); }, input,
        weight, want_input, want_weight);
}

// F(4x4, 2x2) over a replicate-padded input (the generator's wide layer), its one-dimensional
// maps in csrc/pointwise_kernels.cpp. Tiles cut the output [N, K, H + 1, W + 1] into 4x4 tiles
// (H + 1 and W + 1 multiples of 4: MNIST's 7 x 7 input, an 8 x 8 grid of 2 x 2 tiles); tile (i, j)
// reads padded rows and columns 4i..4i + 4 and 4j..4j + 4, unpadded pixel (4i - 1 + r, 4j - 1 + s)
// clamped into the image.
namespace {

constexpr auto kWideForm = pointwise_kernels::Form::F4x4_2x2;

// G ⊗ G of F(4x4, 2x2) [25, 4] (points 0, 1, -1, 1/2, infinity).
at::Tensor g_kron_g_4x4_2x2(const at::TensorOptions &options) {
    static const double g[5 * 2] = {2, 0, 1, 1, -1. / 3, 1. / 3, -8. / 3, -4. / 3, 0, 1};
    return kron_square(g, 5, 2, options);
}

// B^T d B of the 5x5 patch of every tile of `images` images of the unpadded `x` [images, h, w,
// c] (`t`: the output's tiles, h = t.h - 1), into `v` [25, tiles, c].
template <typename T>
void padded_input_transform(const T *x, T *v, int64_t images, const Tiles &t, int64_t c) {
    const int64_t plane = images * t.per_image() * c, h = t.h - 1, w = t.w - 1;
    const auto kernel = pointwise_kernels::table<T>().winograd_input;
    for_each_tile(images, t, [&](int64_t b, int64_t i, int64_t j) {
        const T *p[5][5];
        for (int r = 0; r < 5; ++r)
            for (int s = 0; s < 5; ++s) {
                int64_t y = std::clamp<int64_t>(kTile * i - 1 + r, 0, h - 1), z = std::clamp<int64_t>(kTile * j - 1 + s, 0, w - 1);
                p[r][s] = x + ((b * h + y) * w + z) * c;
            }
        kernel(kWideForm, p[0], v + t.tile(b, i, j, c), plane, c, scratch_tile<T>(c));
    });
}

// Its adjoint: B V B^T of every tile of `v` [25, tiles, c], added up an image at a time in a
// scratch padded image that stays in cache, whose border is then folded onto the image's edge
// (the adjoint of replicate padding) into `x` [images, h, w, c].
template <typename T>
void padded_input_transform_adjoint(const T *v, T *x, int64_t images, const Tiles &t, int64_t c) {
    const int64_t plane = images * t.per_image() * c, h = t.h - 1, w = t.w - 1, wp = w + 2;
    const auto kernel = pointwise_kernels::table<T>().winograd_input_adjoint;
    at::parallel_for(0, images, 1, [&](int64_t lo, int64_t hi) {
        thread_local std::vector<T> scratch;
        scratch.resize((h + 2) * wp * c);
        T *padded = scratch.data();
        auto pixel = [&](int64_t y, int64_t z) { return padded + (y * wp + z) * c; };
        for (int64_t b = lo; b < hi; ++b) {
            std::fill(scratch.begin(), scratch.end(), T(0));
            for (int64_t i = 0; i < t.rows(); ++i)
                for (int64_t j = 0; j < t.cols(); ++j) {
                    T *p[5][5];
                    for (int r = 0; r < 5; ++r)
                        for (int s = 0; s < 5; ++s) p[r][s] = pixel(kTile * i + r, kTile * j + s);
                    kernel(kWideForm, v + t.tile(b, i, j, c), plane, p[0], c, scratch_tile<T>(c));
                }
            // The border rows onto the edge rows, then the border columns (corners included)
            // onto the edge columns.
            VECTORIZE for (int64_t k = 0; k < wp * c; ++k) pixel(1, 0)[k] += pixel(0, 0)[k];
            VECTORIZE for (int64_t k = 0; k < wp * c; ++k) pixel(h, 0)[k] += pixel(h + 1, 0)[k];
            for (int64_t y = 1; y <= h; ++y) {
                VECTORIZE for (int64_t k = 0; k < c; ++k) pixel(y, 1)[k] += pixel(y, 0)[k];
                VECTORIZE for (int64_t k = 0; k < c; ++k) pixel(y, w)[k] += pixel(y, w + 1)[k];
                std::copy(pixel(y, 1), pixel(y, w + 1), x + (b * h + y - 1) * w * c);
            }
        }
    });
}

// Where channel group p (`k` channels) of output grid pixel (gy, gx) of image b goes, and its
// gradient comes from: the grid [gh, gw, 4k] itself, or (`gathered`) the upsampling block's
// parity gather of it [2h, 2w, k] (csrc/upsample.h, one tap; h = gh - 1), which puts the grid
// pixel at output pixel (2(gy - r) + r, 2(gx - s) + s) for p = 2r + s and drops the rest: there,
// `outside` (a sink written to, or zeros read).
template <typename P>
struct Placement {
    P base, outside;
    const Tiles &t;
    int64_t k;
    bool gathered;

    P operator()(int64_t b, int64_t gy, int64_t gx, int p) const {
        if (!gathered) return base + ((b * t.h + gy) * t.w + gx) * 4 * k + p * k;
        const int64_t r = p / 2, s = p % 2, y = gy - r, x = gx - s, h = t.h - 1, w = t.w - 1;
        if (y < 0 || y >= h || x < 0 || x >= w) return outside;
        return base + ((b * 2 * h + 2 * y + r) * 2 * w + 2 * x + s) * k;
    }
};

// A^T m A of every tile of image b of the chunk in `m` [25, tiles, 4k] (planes `plane` values
// apart), placed as image `image` by `place`.
template <typename T>
void small_output_transform_image(const T *m, int64_t b, int64_t image, const Tiles &t, int64_t plane,
                                  const Placement<T *> &place) {
    const int64_t k = place.k;
    const auto kernel = pointwise_kernels::table<T>().winograd_output;
    T *scratch = scratch_tile<T>(k);
    for (int64_t i = 0; i < t.rows(); ++i)
        for (int64_t j = 0; j < t.cols(); ++j)
            for (int p = 0; p < 4; ++p) {
                T *q[4][4];
                for (int r = 0; r < 4; ++r)
                    for (int s = 0; s < 4; ++s) q[r][s] = place(image, kTile * i + r, kTile * j + s, p);
                kernel(kWideForm, m + t.tile(b, i, j, 4 * k) + p * k, plane, q[0], k, scratch);
            }
}

// Its adjoint, A g A^T of every 4x4 tile of the output gradient of `images` images from `first`,
// read where `place` puts them, into `m` [25, tiles, 4k].
template <typename T>
void small_output_transform_adjoint(const Placement<const T *> &place, T *m, int64_t first, int64_t images,
                                    const Tiles &t) {
    const int64_t k = place.k, plane = images * t.per_image() * 4 * k;
    const auto kernel = pointwise_kernels::table<T>().winograd_output_adjoint;
    for_each_tile(images, t, [&](int64_t b, int64_t i, int64_t j) {
        T *scratch = scratch_tile<T>(k);
        for (int p = 0; p < 4; ++p) {
            const T *q[4][4];
            for (int r = 0; r < 4; ++r)
                for (int s = 0; s < 4; ++s) q[r][s] = place(first + b, kTile * i + r, kTile * j + s, p);
            kernel(kWideForm, q[0], m + t.tile(b, i, j, 4 * k) + p * k, plane, k, scratch);
        }
    });
}

// The output's tiles for an unpadded input `x`.
Tiles padded_tiles_of(const at::Tensor &x) { return {x.size(0), x.size(2) + 1, x.size(3) + 1, kChunkTiles4x4x2}; }

// A chunk of `images` images from `first` of the unpadded input `nhwc` [N, C, H, W], transformed:
// [25, tiles, C].
at::Tensor small_transformed_input(const at::Tensor &nhwc, const Tiles &t, int64_t first, int64_t images) {
    auto c = nhwc.size(1);
    auto v = at::empty({kWidePoints, images * t.per_image(), c}, nhwc.options());
    AT_DISPATCH_FLOATING_TYPES(nhwc.scalar_type(), "winograd_small_transform", [&] {
        padded_input_transform(nhwc.const_data_ptr<scalar_t>() + first * nhwc.size(2) * nhwc.size(3) * c,
                               v.data_ptr<scalar_t>(), images, t, c);
    });
    return v;
}

// The output's sizes: the grid, or its parity gather.
std::vector<int64_t> pad_conv_sizes(const at::Tensor &input, const at::Tensor &weight, bool gathered) {
    auto n = input.size(0), k = weight.size(0), h = input.size(2), w = input.size(3);
    if (gathered) return {n, k / 4, 2 * h, 2 * w};
    return {n, k, h + 1, w + 1};
}

}  // namespace

bool pad_conv_applies(const at::Tensor &input, const at::Tensor &weight) {
    auto kind = input.scalar_type();
    return cpu_kernels::take(input) && weight.device().is_cpu() && (kind == at::kFloat || kind == at::kDouble) &&
           weight.scalar_type() == kind && input.dim() == 4 && weight.dim() == 4 && weight.size(1) == input.size(1) &&
           weight.size(2) == 2 &&
           weight.size(3) == 2 && (input.size(2) + 1) % 4 == 0 && (input.size(3) + 1) % 4 == 0 &&
           input.size(1) >= kMinChannels && weight.size(0) >= kMinChannels && weight.size(0) % 4 == 0;
}

at::Tensor pad_conv(const at::Tensor &input, const at::Tensor &weight, bool gathered) {
    TORCH_CHECK(pad_conv_applies(input, weight), "winograd pad_conv: not a convolution of ", input.sizes(), " with ",
                weight.sizes(), " that F(4x4, 2x2) takes");
    auto x = input.contiguous(kNhwc);
    auto t = padded_tiles_of(x);
    auto k = weight.size(0) / 4;
    auto u = weight_transform(weight, g_kron_g_4x4_2x2(weight.options()));
    auto y = at::empty(pad_conv_sizes(input, weight, gathered), x.options().memory_format(kNhwc));
    by_chunk(t, [&](int64_t first, int64_t images) {
        auto m = at::bmm(small_transformed_input(x, t, first, images), u);
        AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "winograd_small_output", [&] {
            const int64_t plane = images * t.per_image() * 4 * k;
            at::parallel_for(0, images, 1, [&](int64_t lo, int64_t hi) {
                const Placement<scalar_t *> place{y.data_ptr<scalar_t>(), per_thread<scalar_t, Use::kSink>(k), t, k,
                                                  gathered};
                for (int64_t b = lo; b < hi; ++b)
                    small_output_transform_image(m.const_data_ptr<scalar_t>(), b, first + b, t, plane, place);
            });
        });
    });
    return y;
}

std::tuple<at::Tensor, at::Tensor> pad_conv_grads(const at::Tensor &grad_out, const at::Tensor &input,
                                                  const at::Tensor &weight, bool gathered, bool want_input,
                                                  bool want_weight) {
    TORCH_CHECK(pad_conv_applies(input, weight) &&
                    grad_out.sizes() == at::IntArrayRef(pad_conv_sizes(input, weight, gathered)),
                "winograd pad_conv gradients: output gradient ", grad_out.sizes(), " is not that of ", input.sizes(),
                " convolved with ", weight.sizes(), gathered ? ", gathered" : "");
    if (!want_input && !want_weight) return {at::Tensor(), at::Tensor()};
    auto g = grad_out.contiguous(kNhwc);
    auto x = want_weight ? input.contiguous(kNhwc) : at::Tensor();
    auto t = padded_tiles_of(input);
    auto c = weight.size(1), k = weight.size(0) / 4;
    auto kron = g_kron_g_4x4_2x2(weight.options());
    at::Tensor input_grad, u_t, weight_grad;
    if (want_input) {
        u_t = weight_transform(weight, kron).transpose(1, 2);
        input_grad = at::empty(input.sizes(), input.options().memory_format(kNhwc));
    }
    if (want_weight) weight_grad = at::zeros({kWidePoints, c, weight.size(0)}, weight.options());
    by_chunk(t, [&](int64_t first, int64_t images) {
        auto m = at::empty({kWidePoints, images * t.per_image(), 4 * k}, g.options());
        AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "winograd_small_output_adjoint", [&] {
            const std::vector<scalar_t> zeros(k, scalar_t(0));
            const Placement<const scalar_t *> place{g.const_data_ptr<scalar_t>(), zeros.data(), t, k, gathered};
            small_output_transform_adjoint(place, m.data_ptr<scalar_t>(), first, images, t);
        });
        if (want_weight) weight_grad.baddbmm_(small_transformed_input(x, t, first, images).transpose(1, 2), m);
        if (!want_input) return;
        auto v = at::bmm(m, u_t);
        AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "winograd_small_input_adjoint", [&] {
            padded_input_transform_adjoint(v.const_data_ptr<scalar_t>(),
                                           input_grad.data_ptr<scalar_t>() + first * input.size(2) * input.size(3) * c,
                                           images, t, c);
        });
    });
    return {input_grad, want_weight ? weight_transform_adjoint(weight_grad, kron, 2) : at::Tensor()};
}

}  // namespace winograd
