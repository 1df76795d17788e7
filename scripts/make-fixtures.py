"""Cuts the committed test fixtures (tests/fixtures/mnist) from the real MNIST IDX files:
the first 512 training and the first 256 test images with their labels, gzip-compressed.
Usage: python3 scripts/make-fixtures.py SRC_DIR (a folder with the four *-ubyte[.gz] files)."""
import gzip, pathlib, struct, sys

src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(__file__).resolve().parent.parent / "tests/fixtures/mnist"
dst.mkdir(parents=True, exist_ok=True)
for prefix, n in (("train", 512), ("t10k", 256)):
    for kind, ndims in (("images-idx3", 3), ("labels-idx1", 1)):
        name = f"{prefix}-{kind}-ubyte"
        path = src / name if (src / name).exists() else src / f"{name}.gz"
        raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
        dims = list(struct.unpack(f">{ndims}I", raw[4:4 + 4 * ndims]))
        per_item = 1
        for d in dims[1:]:
            per_item *= d
        header = raw[:4] + struct.pack(f">{ndims}I", n, *dims[1:])
        body = raw[4 + 4 * ndims: 4 + 4 * ndims + n * per_item]
        # mtime=0 keeps the fixture bytes identical across regenerations.
        with open(dst / f"{name}.gz", "wb") as f:
            f.write(gzip.compress(header + body, mtime=0))
