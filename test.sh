#!/usr/bin/env bash
# Installs what is missing (same steps as quickstart.sh), then runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh
cargo test --release
