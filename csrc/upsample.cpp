#include "upsample.h"

#include "cpu_kernels.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>

namespace upsample {
namespace {

// The geometry of a parity gather: K output channels, an h x w window per parity and tap, taps
// offsets of up to `reach` pixels, on a GH x GW grid of 4 * taps * K channels.
struct Gather {
    int64_t n, k, h, w, taps, gh, gw;

    int64_t reach() const { return taps == 4 ? 1 : 0; }
    // Grid channel of tap t of parity p, for output channel c.
    int64_t channel(int64_t p, int64_t t, int64_t c) const { return (p * taps + t) * k + c; }
    // The window's origin on the grid for parity (r, s) and tap (a, b).
    int64_t row(int64_t p, int64_t t) const { return p / 2 + (taps == 4 ? t / 2 : 0); }
    int64_t col(int64_t p, int64_t t) const { return p % 2 + (taps == 4 ? t % 2 : 0); }
    // Offsets of image n's grid plane of tap t of parity p for output channel c, and of parity
    // p's first pixel in the output plane of image n, channel c.
    int64_t grid_plane(int64_t n, int64_t p, int64_t t, int64_t c) const {
        return (n * 4 * taps * k + channel(p, t, c)) * gh * gw;
    }
    int64_t output_origin(int64_t n, int64_t c, int64_t p) const { return (n * k + c) * 4 * h * w + (p / 2) * 2 * w + p % 2; }

