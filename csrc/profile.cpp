// libtorch's profiler (Kineto, as torch.profiler uses it) around a region of Rust code, which tch
// has no binding for: every ATen op and autograd node, with its input shapes, is written as a
// Chrome trace when the region ends. Called from src/profile.rs.
#include <torch/csrc/autograd/profiler_kineto.h>

#include <cstdlib>
#include <exception>
#include <set>
#include <string>

namespace {
thread_local std::string last_error;

namespace prof = torch::profiler::impl;
const std::set<prof::ActivityType> cpu_only{prof::ActivityType::CPU};

template <typename F>
int guarded(F f) {
    try {
        f();
        return 0;
    } catch (const std::exception &e) {
        last_error = e.what();
        return -1;
    } catch (...) {
        // Nothing may unwind into Rust.
        last_error = "a C++ exception that is not a std::exception";
        return -1;
    }
}
}  // namespace

extern "C" {

const char *gtn_profile_last_error() { return last_error.c_str(); }

// Starts recording CPU ops with their input shapes. 0, or -1 with the error kept.
int gtn_profile_start() {
    return guarded([] {
        // Kineto logs at ERROR that it finds no GPU in a process without libtorch_cuda (gtn does not
        // link it); a user's own setting wins.
        setenv("KINETO_LOG_LEVEL", "5", /*overwrite=*/0);
        prof::ProfilerConfig config(prof::ProfilerState::KINETO, /*report_input_shapes=*/true);
        torch::autograd::profiler::prepareProfiler(config, cpu_only);
        torch::autograd::profiler::enableProfiler(config, cpu_only);
    });
}

// Stops recording and writes the trace to `path`. 0, or -1 with the error kept.
int gtn_profile_stop(const char *path) {
    return guarded([&] { torch::autograd::profiler::disableProfiler()->save(std::string(path)); });
}
}
