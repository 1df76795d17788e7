// Mean-only batch norm followed by leaky ReLU, y = leaky_relu(x - mean(x) + bias) with the mean
// per channel over every other dimension (the learners' hidden layers, src/nn.rs), and the two
// linear maps its derivatives are. With m = leaky_relu'(y) (1 where y > 0, else the slope, read
// from the output since the slope is positive), the backward is gy -> (gx, gb) = (m·gy -
// mean(m·gy), sum(m·gy)), and that map's adjoint is (gx, gb) -> m·(gx - mean(gx) + gb): each the
// other's derivative, since m is constant almost everywhere.
//
// On the CPU (float or double, [N, C] or [N, C, H, W] in either layout) each is two passes over
// the data: the per-channel sums (in double), then the elementwise result; libtorch's sum, add and
// leaky ReLU and their backwards took three to five. Elsewhere the same formulas in ATen ops.
// Plain functions with no autograd of their own: csrc/custom.cpp's autograd functions call them.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace bn_leaky_relu {

// y = leaky_relu(x + bias - mean(x)), in x's layout.
at::Tensor forward(const at::Tensor &x, const at::Tensor &bias, double slope);

// The gradients with respect to x and bias, given the output y and its gradient gy.
std::tuple<at::Tensor, at::Tensor> grad(const at::Tensor &gy, const at::Tensor &y, double slope);

// The adjoint of `grad`: m·(gx - mean(gx) + gb).
at::Tensor grad_adjoint(const at::Tensor &gx, const at::Tensor &gb, const at::Tensor &y, double slope);

}  // namespace bn_leaky_relu
