// libtorch's operator profiler around a region of Rust code (tch has no binding for it): every
// ATen op and autograd node run on the calling thread (CPU autograd runs there too) is recorded
// and written as a Chrome trace when the region ends. Called from src/profile.rs.
#include <torch/csrc/autograd/profiler_legacy.h>

#include <exception>
#include <string>

namespace {
thread_local std::string last_error;
}

extern "C" {

const char *gtn_profile_last_error() { return last_error.c_str(); }

// Starts recording; the trace goes to `path` when the returned guard is passed to
// gtn_profile_stop. Null (with the error kept) if the file cannot be opened.
void *gtn_profile_start(const char *path) {
    try {
        return new torch::autograd::profiler::RecordProfile(std::string(path));
    } catch (const std::exception &e) {
        last_error = e.what();
        return nullptr;
    }
}

// Stops recording and writes the trace.
void gtn_profile_stop(void *guard) { delete static_cast<torch::autograd::profiler::RecordProfile *>(guard); }
}
