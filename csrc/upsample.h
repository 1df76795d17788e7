// The resampling around the convolutions of an upsampling block (nearest upsample x2, reflection
// pad, 3x3 convolution, computed per output-pixel parity on the low-resolution grid: see
// src/nn.rs, UpsampleConv): the replicate padding of the input, and the parity gather that
// assembles the full-resolution output from the convolutions' per-parity channel groups. Both
// are linear maps; each comes with its adjoint, which csrc/custom.cpp's autograd functions use
// as the backward (and the map as the adjoint's backward), so they are exact to every order.
//
// Plain ATen functions with no autograd of their own, called where no graph is being recorded.
#pragma once

#include <ATen/ATen.h>

namespace upsample {

// Replicate padding by one pixel on each side of [N, C, H, W], and its adjoint: [N, C, H + 2,
// W + 2] -> `sizes`, the border summed into the edge pixels it copies.
at::Tensor pad(const at::Tensor &x);
at::Tensor pad_adjoint(const at::Tensor &grad, at::IntArrayRef sizes);

// The parity gather: `grid` [N, 4 * taps * K, GH, GW] holds, for output parity p = 2 * r + s
// and tap t = 2 * a + b (a = b = 0 when `taps` is 1; `taps` is 1 or 4), channel group
// `p * taps + t` of K channels; output pixel (2i + r, 2j + s) of channel k sums over the taps
// grid pixel (i + r + a, j + s + b) of channel (p * taps + t) * K + k. Result [N, K, 2h, 2w];
// the grid must reach past every window read (GH >= h + 1 + (taps == 4), likewise GW).
// On the CPU a kernel of our own: one pass over the output, where the views, stacks and copies
// that express it in ATen ops (the fallback elsewhere) take several. A channels-last grid gives a
// channels-last output.
at::Tensor gather(const at::Tensor &grid, int64_t taps, int64_t h, int64_t w);

// Its adjoint: the output gradient [N, K, 2h, 2w] to the grid's shape `grid_sizes`, in `format`
// (the grid's), zero where the gather reads nothing. No grid pixel is read twice, so nothing is
// summed: each plane (channels-last: each image) is zeroed, then its windows written.
at::Tensor gather_adjoint(const at::Tensor &grad, int64_t taps, at::IntArrayRef grid_sizes, at::MemoryFormat format);

// The ATen-op formulations of both, which every device runs (tests hold the kernels to them).
at::Tensor gather_generic(const at::Tensor &grid, int64_t taps, int64_t h, int64_t w);
at::Tensor gather_adjoint_generic(const at::Tensor &grad, int64_t taps, at::IntArrayRef grid_sizes);

}  // namespace upsample
