// The inner optimiser's update, SGD with momentum `m' = g + mu·m, p' = p - lr·m'`, and its
// backward, each one pass over the parameter on the CPU. As libtorch ops (two `addcmul`s), the
// meta-backward took two products and a reduction per `addcmul`, and summed the momentum's two
// gradients in another pass: ~7 passes over every parameter per inner step, 6.4 MB each for
// base_fc's linear layer. `lr` and `mu` are one-element tensors.
//
// Plain ATen functions with no autograd of their own, called where no graph is being recorded.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace momentum {

// Whether the kernels below take these tensors: on the CPU, float or double, one size, dense
// (any layout, the same for all), one-element `lr` and `mu` of the same type.
bool applies(const at::Tensor &p, const at::Tensor &m, const at::Tensor &g, const at::Tensor &lr,
             const at::Tensor &mu);

// (p', m').
std::tuple<at::Tensor, at::Tensor> step(const at::Tensor &p, const at::Tensor &m, const at::Tensor &g,
                                        const at::Tensor &lr, const at::Tensor &mu);

// Whether `step_backward` takes these (as `applies`, with the gradients in m''s layout).
bool backward_applies(const at::Tensor &grad_p, const at::Tensor &grad_m, const at::Tensor &m,
                      const at::Tensor &m_new, const at::Tensor &lr, const at::Tensor &mu);

// Given the gradients `grad_p` (of p') and `grad_m` (of m', may be undefined), the saved `m` and
// `m_new` (m'), `lr` and `mu`: (the gradient of g, which is m''s total `grad_m - lr·grad_p`; of m,
// `mu` times that; of lr, `-sum(grad_p·m')`; of mu, `sum(grad_g·m)`), the sums in double. The
// gradient of p is `grad_p` itself. `want_m` false leaves m's undefined.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> step_backward(const at::Tensor &grad_p,
                                                                         const at::Tensor &grad_m, const at::Tensor &m,
                                                                         const at::Tensor &m_new, const at::Tensor &lr,
                                                                         const at::Tensor &mu, bool want_m);

// How many times `step_backward` has run on this thread: for the tests, to tell that the
// backward took these kernels rather than libtorch's ops.
int64_t backwards();

}  // namespace momentum
