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

// The one-dimensional maps of F(4x4, 3x3) and their transposes (the adjoints), on values V (a
// vector or one T): B^T (6 -> 6), B, A^T (6 -> 4), A (4 -> 6). A^T [(G g) ⊙ (B^T d)] is the
// correlation of d [6] with g [3]: four outputs. The points 0, 1, -1, 2, -1/2 and infinity:
// float32 errors within ~5e-6 of the largest output, where the symmetric 0, ±1, ±2 (fewer
// operations) reach ~8e-6. G is in csrc/winograd.cpp.
template <typename T, typename V>
void bt(const V (&d)[6], V (&o)[6]) {
    o[0] = d[0] + T(1.5) * (d[1] - d[3]) - T(2) * d[2] + d[4];
    o[1] = d[4] - d[1] - T(2.5) * d[2] - T(0.5) * d[3];
    o[2] = d[4] + d[1] + T(0.5) * d[2] - T(2.5) * d[3];
    o[3] = d[4] - d[2] + T(0.5) * (d[3] - d[1]);
    o[4] = d[4] - d[2] + T(2) * (d[1] - d[3]);
    o[5] = d[5] + d[1] + T(1.5) * (d[2] - d[4]) - T(2) * d[3];
}

template <typename T, typename V>
void b(const V (&e)[6], V (&o)[6]) {
    o[0] = e[0];
    o[1] = T(1.5) * e[0] - e[1] + e[2] - T(0.5) * e[3] + T(2) * e[4] + e[5];
    o[2] = T(-2) * e[0] - T(2.5) * e[1] + T(0.5) * e[2] - e[3] - e[4] + T(1.5) * e[5];
    o[3] = T(-1.5) * e[0] - T(0.5) * e[1] - T(2.5) * e[2] + T(0.5) * e[3] - T(2) * (e[4] + e[5]);
    o[4] = e[0] + e[1] + e[2] + e[3] + e[4] - T(1.5) * e[5];
    o[5] = e[5];
}

template <typename T, typename V>
void at(const V (&m)[6], V (&o)[4]) {
    V p = m[1] + m[2], q = m[1] - m[2];
    o[0] = m[0] + p + m[3] + m[4], o[1] = q + T(2) * m[3] - T(0.5) * m[4];
    o[2] = p + T(4) * m[3] + T(0.25) * m[4], o[3] = q + T(8) * m[3] - T(0.125) * m[4] + m[5];
}

template <typename T, typename V>
void a(const V (&g)[4], V (&o)[6]) {
    V p = g[0] + g[2], q = g[1] + g[3];
    o[0] = g[0], o[1] = p + q, o[2] = p - q, o[3] = g[0] + T(2) * g[1] + T(4) * g[2] + T(8) * g[3];
    o[4] = g[0] - T(0.5) * g[1] + T(0.25) * g[2] - T(0.125) * g[3], o[5] = g[3];
}

// The same for F(4x4, 2x2) (B^T 5 -> 5, B, A^T 5 -> 4, A 4 -> 5): the correlation of d [5] with
// g [2]. The points 0, 1, -1, 1/2 and infinity: float32 errors within ~5e-6 of the largest
// output (0, ±1 and 2 or -2: ~6e-6).
template <typename T, typename V>
void bt(const V (&d)[5], V (&o)[5]) {
    o[0] = T(0.5) * (d[0] - d[2]) - d[1] + d[3];
    o[1] = T(0.5) * (d[2] - d[1]) + d[3];
    o[2] = T(0.5) * d[1] - T(1.5) * d[2] + d[3];
    o[3] = d[3] - d[1];
    o[4] = T(0.5) * (d[1] - d[3]) - d[2] + d[4];
}

template <typename T, typename V>
void b(const V (&e)[5], V (&o)[5]) {
    o[0] = T(0.5) * e[0];
    o[1] = T(0.5) * (e[2] - e[1] + e[4]) - e[0] - e[3];
    o[2] = T(0.5) * (e[1] - e[0]) - T(1.5) * e[2] - e[4];
    o[3] = e[0] + e[1] + e[2] + e[3] - T(0.5) * e[4];
    o[4] = e[4];
}

template <typename T, typename V>
void at(const V (&m)[5], V (&o)[4]) {
    V p = m[1] + m[2], q = m[1] - m[2];
    o[0] = m[0] + p + m[3], o[1] = q + T(0.5) * m[3], o[2] = p + T(0.25) * m[3];
    o[3] = q + T(0.125) * m[3] + m[4];
}

template <typename T, typename V>
void a(const V (&g)[4], V (&o)[5]) {
    V p = g[0] + g[2], q = g[1] + g[3];
    o[0] = g[0], o[1] = p + q, o[2] = p - q;
    o[3] = g[0] + T(0.5) * g[1] + T(0.25) * g[2] + T(0.125) * g[3], o[4] = g[3];
}

// One line of a transform: out[j] (+)= map(in[.])[j] for each of c channels, a vector at a time
// (the rest one by one).
template <typename T, int I, int O, bool Add, typename Map>
void line(const T *const (&in)[I], T *const (&out)[O], int64_t c, Map map) {
    int64_t k = 0;
    for (; k + kLanes<T> <= c; k += kLanes<T>) {
        Vec<T> x[I], y[O];
        for (int i = 0; i < I; ++i) x[i] = load(in[i] + k);
        map(x, y);
        for (int o = 0; o < O; ++o) store(out[o] + k, Add ? load(out[o] + k) + y[o] : y[o]);
    }
    for (; k < c; ++k) {
        T x[I], y[O];
        for (int i = 0; i < I; ++i) x[i] = in[i][k];
        map(x, y);
        for (int o = 0; o < O; ++o) out[o][k] = Add ? out[o][k] + y[o] : y[o];
    }
}