    static Gather of(at::IntArrayRef grid, int64_t taps, int64_t h, int64_t w) {
        TORCH_CHECK(taps == 1 || taps == 4, "parity gather: taps must be 1 or 4, got ", taps);
        TORCH_CHECK(grid.size() == 4 && grid[1] % (4 * taps) == 0, "parity gather: grid ", grid,
                    " is not [N, 4 * ", taps, " * K, H, W]");
        Gather g{grid[0], grid[1] / (4 * taps), h, w, taps, grid[2], grid[3]};
        TORCH_CHECK(g.gh >= h + 1 + g.reach() && g.gw >= w + 1 + g.reach(), "parity gather: grid ", grid,
                    " too small for ", h, " x ", w, " windows with ", taps, " taps");
        return g;
    }
};

bool kernel_applies(const at::Tensor &t) {
    auto kind = t.scalar_type();
    return cpu_kernels::take(t) && (kind == at::kFloat || kind == at::kDouble);
}

// Whether `t` is channels-last. Then per pixel a tap's K channels are adjacent in the grid, as they
// are in the output, and the channels-last kernels copy them as one row.
bool nhwc(const at::Tensor &t) {
    return t.dim() == 4 && t.size(1) > 1 && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

// Whether the channels-last kernels take a gather's rows: shorter ones go the channels-first way
// (the image layer's K = 1: one value per tap and pixel).
bool by_rows(const Gather &g) { return g.k >= 8; }

// Runs `f(image)` over the images, in parallel.
template <typename F>
void for_each_image(const Gather &g, F f) {
    at::parallel_for(0, g.n, 1, [&](int64_t lo, int64_t hi) {
        for (int64_t n = lo; n < hi; ++n) f(n);
    });
}

// Runs `f(image, channel)` over every output channel of every image, in parallel.
template <typename F>
void for_each_plane(const Gather &g, F f) {
    at::parallel_for(0, g.n * g.k, 1, [&](int64_t lo, int64_t hi) {
        for (int64_t i = lo; i < hi; ++i) f(i / g.k, i % g.k);
    });
}

}  // namespace

at::Tensor pad(const at::Tensor &x) { return at::replication_pad2d(x, {1, 1, 1, 1}); }

at::Tensor pad_adjoint(const at::Tensor &grad, at::IntArrayRef sizes) {
    // libtorch's kernel reads its `self` argument for the shape and the memory format only.
    auto like = at::empty(sizes, grad.options().memory_format(grad.suggest_memory_format()));
    return at::replication_pad2d_backward(grad, like, {1, 1, 1, 1});
}

at::Tensor gather_generic(const at::Tensor &grid, int64_t taps, int64_t h, int64_t w) {
    auto g = Gather::of(grid.sizes(), taps, h, w);
    // [N, K, h, 2, w, 2] is [N, K, 2h, 2w] with the parities apart.
    auto out = at::zeros({g.n, g.k, h, 2, w, 2}, grid.options());
    for (int64_t p = 0; p < 4; ++p)
        for (int64_t t = 0; t < taps; ++t)
            out.select(5, p % 2).select(3, p / 2).add_(
                grid.narrow(1, g.channel(p, t, 0), g.k).narrow(2, g.row(p, t), h).narrow(3, g.col(p, t), w));
    return out.view({g.n, g.k, 2 * h, 2 * w});
}

at::Tensor gather_adjoint_generic(const at::Tensor &grad, int64_t taps, at::IntArrayRef grid_sizes) {
    auto h = grad.size(2) / 2, w = grad.size(3) / 2;
    auto g = Gather::of(grid_sizes, taps, h, w);
    auto parities = grad.reshape({g.n, g.k, h, 2, w, 2});
    auto out = at::zeros(grid_sizes, grad.options());
    for (int64_t p = 0; p < 4; ++p)
        for (int64_t t = 0; t < taps; ++t)
            out.narrow(1, g.channel(p, t, 0), g.k)
                .narrow(2, g.row(p, t), h)
                .narrow(3, g.col(p, t), w)
                .copy_(parities.select(5, p % 2).select(3, p / 2));
    return out;
}

// The channels-last kernels: output pixel (2i + r, 2j + s) of image n sums, over the taps of
// parity p = 2r + s, the K channels of its group at grid pixel (i + row, j + col).
namespace {

template <typename T>
void gather_nhwc(const T *in, T *y, const Gather &g) {
    const int64_t c = 4 * g.taps * g.k, oh = 2 * g.h, ow = 2 * g.w;
    for_each_image(g, [&](int64_t n) {
        for (int64_t oy = 0; oy < oh; ++oy)
            for (int64_t ox = 0; ox < ow; ++ox) {
                int64_t p = 2 * (oy % 2) + ox % 2;
                T *dst = y + ((n * oh + oy) * ow + ox) * g.k;
                for (int64_t t = 0; t < g.taps; ++t) {
                    const T *src = in + ((n * g.gh + oy / 2 + g.row(p, t)) * g.gw + ox / 2 + g.col(p, t)) * c +
                                   g.channel(p, t, 0);
                    if (t == 0)
                        std::copy(src, src + g.k, dst);
                    else
                        for (int64_t k = 0; k < g.k; ++k) dst[k] += src[k];
                }
            }
    });
}

template <typename T>
void gather_adjoint_nhwc(const T *grad, T *x, const Gather &g) {
    const int64_t c = 4 * g.taps * g.k, oh = 2 * g.h, ow = 2 * g.w;
    for_each_image(g, [&](int64_t n) {
        std::fill(x + n * g.gh * g.gw * c, x + (n + 1) * g.gh * g.gw * c, T(0));
        for (int64_t oy = 0; oy < oh; ++oy)
            for (int64_t ox = 0; ox < ow; ++ox) {
                int64_t p = 2 * (oy % 2) + ox % 2;
                const T *src = grad + ((n * oh + oy) * ow + ox) * g.k;
                for (int64_t t = 0; t < g.taps; ++t)
                    std::copy(src, src + g.k,
                              x + ((n * g.gh + oy / 2 + g.row(p, t)) * g.gw + ox / 2 + g.col(p, t)) * c +
                                  g.channel(p, t, 0));
            }
    });
}

}  // namespace

at::Tensor gather(const at::Tensor &grid_in, int64_t taps, int64_t h, int64_t w) {
    if (!kernel_applies(grid_in)) return gather_generic(grid_in, taps, h, w);
    auto g = Gather::of(grid_in.sizes(), taps, h, w);
    if (nhwc(grid_in) && by_rows(g)) {
        auto out = at::empty({g.n, g.k, 2 * h, 2 * w}, grid_in.options().memory_format(at::MemoryFormat::ChannelsLast));
        AT_DISPATCH_FLOATING_TYPES(grid_in.scalar_type(), "parity_gather_nhwc", [&] {
            gather_nhwc(grid_in.const_data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), g);
        });
        return out;
    }
    auto grid = grid_in.contiguous();
    auto out = at::empty({g.n, g.k, 2 * h, 2 * w}, grid.options());
    AT_DISPATCH_FLOATING_TYPES(grid.scalar_type(), "parity_gather", [&] {
        const auto *in = grid.const_data_ptr<scalar_t>();
        auto *y = out.data_ptr<scalar_t>();
        for_each_plane(g, [&](int64_t n, int64_t c) {
            for (int64_t p = 0; p < 4; ++p) {
                auto *op = y + g.output_origin(n, c, p);
                for (int64_t t = 0; t < taps; ++t) {
                    const auto *src = in + g.grid_plane(n, p, t, c) + g.row(p, t) * g.gw + g.col(p, t);
                    for (int64_t i = 0; i < h; ++i)
                        for (int64_t j = 0; j < w; ++j) {
                            auto v = src[i * g.gw + j];
                            auto &dst = op[i * 4 * w + 2 * j];
                            dst = t == 0 ? v : dst + v;
                        }
                }
            }
        });
    });
    return out;
}

at::Tensor gather_adjoint(const at::Tensor &grad_in, int64_t taps, at::IntArrayRef grid_sizes,
                          at::MemoryFormat format) {
    TORCH_CHECK(grad_in.dim() == 4 && grad_in.size(2) % 2 == 0 && grad_in.size(3) % 2 == 0,
                "parity gather adjoint: gradient ", grad_in.sizes(), ", expected [N, K, 2h, 2w]");
    if (!kernel_applies(grad_in)) return gather_adjoint_generic(grad_in, taps, grid_sizes).contiguous(format);
    auto h = grad_in.size(2) / 2, w = grad_in.size(3) / 2;
    auto g = Gather::of(grid_sizes, taps, h, w);
    TORCH_CHECK(grad_in.size(0) == g.n && grad_in.size(1) == g.k, "parity gather adjoint: gradient ", grad_in.sizes(),
                " does not match grid ", grid_sizes);
    if (format == at::MemoryFormat::ChannelsLast && by_rows(g)) {
        auto grad = grad_in.contiguous(at::MemoryFormat::ChannelsLast);
        auto out = at::empty(grid_sizes, grad.options().memory_format(at::MemoryFormat::ChannelsLast));
        AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "parity_gather_adjoint_nhwc", [&] {
            gather_adjoint_nhwc(grad.const_data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), g);
        });
        return out;
    }
    auto grad = grad_in.contiguous();
    auto out = at::empty(grid_sizes, grad.options());
    AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "parity_gather_adjoint", [&] {
        const auto *y = grad.const_data_ptr<scalar_t>();
        auto *x = out.data_ptr<scalar_t>();
        for_each_plane(g, [&](int64_t n, int64_t c) {
            for (int64_t p = 0; p < 4; ++p) {
                const auto *op = y + g.output_origin(n, c, p);
                for (int64_t t = 0; t < taps; ++t) {
                    // A plane is small enough to stay in cache: zeroed whole, then its window written.
                    auto *dst = x + g.grid_plane(n, p, t, c);
                    std::fill(dst, dst + g.gh * g.gw, scalar_t(0));
                    auto *window = dst + g.row(p, t) * g.gw + g.col(p, t);
                    for (int64_t i = 0; i < h; ++i)
                        for (int64_t j = 0; j < w; ++j) window[i * g.gw + j] = op[i * 4 * w + 2 * j];
                }
            }
        });
    });
    // Laid out again where the grid is channels-last but its rows too short for the row kernel.
    return out.contiguous(format);
}

}  // namespace upsample
