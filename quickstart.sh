#!/usr/bin/env bash
# Installs what is missing, then meta-trains a GTN on MNIST with the `cpu` preset (resuming an
# interrupted run) and evaluates 5 fresh learners trained 32 steps on its synthetic data.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh
OUT=runs/mnist-cpu
if [ -f "$OUT/config.toml" ]; then
    target/release/gtn train --resume "$OUT" --eval-learners 5
else
    target/release/gtn train --preset cpu --out "$OUT" --eval-learners 5
fi
