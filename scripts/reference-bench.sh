#!/usr/bin/env bash
# Times gtn against the reference design written in plain PyTorch (scripts/reference_bench.py)
# on this machine, in one run, alternating the two so that drift in the host's speed hits both,
# and prints a table of seconds per meta-step and peak memory with the ratios.
#   scripts/reference-bench.sh [ROUNDS]   # default 2 rounds of: gtn, reference, per learner
#   SETTLE=20 scripts/reference-bench.sh  # seconds of pause before each program (default 20)
# The pause: run right after the reference exits (freeing ~12 GB), gtn measured 4-6% slower than
# a run of the same build minutes later (5.16 and 4.88 s against 4.94 and 4.67 s); with 20 s in
# between, 4.71 and 4.79 s against 4.63 and 4.83 s. Both programs get the same pause.
# Installs torch==2.11.0 with its dependencies (the CUDA wheels included, ~4.6 GB: PyPI's Linux
# torch is the CUDA build, which Python cannot import without them) into .reference-torch/ once.
# Needs target/release/gtn and data/mnist (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
threads=${THREADS:-2}
settle=${SETTLE:-20}
# The pause before each program but the first.
pause() { if [ -n "${ran:-}" ]; then sleep "$settle"; fi; ran=1; }
py=.reference-torch
if ! PYTHONPATH=$py python3 -c 'import torch; assert torch.__version__.startswith("2.11.0")' 2>/dev/null; then
    echo "reference: installing torch==2.11.0 with its dependencies into $py (~4.6 GB, about a minute)"
    rm -rf "$py.partial"
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --target "$py.partial" torch==2.11.0
    rm -rf "$py" && mv "$py.partial" "$py"
fi
[ -x target/release/gtn ] || { echo "reference-bench: target/release/gtn missing: run scripts/setup.sh" >&2; exit 1; }

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# The reference script scores its meta-loss with the real batch's own batch-norm statistics.
printf 'bn_eval = "batch"\n' >"$out/batch.toml"
for round in $(seq "$rounds"); do
    for learner in base-fc mlp; do
        echo "round $round/$rounds: $learner: gtn, then the reference" >&2
        pause
        target/release/gtn bench --preset paper --config "$out/batch.toml" --learner "$learner" --meta-iters 3 \
            --threads "$threads" --json \
            >>"$out/gtn-$learner.jsonl"
        pause
        # PyTorch warns that NumPy is missing (it is not needed); its messages go to a log shown on failure.
        PYTHONPATH=$py python3 scripts/reference_bench.py --learner "$learner" --meta-iters 3 --threads "$threads" \
            2>>"$out/reference.log" >>"$out/reference-$learner.jsonl" ||
            { echo "reference-bench: scripts/reference_bench.py failed:" >&2; cat "$out/reference.log" >&2; exit 1; }
    done
done

python3 - "$out" <<'PY'
import json, pathlib, statistics, sys
out = pathlib.Path(sys.argv[1])
def rows(name):
    return [json.loads(l) for l in (out / name).read_text().splitlines() if l.strip()]
print("| learner (T = 32, batch 128) | gtn s / meta-step | reference s / meta-step | time ratio | gtn peak RSS MiB (before the first step) | reference peak RSS MiB (before the first step) | memory ratio |")
print("|---|---|---|---|---|---|---|")
for learner in ("base-fc", "mlp"):
    ours, ref = rows(f"gtn-{learner}.jsonl"), rows(f"reference-{learner}.jsonl")
    col = lambda rs, key: [r[key] for r in rs]
    span = lambda xs, f: f"{statistics.median(xs):{f}} ({min(xs):{f}}-{max(xs):{f}})"
    t_ours, t_ref = col(ours, "seconds_per_meta_step_median"), col(ref, "seconds_per_meta_step_median")
    m_ours, m_ref = col(ours, "peak_rss_mib"), col(ref, "peak_rss_mib")
    base = lambda rs: f"{statistics.median(col(rs, 'baseline_rss_mib')):.0f}"
    print(f"| {learner} | {span(t_ours, '.2f')} | {span(t_ref, '.2f')} | {span([a / b for a, b in zip(t_ours, t_ref)], '.2f')}x "
          f"| {span(m_ours, '.0f')} ({base(ours)}) | {span(m_ref, '.0f')} ({base(ref)}) "
          f"| {span([a / b for a, b in zip(m_ours, m_ref)], '.3f')}x |")
PY