// A separable 2-D transform of one tile, M(x) = F x F^T for the 1-D map F (I -> O values): the
// map over the columns of the I x I tile `x` into the O x I scratch, then over the scratch's
// rows into the O x O `y` (`Add`: added to it). x[r][s] = x[r * I + s], likewise y and scratch
// (c values each, scratch contiguous).
template <typename T, int I, int O, bool Add, typename Map>
void separable(const T *const *x, T *const *y, int64_t c, T *scratch, Map map) {
    for (int s = 0; s < I; ++s) {
        const T *in[I];
        T *out[O];
        for (int r = 0; r < I; ++r) in[r] = x[r * I + s];
        for (int r = 0; r < O; ++r) out[r] = scratch + (r * I + s) * c;
        line<T, I, O, false>(in, out, c, map);
    }
    for (int r = 0; r < O; ++r) {
        const T *in[I];
        T *out[O];
        for (int s = 0; s < I; ++s) in[s] = scratch + (r * I + s) * c;
        for (int s = 0; s < O; ++s) out[s] = y[r * O + s];
        line<T, I, O, Add>(in, out, c, map);
    }
}

// The N points of a transformed tile, `plane` values apart (a plain array, not std::array: see
// the top of the file).
template <int N, typename P>
struct Points {
    P at[N];
};

template <int N, typename P>
Points<N, P> points(P base, int64_t plane) {
    Points<N, P> v;
    for (int i = 0; i < N; ++i) v.at[i] = base + i * plane;
    return v;
}

// The patch side of each form's tiles.
template <Form F>
constexpr int kPatch = F == Form::F4x4_3x3 ? 6 : 5;

// Each direction is one separable map between the tile's patch (pointers `p` or `q`) and its
// transformed points (`plane` values apart from `out` or `in`).
template <typename T, Form F>
void input_form(const T *const *p, T *out, int64_t plane, int64_t c, T *scratch) {
    constexpr int n = kPatch<F>;
    separable<T, n, n, false>(p, points<n * n>(out, plane).at, c, scratch, [](const auto &x, auto &y) { bt<T>(x, y); });
}

template <typename T, Form F>
void input_adjoint_form(const T *in, int64_t plane, T *const *p, int64_t c, T *scratch) {
    constexpr int n = kPatch<F>;
    separable<T, n, n, true>(points<n * n>(in, plane).at, p, c, scratch, [](const auto &x, auto &y) { b<T>(x, y); });
}

template <typename T, Form F>
void output_form(const T *in, int64_t plane, T *const *q, int64_t c, T *scratch) {
    constexpr int n = kPatch<F>;
    separable<T, n, 4, false>(points<n * n>(in, plane).at, q, c, scratch, [](const auto &x, auto &y) { at<T>(x, y); });
}

template <typename T, Form F>
void output_adjoint_form(const T *const *q, T *out, int64_t plane, int64_t c, T *scratch) {
    constexpr int n = kPatch<F>;
    separable<T, 4, n, false>(q, points<n * n>(out, plane).at, c, scratch, [](const auto &x, auto &y) { a<T>(x, y); });
}

template <typename T>
void winograd_input(Form f, const T *const *p, T *out, int64_t plane, int64_t c, T *scratch) {
    f == Form::F4x4_3x3 ? input_form<T, Form::F4x4_3x3>(p, out, plane, c, scratch)
                        : input_form<T, Form::F4x4_2x2>(p, out, plane, c, scratch);
}

template <typename T>
void winograd_input_adjoint(Form f, const T *in, int64_t plane, T *const *p, int64_t c, T *scratch) {
    f == Form::F4x4_3x3 ? input_adjoint_form<T, Form::F4x4_3x3>(in, plane, p, c, scratch)
                        : input_adjoint_form<T, Form::F4x4_2x2>(in, plane, p, c, scratch);
}

template <typename T>
void winograd_output(Form f, const T *in, int64_t plane, T *const *q, int64_t c, T *scratch) {
    f == Form::F4x4_3x3 ? output_form<T, Form::F4x4_3x3>(in, plane, q, c, scratch)
                        : output_form<T, Form::F4x4_2x2>(in, plane, q, c, scratch);
}

template <typename T>
void winograd_output_adjoint(Form f, const T *const *q, T *out, int64_t plane, int64_t c, T *scratch) {
    f == Form::F4x4_3x3 ? output_adjoint_form<T, Form::F4x4_3x3>(q, out, plane, c, scratch)
                        : output_adjoint_form<T, Form::F4x4_2x2>(q, out, plane, c, scratch);
}

}  // namespace

// Constant-initialised (function addresses): no initialiser of this build runs at load time.
extern constexpr Table<float> floats{
    kLevel,          conv_max_pool<float>,         conv_at_index<float>,   grads<float>, pool_image<float>,
    winograd_input<float>, winograd_input_adjoint<float>, winograd_output<float>, winograd_output_adjoint<float>};
extern constexpr Table<double> doubles{
    kLevel,           conv_max_pool<double>,         conv_at_index<double>,   grads<double>, pool_image<double>,
    winograd_input<double>, winograd_input_adjoint<double>, winograd_output<double>, winograd_output_adjoint<double>};

}  // namespace GTN_ISA
}  // namespace pointwise_kernels
