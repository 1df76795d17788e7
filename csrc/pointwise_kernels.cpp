// Compiled once per instruction set level, with GTN_ISA naming it (build.rs); see
// pointwise_kernels.h. Everything but the two tables has internal linkage, and nothing from the
// standard library is called (its templates would be shared between the builds).
#include "pointwise_kernels.h"

#ifndef GTN_ISA
#error "GTN_ISA names the instruction set this file is compiled for (build.rs)"
#endif

namespace pointwise_kernels {
namespace GTN_ISA {
namespace {

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
constexpr int kLevel = 3;
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int kLevel = 2;
#else
constexpr int kLevel = 1;
#endif

// Vectors of output channels the convolution sums at a time per pixel: AVX-512's 32 registers
// hold 4 pixels x 4 vectors of sums (16 independent multiply-add chains, enough to hide their
// latency); narrower builds split each vector into several registers, and take one.
constexpr int64_t kBlock = kLevel == 3 ? 4 : 1;

// One 512-bit vector of T, which the compiler splits into narrower registers below AVX-512.
template <typename T>
struct Vector;
template <>
struct Vector<float> {
    typedef float type __attribute__((vector_size(64)));
};
template <>
struct Vector<double> {
    typedef double type __attribute__((vector_size(64)));
};
template <typename T>
using Vec = typename Vector<T>::type;
// Integers of T's width: a comparison's mask.
template <typename T>
using Mask = decltype(Vec<T>{} > Vec<T>{});
template <typename T>
constexpr int64_t kLanes = 64 / sizeof(T);

template <typename T>
Vec<T> load(const T *p) {
    Vec<T> v;
    __builtin_memcpy(&v, p, sizeof v);
    return v;
}

template <typename T>
void store(T *p, Vec<T> v) {
    __builtin_memcpy(p, &v, sizeof v);
}

int64_t lower(int64_t a, int64_t b) { return a < b ? a : b; }
int64_t upper(int64_t a, int64_t b) { return a > b ? a : b; }
int64_t pixels(const Dims &d) { return d.h * d.w; }
int64_t pooled_w(const Dims &d) { return (d.w + 1) / 2; }
int64_t pooled(const Dims &d) { return (d.h + 1) / 2 * pooled_w(d); }

// s (+)= the convolution of R pixels from i of image x [pixels, c] with B vectors of output
// channels from b of wt [c, k], summed in registers.
template <typename T, int64_t R, int64_t B>
void conv_tile(T *s, const T *x, const T *wt, const Dims &d, bool add, int64_t i, int64_t b) {
    Vec<T> acc[R][B] = {};
    if (add)
        for (int64_t r = 0; r < R; ++r)
            for (int64_t v = 0; v < B; ++v) acc[r][v] = load(s + (i + r) * d.k + b + v * kLanes<T>);
    for (int64_t j = 0; j < d.c; ++j) {
        Vec<T> w[B];
        for (int64_t v = 0; v < B; ++v) w[v] = load(wt + j * d.k + b + v * kLanes<T>);
        for (int64_t r = 0; r < R; ++r) {
            const T xr = x[(i + r) * d.c + j];
            for (int64_t v = 0; v < B; ++v) acc[r][v] += xr * w[v];
        }
    }
    for (int64_t r = 0; r < R; ++r)
        for (int64_t v = 0; v < B; ++v) store(s + (i + r) * d.k + b + v * kLanes<T>, acc[r][v]);
}

// The same for R pixels from i and every output channel.
template <typename T, int64_t R>
void conv_rows(T *s, const T *x, const T *wt, const Dims &d, bool add, int64_t i) {
    int64_t b = 0;
    for (; b + kBlock * kLanes<T> <= d.k; b += kBlock * kLanes<T>) conv_tile<T, R, kBlock>(s, x, wt, d, add, i, b);
    for (; b + kLanes<T> <= d.k; b += kLanes<T>) conv_tile<T, R, 1>(s, x, wt, d, add, i, b);
    for (; b < d.k; ++b)
        for (int64_t r = 0; r < R; ++r) {
            T acc = add ? s[(i + r) * d.k + b] : T(0);
            for (int64_t j = 0; j < d.c; ++j) acc += x[(i + r) * d.c + j] * wt[j * d.k + b];
            s[(i + r) * d.k + b] = acc;
        }
}

// s (+)= the convolution of image x [pixels, c] with wt [c, k]: [pixels, k], four pixels at a
// time.
template <typename T>
void conv(T *s, const T *x, const T *wt, const Dims &d, bool add) {
    int64_t i = 0;
    for (; i + 4 <= pixels(d); i += 4) conv_rows<T, 4>(s, x, wt, d, add, i);
    for (; i < pixels(d); ++i) conv_rows<T, 1>(s, x, wt, d, add, i);
}

// The 3x3 max-pool (stride 2, padding 1) of image s [pixels, k] into y and its arg-max into arg,
// [pooled, k] each, as libtorch's channels-last kernel finds them: windows scanned row by row
// from their first pixel inside the image, a value taken when greater or NaN. A vector of
// channels at a time, its maximum and arg-max in registers.
template <typename T>
void pool(const T *s, T *y, int32_t *arg, const Dims &d) {
    const T minus_infinity = -__builtin_inf();
    for (int64_t oy = 0; oy < (d.h + 1) / 2; ++oy)
        for (int64_t ox = 0; ox < pooled_w(d); ++ox) {
            const int64_t y0 = upper(2 * oy - 1, 0), y1 = lower(2 * oy + 2, d.h);
            const int64_t x0 = upper(2 * ox - 1, 0), x1 = lower(2 * ox + 2, d.w);
            const int64_t q = (oy * pooled_w(d) + ox) * d.k;
            const int32_t first = static_cast<int32_t>(y0 * d.w + x0);
            int64_t b = 0;
            for (; b + kLanes<T> <= d.k; b += kLanes<T>) {
                Vec<T> top = Vec<T>{} + minus_infinity;
                Mask<T> at = Mask<T>{} + first;
                for (int64_t iy = y0; iy < y1; ++iy)
                    for (int64_t ix = x0; ix < x1; ++ix) {
                        const int32_t pixel = static_cast<int32_t>(iy * d.w + ix);
                        const Vec<T> v = load(s + pixel * d.k + b);
                        const Mask<T> take = (v > top) | (v != v);
                        top = take ? v : top;
                        at = take ? Mask<T>{} + pixel : at;
                    }
                store(y + q + b, top);
                for (int64_t l = 0; l < kLanes<T>; ++l) arg[q + b + l] = static_cast<int32_t>(at[l]);
            }
            for (; b < d.k; ++b) {
                T top = minus_infinity;
                int32_t at = first;
                for (int64_t iy = y0; iy < y1; ++iy)
                    for (int64_t ix = x0; ix < x1; ++ix) {
                        const int32_t pixel = static_cast<int32_t>(iy * d.w + ix);
                        const T v = s[pixel * d.k + b];
                        if (v > top || v != v) top = v, at = pixel;
                    }
                y[q + b] = top, arg[q + b] = at;
            }
        }
}

// gi [P, c] = s · wp[:, :c] for P pixels' output gradients s [P, k] and the padded weight wp [k,
// kMaxChannels], each pixel's sum split over even and odd j (independent chains that hide the
// multiply-adds' latency), the weight's rows loaded once for the P pixels.
template <typename T, int64_t P>
void input_grad(T *gi, const T *s, const T *wp, int64_t c, int64_t k) {
    constexpr int64_t W = kMaxChannels, V = W / kLanes<T>;
    Vec<T> acc[P][2][V] = {};
    int64_t j = 0;
    for (; j + 2 <= k; j += 2)
        for (int64_t h = 0; h < 2; ++h)
            for (int64_t v = 0; v < V; ++v) {
                const Vec<T> w = load(wp + (j + h) * W + v * kLanes<T>);
                for (int64_t p = 0; p < P; ++p) acc[p][h][v] += s[p * k + j + h] * w;
            }
    for (; j < k; ++j)
        for (int64_t v = 0; v < V; ++v) {
            const Vec<T> w = load(wp + j * W + v * kLanes<T>);
            for (int64_t p = 0; p < P; ++p) acc[p][0][v] += s[p * k + j] * w;
        }
    for (int64_t p = 0; p < P; ++p) {
        T sum[W];
        for (int64_t v = 0; v < V; ++v) store(sum + v * kLanes<T>, acc[p][0][v] + acc[p][1][v]);
        for (int64_t l = 0; l < c; ++l) gi[p * c + l] = sum[l];
    }
}

// acc [R, k] += x[:, j..j + R]^T s for image x [pixels, c] and its output gradient s [pixels, k]:
// one vector of output channels at a time, the R rows' sums in registers over the pixels.
template <typename T, int64_t R>
void weight_grad_rows(T *acc, const T *x, const T *s, const Dims &d, int64_t j) {
    int64_t b = 0;
    for (; b + kLanes<T> <= d.k; b += kLanes<T>) {
        Vec<T> sum[R] = {};
        for (int64_t i = 0; i < pixels(d); ++i) {
            const Vec<T> v = load(s + i * d.k + b);
            for (int64_t r = 0; r < R; ++r) sum[r] += x[i * d.c + j + r] * v;
        }
        for (int64_t r = 0; r < R; ++r) store(acc + (j + r) * d.k + b, load(acc + (j + r) * d.k + b) + sum[r]);
    }
    for (; b < d.k; ++b)
        for (int64_t r = 0; r < R; ++r)
            for (int64_t i = 0; i < pixels(d); ++i) acc[(j + r) * d.k + b] += x[i * d.c + j + r] * s[i * d.k + b];
}

// acc [c, k] += x^T s: input channels eight at a time, the last 1 to 12 in one pass (base_fc's
// nine shifted copies: nine independent chains of multiply-adds per vector of output channels).
template <typename T>
void weight_grad(T *acc, const T *x, const T *s, const Dims &d) {
    int64_t j = 0;
    for (; d.c - j > 12; j += 8) weight_grad_rows<T, 8>(acc, x, s, d, j);
    switch (d.c - j) {
#define GTN_ROWS(n) \
    case n:         \
        return weight_grad_rows<T, n>(acc, x, s, d, j);
        GTN_ROWS(1) GTN_ROWS(2) GTN_ROWS(3) GTN_ROWS(4) GTN_ROWS(5) GTN_ROWS(6)
        GTN_ROWS(7) GTN_ROWS(8) GTN_ROWS(9) GTN_ROWS(10) GTN_ROWS(11) GTN_ROWS(12)
#undef GTN_ROWS
    }
}

template <typename T>
void conv_max_pool(const Dims &d, const T *x, const T *wt, T *s, T *y, int32_t *arg) {
    conv(s, x, wt, d, false);
    pool(s, y, arg, d);
}

template <typename T>
void conv_at_index(const Dims &d, const T *x, const T *wt, const T *other, const T *other_wt, const int32_t *arg, T *s,
                   T *y) {
    conv(s, x, wt, d, false);
    if (other) conv(s, other, other_wt, d, true);
    for (int64_t q = 0; q < pooled(d) * d.k; q += d.k)
        for (int64_t l = 0; l < d.k; ++l) y[q + l] = s[arg[q + l] * d.k + l];
}

template <typename T>
void grads(const Dims &d, const T *g, const int32_t *arg, const T *x, const T *wp, T *s, T *gi, T *acc) {
    for (int64_t e = 0; e < pixels(d) * d.k; ++e) s[e] = T(0);
    for (int64_t q = 0; q < pooled(d) * d.k; q += d.k)
        for (int64_t l = 0; l < d.k; ++l) s[arg[q + l] * d.k + l] += g[q + l];
    if (gi) {
        int64_t i = 0;
        for (; i + 4 <= pixels(d); i += 4) input_grad<T, 4>(gi + i * d.c, s + i * d.k, wp, d.c, d.k);
        for (; i < pixels(d); ++i) input_grad<T, 1>(gi + i * d.c, s + i * d.k, wp, d.c, d.k);
    }
    if (acc) weight_grad(acc, x, s, d);
}

template <typename T>
void pool_image(const Dims &d, const T *s, T *y, int32_t *arg) {
    pool(s, y, arg, d);
}

}  // namespace

// Constant-initialised (function addresses): no initialiser of this build runs at load time.
extern constexpr Table<float> floats{kLevel, conv_max_pool<float>, conv_at_index<float>, grads<float>,
                                     pool_image<float>};
extern constexpr Table<double> doubles{kLevel, conv_max_pool<double>, conv_at_index<double>, grads<double>,
                                       pool_image<double>};

}  // namespace GTN_ISA
}  // namespace pointwise_kernels
