// Whether our CPU kernels (csrc/*.h) take a tensor: one on the CPU, on a thread that has not turned
// them off. Off, every function of csrc/custom.cpp runs the libtorch ops it takes on a GPU, so a
// test can hold that path to the kernels' on the CPU.
#pragma once

#include <ATen/ATen.h>

namespace cpu_kernels {

bool take(const at::Tensor &t);

// For this thread only: tests run side by side, each on its own thread, and a CPU graph's
// backward runs on the thread that calls it.
void set_enabled(bool enabled);

bool enabled();

// How many times `take` said yes on this thread.
int64_t taken_count();

}  // namespace cpu_kernels
