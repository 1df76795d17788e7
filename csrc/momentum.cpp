#include "momentum.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <vector>

namespace momentum {
namespace {

// Elements per task: below this a parameter is updated on one thread.
constexpr int64_t kGrain = 1 << 15;

// Per thread: the autograd engine runs a CPU graph's backward on the thread that asked for it.
thread_local int64_t backward_calls = 0;

bool same_dense(const at::Tensor &a, const at::Tensor &b) {
    return a.defined() && a.device().is_cpu() && a.scalar_type() == b.scalar_type() && a.sizes() == b.sizes() &&
           a.strides() == b.strides() && a.is_non_overlapping_and_dense();
}

}  // namespace

bool applies(const at::Tensor &p, const at::Tensor &m, const at::Tensor &g, const at::Tensor &lr,
             const at::Tensor &mu) {
    auto kind = p.scalar_type();
    return (kind == at::kFloat || kind == at::kDouble) && same_dense(p, p) && same_dense(m, p) && same_dense(g, p) &&
           lr.numel() == 1 && mu.numel() == 1 && lr.scalar_type() == kind && mu.scalar_type() == kind &&
           lr.device().is_cpu() && mu.device().is_cpu();
}

bool backward_applies(const at::Tensor &grad_p, const at::Tensor &grad_m, const at::Tensor &m,
                      const at::Tensor &m_new, const at::Tensor &lr, const at::Tensor &mu) {
    return applies(m_new, m, grad_p, lr, mu) && (!grad_m.defined() || same_dense(grad_m, m_new));
}

std::tuple<at::Tensor, at::Tensor> step(const at::Tensor &p, const at::Tensor &m, const at::Tensor &g,
                                        const at::Tensor &lr, const at::Tensor &mu) {
    TORCH_CHECK(applies(p, m, g, lr, mu), "momentum step: parameter ", p.sizes(), ", momentum ", m.sizes(),
                " and gradient ", g.sizes(), " do not fit");
    auto p_new = at::empty_like(p), m_new = at::empty_like(p);
    AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "momentum_step", [&] {
        const scalar_t rate = lr.item<scalar_t>(), keep = mu.item<scalar_t>();
        const scalar_t *pp = p.const_data_ptr<scalar_t>(), *mp = m.const_data_ptr<scalar_t>(),
                       *gp = g.const_data_ptr<scalar_t>();
        scalar_t *po = p_new.data_ptr<scalar_t>(), *mo = m_new.data_ptr<scalar_t>();
        at::parallel_for(0, p.numel(), kGrain, [&](int64_t lo, int64_t hi) {
            for (int64_t i = lo; i < hi; ++i) {
                scalar_t v = gp[i] + keep * mp[i];
                mo[i] = v;
                po[i] = pp[i] - rate * v;
            }
        });
    });
    return {p_new, m_new};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> step_backward(const at::Tensor &grad_p,
                                                                         const at::Tensor &grad_m, const at::Tensor &m,
                                                                         const at::Tensor &m_new, const at::Tensor &lr,
                                                                         const at::Tensor &mu, bool want_m) {
    TORCH_CHECK(backward_applies(grad_p, grad_m, m, m_new, lr, mu),
                "momentum step backward: gradient ", grad_p.sizes(), " and momentum ", m.sizes(), " do not fit");
    ++backward_calls;
    auto grad_g = at::empty_like(m_new);
    auto grad_mom = want_m ? at::empty_like(m_new) : at::Tensor();
    // Per-thread partial sums of grad_p·m' and grad_g·m, added in thread order.
    std::vector<double> lr_sums(at::get_num_threads(), 0.0), mu_sums(at::get_num_threads(), 0.0);
    AT_DISPATCH_FLOATING_TYPES(m.scalar_type(), "momentum_step_backward", [&] {
        const scalar_t rate = lr.item<scalar_t>(), keep = mu.item<scalar_t>();
        const scalar_t *gp = grad_p.const_data_ptr<scalar_t>(),
                       *gm = grad_m.defined() ? grad_m.const_data_ptr<scalar_t>() : nullptr,
                       *mp = m.const_data_ptr<scalar_t>(), *np = m_new.const_data_ptr<scalar_t>();
        scalar_t *gg = grad_g.data_ptr<scalar_t>(), *gmo = want_m ? grad_mom.data_ptr<scalar_t>() : nullptr;
        at::parallel_for(0, m.numel(), kGrain, [&](int64_t lo, int64_t hi) {
            double lr_sum = 0, mu_sum = 0;
            for (int64_t i = lo; i < hi; ++i) {
                scalar_t total = (gm ? gm[i] : scalar_t(0)) - rate * gp[i];
                gg[i] = total;
                if (gmo) gmo[i] = keep * total;
                lr_sum += static_cast<double>(gp[i]) * np[i];
                mu_sum += static_cast<double>(total) * mp[i];
            }
            lr_sums[at::get_thread_num()] += lr_sum;
            mu_sums[at::get_thread_num()] += mu_sum;
        });
    });
    double lr_total = 0, mu_total = 0;
    for (size_t t = 0; t < lr_sums.size(); ++t) lr_total += lr_sums[t], mu_total += mu_sums[t];
    auto grad_lr = at::full(lr.sizes(), -lr_total, lr.options());
    auto grad_mu = at::full(mu.sizes(), mu_total, mu.options());
    return {grad_g, grad_mom, grad_lr, grad_mu};
}

int64_t backwards() { return backward_calls; }

}  // namespace momentum
