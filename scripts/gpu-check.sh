#!/usr/bin/env bash
# The performance issue's GPU checks as one command, for a session that is lent a GPU machine
# with a CUDA PyTorch 2.11 installed (README, "Design", Device). From the repository root here:
#   cargo build --release && bash scripts/setup.sh   # binary and data/mnist in place
#   cp "$(cargo test --release --lib --no-run 2>&1 | grep -o 'target/release/deps/gtn-[0-9a-f]*')" \
#      target/release/gtn-lib-tests                    # the library's tests, for the GPU's
#                                                      # meta-gradient against the CPU kernels'
# (both binaries from the same commit: build them together, just before the device call),
# then on the device machine, carrying target/release/gtn, target/release/gtn-lib-tests and
# data/mnist (run's timeout_s 560: the script ends within 500 s):
#   bash scripts/gpu-check.sh
# Writes into $OUT (or ./gpu-check) six files at most, within what the device tool brings back:
# summary.txt (the GPU, then one line per configuration: median seconds per meta-step and peak
# GPU memory in use), one JSON per configuration, and stderr.txt. Stops at once if libtorch does
# not see the GPU; a configuration that fails or outlasts its time is reported and skipped, and
# the whole ends within 500 s ($GPU_CHECK_SECONDS), inside the device call's limit, so that its
# summary comes back whole.
set -euo pipefail
out=${OUT:-gpu-check}
mkdir -p "$out"
traces=$(mktemp -d)
poll=
trap '[[ -n $poll ]] && kill $poll 2>/dev/null; rm -rf "$traces"; true' EXIT
deadline=$((SECONDS + ${GPU_CHECK_SECONDS:-500}))
# Each command stops after 170 s (a hang must not take the whole device call), or sooner where
# less is left; none starts with under 20 s left.
budget() {
    local left=$((deadline - SECONDS))
    ((left >= 20)) && echo $((left < 170 ? left : 170))
}

# Our build does not link libtorch_cuda; the machine's libtorch of the same version replaces the
# .libtorch/ it was linked against (prepended: the driver's own library path stays), and the
# preload, on gtn alone, registers its CUDA kernels, which nothing in our link pulls in. Another
# torch version would fail on missing symbols, which the checks below would report as no GPU.
if ! read -r version lib < <(python3 -c 'import torch, os; print(torch.__version__, os.path.join(os.path.dirname(torch.__file__), "lib"))'); then
    echo "gpu-check: python3 cannot import torch (above)" | tee -a "$out/summary.txt" >&2
    exit 1
fi
if [[ $version != 2.11.* ]]; then
    echo "gpu-check: this machine's torch is $version, expected 2.11 (gtn is built on libtorch 2.11)" | tee -a "$out/summary.txt" >&2
    exit 1
fi
export LD_LIBRARY_PATH=$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
gtn=target/release/gtn
data=data/mnist
run_gtn() {
    local seconds
    seconds=$(budget) || return 124
    timeout "$seconds" env LD_PRELOAD="$lib/libtorch_cuda.so" "$gtn" "$@" 2> >(tee -a "$out/stderr.txt" >&2)
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/summary.txt"
if ldd "$gtn" | grep 'not found'; then
    echo "gpu-check: $gtn is missing libraries (above)" | tee -a "$out/summary.txt" >&2
    exit 1
fi
# Seconds, before the real configurations: does libtorch see the GPU at all?
tiny=$(run_gtn bench --preset tiny --meta-iters 1 --data-dir "$data" --json) || true
if ! grep -q '"device": *"cuda' <<<"$tiny"; then
    echo "gpu-check: libtorch does not see the GPU (the tiny bench ran elsewhere)" | tee -a "$out/summary.txt" >&2
    exit 1
fi

# The meta-gradient on the GPU against the CPU kernels' (f64, so no TF32), when the library's
# test binary was carried: the CUDA paths of csrc/custom.cpp, which no test here reaches.
tests=target/release/gtn-lib-tests
if [[ -x $tests ]]; then
    test=custom::tests::the_devices_ops_give_the_cpu_kernels_meta_gradient
    # A filter that matches no test passes too: the count must be one.
    result="not run: out of time"
    if seconds=$(budget); then
        result=$(timeout "$((seconds < 120 ? seconds : 120))" env LD_PRELOAD="$lib/libtorch_cuda.so" "$tests" --exact "$test" 2>&1) || true
    fi
    echo "$result" >>"$out/stderr.txt"
    if grep -q 'test result: ok. 1 passed' <<<"$result"; then
        echo "meta-gradient on the GPU: the CPU kernels' (f64, $test)"
    else
        echo "meta-gradient on the GPU: FAILED or not run, see stderr.txt ($test)"
    fi | tee -a "$out/summary.txt"
fi

# One configuration, with the GPU's memory in use polled every 100 ms while it runs: the caching
# allocator's reserve plus the CUDA context, which the bench's RSS (host memory) does not show.
bench() {
    local name=$1 status=0
    shift
    if ! budget >/dev/null; then
        echo "$name: not run (under 20 s of the check's $((${GPU_CHECK_SECONDS:-500})) s left)" | tee -a "$out/summary.txt"
        return 0
    fi
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 -f "$traces/$name.csv" &
    poll=$!
    run_gtn bench --data-dir "$data" "$@" --json >"$out/$name.json" || status=$?
    kill $poll 2>/dev/null || true
    wait $poll 2>/dev/null || true
    poll=
    local median peak
    peak=$(tr -dc '0-9\n' <"$traces/$name.csv" 2>/dev/null | sort -n | tail -1) || peak=
    if ((status != 0)); then
        echo "$name: failed (exit $status; 124: out of its time), peak GPU memory in use ${peak:-?} MiB" | tee -a "$out/summary.txt"
        return 0
    fi
    if ! grep -q '"device": *"cuda' "$out/$name.json"; then
        echo "$name: ran on $(grep -o '"device": *"[^"]*"' "$out/$name.json"), not on the GPU" | tee -a "$out/summary.txt"
        return 0
    fi
    median=$(tr -d '\n' <"$out/$name.json" | grep -o '"seconds_per_meta_step_median": *[0-9.e+-]*' | grep -o '[0-9.e+-]*$') || median='?'
    echo "$name: ${median} s per meta-step (median), peak GPU memory in use ${peak:-?} MiB" | tee -a "$out/summary.txt"
}

bench paper --preset paper --meta-iters 10
bench paper-mlp --preset paper --learner mlp --meta-iters 10
bench paper-t128 --preset paper --steps 128 --meta-iters 3
bench paper-t128-ckpt8 --preset paper --steps 128 --checkpoint-every 8 --meta-iters 3
