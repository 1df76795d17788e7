#include "maxpool.h"

#include "cpu_kernels.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

namespace maxpool {
namespace {

constexpr auto kNhwc = at::MemoryFormat::ChannelsLast;

bool nhwc(const at::Tensor &t) { return t.dim() == 4 && t.is_contiguous(kNhwc); }

// Copies `n` values to `dst` with streaming stores where it can (x86, float32, aligned): the
// destination, written once and read much later, then costs no read for ownership and does not
// evict the scratch.
template <typename T>
void stream(T *dst, const T *src, int64_t n) {
    int64_t done = 0;
#if defined(__SSE2__)
    if constexpr (std::is_same_v<T, float>) {
        if (reinterpret_cast<uintptr_t>(dst) % 16 == 0) {
            for (; done + 4 <= n; done += 4) _mm_stream_ps(dst + done, _mm_loadu_ps(src + done));
            _mm_sfence();
        }
    }
#endif
    std::copy(src + done, src + n, dst + done);
}

}  // namespace

bool applies(const at::Tensor &t, const at::Tensor &index) {
    auto kind = t.scalar_type();
    return cpu_kernels::take(t) && (kind == at::kFloat || kind == at::kDouble) && index.scalar_type() == at::kInt &&
           nhwc(t) && nhwc(index);
}

at::Tensor unpool(const at::Tensor &grad, const at::Tensor &index, at::IntArrayRef conv_sizes) {
    TORCH_CHECK(applies(grad, index) && grad.sizes() == index.sizes() && conv_sizes.size() == 4 &&
                    conv_sizes[0] == grad.size(0) && conv_sizes[1] == grad.size(1),
                "max-pool unpool: gradient ", grad.sizes(), " and index ", index.sizes(), " do not pool ", conv_sizes);
    const int64_t c = conv_sizes[1], plane = conv_sizes[2] * conv_sizes[3];
    const int64_t pooled = grad.size(2) * grad.size(3);
    auto out = at::empty(conv_sizes, grad.options().memory_format(kNhwc));
    AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "maxpool_unpool", [&] {
        const auto *g = grad.const_data_ptr<scalar_t>();
        const auto *ix = index.const_data_ptr<int32_t>();
        auto *y = out.data_ptr<scalar_t>();
        // An image at a time into a scratch image that stays in cache, streamed out once.
        at::parallel_for(0, conv_sizes[0], 1, [&](int64_t lo, int64_t hi) {
            std::vector<scalar_t> image(plane * c);
            for (int64_t b = lo; b < hi; ++b) {
                unpool_image(image.data(), plane, g + b * pooled * c, ix + b * pooled * c, pooled, c);
                stream(y + b * plane * c, image.data(), plane * c);
            }
        });
    });
    return out;
}

at::Tensor at_index(const at::Tensor &conv, const at::Tensor &index) {
    TORCH_CHECK(applies(conv, index) && index.size(0) == conv.size(0) && index.size(1) == conv.size(1),
                "max-pool gather: index ", index.sizes(), " does not match ", conv.sizes());
    const int64_t c = conv.size(1), plane = conv.size(2) * conv.size(3);
    const int64_t pooled = index.size(2) * index.size(3);
    auto out = at::empty(index.sizes(), conv.options().memory_format(kNhwc));
    AT_DISPATCH_FLOATING_TYPES(conv.scalar_type(), "maxpool_at_index", [&] {
        const auto *x = conv.const_data_ptr<scalar_t>();
        const auto *ix = index.const_data_ptr<int32_t>();
        auto *y = out.data_ptr<scalar_t>();
        at::parallel_for(0, index.size(0), 1, [&](int64_t lo, int64_t hi) {
            for (int64_t b = lo; b < hi; ++b)
                at_index_image(y + b * pooled * c, x + b * plane * c, ix + b * pooled * c, pooled, c);
        });
    });
    return out;
}

}  // namespace maxpool
