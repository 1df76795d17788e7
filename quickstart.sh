#!/usr/bin/env bash
# Installs what is missing, then meta-trains a GTN on MNIST with the `cpu` preset (a second run
# continues an interrupted one) and evaluates 5 fresh learners trained 32 steps on its data.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh
target/release/gtn train --preset cpu --out runs/mnist-cpu --eval-learners 5
