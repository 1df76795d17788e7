// Kernels for the 3x3 max-pool (stride 2, padding 1) that follows a learner's convolution, on
// channels-last tensors with an int32 arg-max (as csrc/custom.cpp keeps it), where libtorch's
// take the arg-max as int64 (a conversion per call) and its backward zero-fills the whole
// unpooled tensor, then scatters into it from memory.
//
// Plain ATen functions with no autograd of their own, called where no graph is being recorded.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>

namespace maxpool {

// One image's share of `unpool`: `grad` [pooled, c] added at its arg-max `arg` [pooled, c] into
// `image` [pixels, c], which it zeroes first (channels-last). Callers keep `image` in cache.
template <typename T>
inline void unpool_image(T *image, int64_t pixels, const T *grad, const int32_t *arg, int64_t pooled, int64_t c) {
    std::fill(image, image + pixels * c, T(0));
    for (int64_t e = 0; e < pooled * c; e += c)
        for (int64_t k = 0; k < c; ++k) image[arg[e + k] * c + k] += grad[e + k];
}

// Whether the kernels take these tensors: on the CPU, float or double, `t` (the convolution's
// output or the pooled gradient) and `index` (int32) both channels-last.
bool applies(const at::Tensor &t, const at::Tensor &index);

// One image's share of `at_index`: y [pooled, c] = `image` [pixels, c] at the arg-max `arg`
// [pooled, c] (channels-last).
template <typename T>
inline void at_index_image(T *y, const T *image, const int32_t *arg, int64_t pooled, int64_t c) {
    for (int64_t e = 0; e < pooled * c; e += c)
        for (int64_t k = 0; k < c; ++k) y[e + k] = image[arg[e + k] * c + k];
}

// The pool's backward: `grad` [N, C, PH, PW] summed into [N, C, H, W] (`conv_sizes`) at the
// arg-max `index` (flat positions h * W + w within each plane, as libtorch's max-pool returns
// them), channels-last, in the order libtorch's kernel sums them. An image at a time in a cached
// scratch image, each written out once (float32: streaming stores). Base_fc's first layer, 128
// images: 25.7 MB written where libtorch's fill and scatter write it and read it back.
at::Tensor unpool(const at::Tensor &grad, const at::Tensor &index, at::IntArrayRef conv_sizes);

// The values of `conv` [N, C, H, W] at the arg-max `index` [N, C, PH, PW], channels-last.
at::Tensor at_index(const at::Tensor &conv, const at::Tensor &index);

}  // namespace maxpool
