#!/usr/bin/env bash
# The performance issue's GPU checks as one command, for a session that is lent a GPU machine
# with a CUDA PyTorch 2.11 installed (README, "Design", Device). From the repository root here:
#   cargo build --release && bash scripts/setup.sh   # binary and data/mnist in place
# then on the device machine, carrying target/release/gtn and data/mnist:
#   bash scripts/gpu-check.sh
# Writes one JSON per configuration and its GPU memory trace into $OUT (or ./gpu-check) and
# prints one line per configuration: median seconds per meta-step and peak GPU memory in use.
# Stops at once if libtorch does not see the GPU.
set -euo pipefail
out=${OUT:-gpu-check}
mkdir -p "$out"

# Our build links the CPU libtorch; the machine's CUDA libtorch of the same version replaces it,
# and the preload registers its CUDA kernels, which nothing in our link pulls in.
lib=$(python3 -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH=$lib LD_PRELOAD=$lib/libtorch_cuda.so
gtn=target/release/gtn
data=data/mnist

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
poll=
trap '[[ -n $poll ]] && kill $poll 2>/dev/null; true' EXIT

# One configuration, with the GPU's memory in use polled every 100 ms while it runs: the caching
# allocator's peak, which the bench's RSS does not show.
bench() {
    local name=$1
    shift
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$out/$name-gpu-memory.csv" &
    poll=$!
    "$gtn" bench --data-dir "$data" "$@" --json >"$out/$name.json"
    kill $poll 2>/dev/null || true
    wait $poll 2>/dev/null || true
    poll=
    if ! grep -q '"device": *"Cuda' "$out/$name.json"; then
        echo "gpu-check: $name ran on $(grep -o '"device": *"[^"]*"' "$out/$name.json"), not on the GPU" >&2
        exit 1
    fi
    local median peak
    median=$(tr -d '\n' <"$out/$name.json" | grep -o '"seconds_per_meta_step_median": *[0-9.e+-]*' | grep -o '[0-9.e+-]*$') || median='?'
    peak=$(tr -dc '0-9\n' <"$out/$name-gpu-memory.csv" | sort -n | tail -1)
    echo "$name: ${median} s per meta-step (median), peak GPU memory in use ${peak:-?} MiB"
}

bench paper --preset paper --meta-iters 10
bench paper-mlp --preset paper --learner mlp --meta-iters 10
bench paper-t128 --preset paper --steps 128 --meta-iters 3
bench paper-t128-ckpt8 --preset paper --steps 128 --checkpoint-every 8 --meta-iters 3
