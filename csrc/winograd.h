// 3x3 convolutions (stride 1, zero padding 1) and their two gradients by Winograd's F(4x4, 3x3)
// on the CPU (and, below, the generator's 2x2 wide layer by F(4x4, 2x2)): each 4x4 output tile is
// A^T [(G g G^T) ⊙ (B^T d B)] A for the 6x6 input patch d around it, so over a batch the
// convolution is 36 matrix products (one per point of the 6x6 transformed tile, over channels)
// with 1/4 of direct convolution's multiply-adds per tile (base_fc's 14 x 14 images take 4 x 4
// tiles, the last row and column overhanging: 576 products per image and channel pair, where
// F(2x2, 3x3) took 784). The two gradients are the exact adjoints of the same linear maps: in
// exact arithmetic all three equal libtorch's convolution and its backward; in float32 they
// differ by rounding, within ~5e-6 of the largest value (libtorch's own, ~4e-7).
//
// Plain ATen functions with no autograd of their own: callers run them where no graph is being
// recorded (the forward and backward of csrc/custom.cpp's autograd functions).
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace winograd {

// Whether `input` [N, C, H, W] convolved with `weight` [K, C, 3, 3] can go this way: on the CPU,
// float or double, stride 1, padding 1, any H and W, and channels enough for the matrix
// products to pay for the transforms. Channels-last inputs are read without a copy.
bool applies(const at::Tensor &input, const at::Tensor &weight, int64_t stride, int64_t padding);

// The convolution [N, K, H, W], in the input's memory format.
at::Tensor conv(const at::Tensor &input, const at::Tensor &weight);

// `conv(input, weight) + conv(other, other_weight)`, summed before the output transform.
at::Tensor conv_sum(const at::Tensor &input, const at::Tensor &weight, const at::Tensor &other,
                    const at::Tensor &other_weight);

// The convolution followed by the 3x3 max-pool (stride 2, padding 1): the pooled [N, K, PH, PW]
// and the arg-max (int32, flat positions h·W + w within each plane, as libtorch's channels-last
// max-pool finds them), channels-last, each image pooled from a scratch image that stays in
// cache where the convolution's output would go through memory (12.8 MB per base_fc batch of
// 128, second layer).
std::tuple<at::Tensor, at::Tensor> conv_max_pool(const at::Tensor &input, const at::Tensor &weight);

// `conv_sum` read at the pool's arg-max `index` (the max-pool's gather), in the same way.
at::Tensor conv_sum_at(const at::Tensor &input, const at::Tensor &weight, const at::Tensor &other,
                       const at::Tensor &other_weight, const at::Tensor &index);

// The gradients with respect to `input` [N, C, H, W] and `weight` [K, C, 3, 3] of their
// convolution, given its output gradient `grad_out` [N, K, H, W]; the input's comes channels-last,
// the ones not wanted undefined. `input` is read only for the weight's gradient and `weight` only
// for the input's (as in libtorch's convolution_backward).
std::tuple<at::Tensor, at::Tensor> grads(const at::Tensor &grad_out, const at::Tensor &input,
                                         const at::Tensor &weight, bool want_input, bool want_weight);

// `grads` of the convolution followed by the 3x3 max-pool (stride 2, padding 1) whose int32
// arg-max is `index` (csrc/maxpool.h), given the pooled gradient `grad`: the output gradient is
// scattered an image at a time into a scratch image that stays in cache, where `grads` reads it
// from memory (12.8 MB per base_fc batch of 128 for the second layer, written and read again).
std::tuple<at::Tensor, at::Tensor> pooled_grads(const at::Tensor &grad, const at::Tensor &index,
                                                const at::Tensor &input, const at::Tensor &weight, bool want_input,
                                                bool want_weight);

// F(4x4, 2x2) for the generator's wide layer (csrc/custom.cpp's PadConvGather): the 2x2
// convolution (stride 1) of `input` [N, C, H, W] replicate-padded by one pixel, each 4x4 tile of
// its [N, K, H + 1, W + 1] output grid from the 5x5 patch under it with 25 products where direct
// convolution takes 64, so 25 matrix products over channels per batch (F(2x2, 2x2), before it,
// took 9 per 2x2 tile: 36 per 4x4). The padding is read from the unpadded input (no padded copy).
// Applies on the CPU, float or double, H + 1 and W + 1 multiples of 4 (whole tiles: MNIST's 7 x 7),
// 16 channels or more on either side, K a multiple of 4.
bool pad_conv_applies(const at::Tensor &input, const at::Tensor &weight);

// The convolution of the padded input, channels-last: the grid, or (`gathered`) the upsampling
// block's parity gather of it with one tap (csrc/upsample.h), [N, K / 4, 2H, 2W], written from
// the transform without the grid.
at::Tensor pad_conv(const at::Tensor &input, const at::Tensor &weight, bool gathered);

// Its gradients with respect to `input` (the unpadded one, channels-last) and `weight`, given the
// output's gradient `grad_out` (of the grid, or of its gather, read from the transform's adjoint);
// the ones not wanted undefined.
std::tuple<at::Tensor, at::Tensor> pad_conv_grads(const at::Tensor &grad_out, const at::Tensor &input,
                                                  const at::Tensor &weight, bool gathered, bool want_input,
                                                  bool want_weight);

}  // namespace winograd
