#!/usr/bin/env bash
# Installs what is missing (same steps as quickstart.sh), then runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")"
# One build for setup's binary and the tests, in target/.
unset CARGO_TARGET_DIR
scripts/setup.sh
cargo test --release
