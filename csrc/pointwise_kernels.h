// The per-image kernels of csrc/pointwise_pool.h (and the per-tile transforms of
// csrc/winograd.cpp): plain C++ over raw pointers, explicitly vectorised (GCC's vector
// extensions). csrc/pointwise_kernels.cpp is compiled once per x86-64 instruction set level
// (build.rs: baseline, AVX2 and AVX-512; elsewhere baseline only), each into its own namespace,
// and `table` picks the best one the CPU runs, once. (GCC's
// `target_clones` does not do this: it lowers vector-extension code to the baseline's 128-bit
// registers, element by element where vectors are compared.)
//
// Each build defines only functions of its own namespace, and no inline function or template
// that another file also instantiates: the linker keeps one copy of such a function, which
// could be the AVX-512 one.
#pragma once

#include <cstdint>

namespace pointwise_kernels {

// One image: h x w pixels, c input and k output channels; pooled (3x3, stride 2, padding 1) into
// (h + 1) / 2 x (w + 1) / 2. Images are channels-last: [pixels, channels].
struct Dims {
    int64_t h, w, c, k;
};

// The Winograd forms whose tile transforms the table holds: 4x4 output tiles of a 3x3 or a 2x2
// convolution.
enum class Form { F4x4_3x3, F4x4_2x2 };

// Input channels the padded weight of `Table::grads` holds (and the most the first layer's kernels
// take).
constexpr int64_t kMaxChannels = 16;

template <typename T>
struct Table {
    // The instruction set level this build's code needs (1: baseline, 2: AVX2 and FMA, 3:
    // AVX-512), from its compiler's predefined macros: a `-march` in CXXFLAGS overrides the one
    // build.rs gives.
    int level;
    // y, arg [pooled, k] = the max-pool and arg-max (as libtorch's channels-last kernel finds
    // them) of the convolution of x [pixels, c] with wt [c, k] (the weight transposed), through
    // the scratch image s [pixels, k].
    void (*conv_max_pool)(const Dims &d, const T *x, const T *wt, T *s, T *y, int32_t *arg);
    // y [pooled, k] = (x ⊛ wt + other ⊛ other_wt)[arg] (`other` may be null), through s.
    void (*conv_at_index)(const Dims &d, const T *x, const T *wt, const T *other, const T *other_wt,
                          const int32_t *arg, T *s, T *y);
    // s = g [pooled, k] scattered at arg (the convolution's output gradient); then, where not
    // null, gi [pixels, c] = s · wp[:, :c] (wp: the weight [k, kMaxChannels], zero-padded) and
    // acc [c, k] += x^T s.
    void (*grads)(const Dims &d, const T *g, const int32_t *arg, const T *x, const T *wp, T *s, T *gi, T *acc);
    // y, arg [pooled, k] = the max-pool and arg-max of image s [pixels, k] (`d.c` unused): the
    // pool alone, for csrc/winograd.cpp's convolutions.
    void (*pool)(const Dims &d, const T *s, T *y, int32_t *arg);

    // The four transforms of csrc/winograd.cpp's Winograd forms, one tile of c channels at a
    // time, through `scratch` [36, c] (kept in L1 by the caller). Pixels are c contiguous values
    // each, the transformed tile's n x n points (n: 6 for F(4x4, 3x3), 5 for F(4x4, 2x2)) c
    // values each, `plane` values apart (point r * n + s at out + (r * n + s) * plane).
    // out = B^T d B of the n x n patch d whose pixel (r, s) is p[r * n + s].
    void (*winograd_input)(Form f, const T *const *p, T *out, int64_t plane, int64_t c, T *scratch);
    // Its adjoint: B v B^T of the transformed tile v at `in`, added into pixels p.
    void (*winograd_input_adjoint)(Form f, const T *in, int64_t plane, T *const *p, int64_t c, T *scratch);
    // The 4x4 output pixels q[r * 4 + s] = A^T m A of the transformed tile m at `in`.
    void (*winograd_output)(Form f, const T *in, int64_t plane, T *const *q, int64_t c, T *scratch);
    // Its adjoint: out = A g A^T of the 4x4 pixels g at q.
    void (*winograd_output_adjoint)(Form f, const T *const *q, T *out, int64_t plane, int64_t c, T *scratch);
};

// The kernels (T: float or double) of the best instruction set level this CPU has (or of the one
// forced).
template <typename T>
const Table<T> &table();
template <>
const Table<float> &table<float>();
template <>
const Table<double> &table<double>();

// The CPU's instruction set level as the builds count it: 1 baseline, 2 AVX2 (x86-64-v3), 3 AVX-512 (v4).
int cpu_level();

// How many of the builds this CPU runs (1 to 3: the baseline, AVX2, AVX-512, as far as each was
// built for its level), and, for the tests that hold each to libtorch, one of them (by its index
// among those) to use instead of the best (-1: the best again; false if there is no such build).
// Process-wide.
int levels();
bool force_level(int level);

}  // namespace pointwise_kernels
