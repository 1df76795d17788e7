#include "momentum.h"

#include "cpu_kernels.h"

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

// The backward over elements [lo, hi): the gradients of m' in all (grad_m - lr·grad_p, into gg) and
// of m (mu times that, into gmo, where `WantM`), and the sums of grad_p·m' and of gg·m added into
// lr_sum and mu_sum. The sums run in eight lanes of double: a single running sum kept the loop
// scalar (its additions cannot be reordered), at ~8 GB/s against ~13 for the passes around it.
template <bool HasGm, bool WantM, typename T>
void backward_range(int64_t lo, int64_t hi, const T *gp, const T *gm, const T *mp, const T *np, T *gg, T *gmo, T rate,
                    T keep, double &lr_sum, double &mu_sum) {
    constexpr int64_t kLanes = 8;
    double lr[kLanes] = {}, mu[kLanes] = {};
    auto element = [&](int64_t i, int64_t lane) {
        const T total = (HasGm ? gm[i] : T(0)) - rate * gp[i];
        gg[i] = total;
        if constexpr (WantM) gmo[i] = keep * total;
        lr[lane] += static_cast<double>(gp[i]) * np[i];
        mu[lane] += static_cast<double>(total) * mp[i];
    };
    int64_t i = lo;
    for (; i + kLanes <= hi; i += kLanes)
        for (int64_t lane = 0; lane < kLanes; ++lane) element(i + lane, lane);
    for (; i < hi; ++i) element(i, 0);
    for (int64_t lane = 0; lane < kLanes; ++lane) lr_sum += lr[lane], mu_sum += mu[lane];
}

}  // namespace

bool applies(const at::Tensor &p, const at::Tensor &m, const at::Tensor &g, const at::Tensor &lr,
             const at::Tensor &mu) {
    auto kind = p.scalar_type();
    return cpu_kernels::take(p) && (kind == at::kFloat || kind == at::kDouble) && same_dense(p, p) && same_dense(m, p) && same_dense(g, p) &&
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
            const int t = at::get_thread_num();
            if (gm && gmo)
                backward_range<true, true>(lo, hi, gp, gm, mp, np, gg, gmo, rate, keep, lr_sums[t], mu_sums[t]);
            else if (gm)
                backward_range<true, false>(lo, hi, gp, gm, mp, np, gg, gmo, rate, keep, lr_sums[t], mu_sums[t]);
            else if (gmo)
                backward_range<false, true>(lo, hi, gp, gm, mp, np, gg, gmo, rate, keep, lr_sums[t], mu_sums[t]);
            else
                backward_range<false, false>(lo, hi, gp, gm, mp, np, gg, gmo, rate, keep, lr_sums[t], mu_sums[t]);
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
