// A 1x1 convolution of few input channels fused with the 3x3 max-pool (stride 2, padding 1)
// after it, and the gradients of the pair, on the CPU; also a 3x3 convolution (padding 1) of a
// one-channel image, taken as the 1x1 convolution of the image's nine shifted copies, built an
// image at a time: base_fc's first layer, whose output has 64 channels. Per image, the
// convolution [H·W, K] is computed into a scratch image that stays in cache
// and reduced there (pooled, or read at the arg-max), or the pooled gradient is scattered into
// the scratch image and multiplied out, so neither the convolution's output nor its gradient
// (25.7 MB each per base_fc batch of 128 images) goes through memory, where libtorch's kernels
// wrote and read such a tensor some six times per inner step.
//
// Plain ATen functions with no autograd of their own, called where no graph is being recorded.
// Tensors may come in any layout; results are channels-last.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace pointwise_pool {

// Whether `input` [N, C, H, W] convolved with `weight` [K, C, 1, 1] (stride 1, no padding) or
// `input` [N, 1, H, W] with `weight` [K, 1, 3, 3] (stride 1, padding 1) can go this way: on the
// CPU, float or double, with few enough input channels that the scratch image's products beat
// libtorch's GEMMs.
bool applies(const at::Tensor &input, const at::Tensor &weight, int64_t stride, int64_t padding);

// Below, a [K, 1, 3, 3] weight means the 3x3 convolution (padding 1) of a one-channel image, a
// [K, C, 1, 1] one the 1x1 convolution.

// The max-pool of the convolution, [N, K, PH, PW], and its arg-max (int32 flat positions h·W + w
// within each plane, as libtorch's channels-last max-pool finds them, through ties and NaNs).
std::tuple<at::Tensor, at::Tensor> conv_max_pool(const at::Tensor &input, const at::Tensor &weight);

// `conv(input, weight) + conv(other, other_weight)` read at the arg-max `index` [N, K, PH, PW]
// (the max-pool's gather); `other` may be undefined.
at::Tensor conv_at_index(const at::Tensor &input, const at::Tensor &weight, const at::Tensor &other,
                         const at::Tensor &other_weight, const at::Tensor &index);

// The gradients with respect to `input` and `weight` of the convolution's max-pool at `index`,
// given the pooled gradient `grad`; the ones not wanted undefined. `input` is read only for the
// weight's gradient and `weight` only for the input's (as in libtorch's convolution_backward).
std::tuple<at::Tensor, at::Tensor> grads(const at::Tensor &grad, const at::Tensor &index, const at::Tensor &input,
                                         const at::Tensor &weight, bool want_input, bool want_weight);

}  // namespace pointwise_pool
