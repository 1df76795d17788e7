// Autograd functions that libtorch's own ops cannot express and tch has no way to define: each
// keeps less for its backward than the op it replaces, with the same values and derivatives to
// any order the meta-gradient needs (their backwards are built of differentiable ATen ops).
// Called from src/custom.rs; a `torch::Tensor *` (= `at::Tensor *`) is what tch's `C_tensor` points to.
#include <torch/csrc/autograd/custom_function.h>

#include <cstring>
#include <exception>
#include <string>

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

namespace {

// `x.gather(dim, index)`, keeping only the index and x's shape for the backward: libtorch's
// gather keeps all of x, although its backward (a scatter-add into zeros) reads only the shape.
struct GatherKeepingIndex : public torch::autograd::Function<GatherKeepingIndex> {
    static at::Tensor forward(AutogradContext *ctx, const at::Tensor &x, int64_t dim, const at::Tensor &index) {
        ctx->saved_data["dim"] = dim;
        ctx->saved_data["sizes"] = x.sizes().vec();
        ctx->save_for_backward({index});
        return x.gather(dim, index);
    }

    static variable_list backward(AutogradContext *ctx, variable_list grads) {
        auto dim = ctx->saved_data["dim"].toInt();
        auto sizes = ctx->saved_data["sizes"].toIntVector();
        auto index = ctx->get_saved_variables()[0];
        // In place, as libtorch's gather backward does: the out-of-place form copies the zeros.
        auto dx = at::zeros(sizes, grads[0].options()).scatter_add_(dim, index, grads[0]);
        return {dx, at::Tensor(), at::Tensor()};
    }
};

// Leaky ReLU keeping its output (which the next layer keeps anyway) instead of its input. Its
// second derivative is zero, so the backward reads the output as a constant: no zero gradient
// flows back into it, as one does through libtorch's `leaky_relu_backward(x, x)` form.
struct LeakyReluKeepingOutput : public torch::autograd::Function<LeakyReluKeepingOutput> {
    static at::Tensor forward(AutogradContext *ctx, const at::Tensor &x, double slope) {
        auto y = at::leaky_relu(x, slope);
        ctx->saved_data["slope"] = slope;
        ctx->save_for_backward({y});
        return y;
    }

    static variable_list backward(AutogradContext *ctx, variable_list grads) {
        auto y = ctx->get_saved_variables()[0].detach();
        auto slope = ctx->saved_data["slope"].toDouble();
        return {at::leaky_relu_backward(grads[0], y, slope, /*self_is_result=*/true), at::Tensor()};
    }
};

thread_local std::string last_error;

template <typename F>
at::Tensor *guarded(F f) {
    try {
        return new at::Tensor(f());
    } catch (const std::exception &e) {
        last_error = e.what();
        return nullptr;
    }
}

}  // namespace

extern "C" {

const char *gtn_last_error() { return last_error.c_str(); }

at::Tensor *gtn_gather_keeping_index(const at::Tensor *x, int64_t dim, const at::Tensor *index) {
    return guarded([&] { return GatherKeepingIndex::apply(*x, dim, *index); });
}

at::Tensor *gtn_leaky_relu(const at::Tensor *x, double slope) {
    return guarded([&] { return LeakyReluKeepingOutput::apply(*x, slope); });
}
}
