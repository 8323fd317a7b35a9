"""The 4K memory guard: checks and derivatives never hold a decoded 4K raster.

A 5504x3072 PNG decoded whole is 51 MB of RGB; before the streaming path (libvips), the output
checks added ~64 MB and the compressed copy + thumbnail ~160 MB on top of the image's bytes.
Measured in a fresh child process (peak RSS from the kernel, plus tracemalloc for Python-side
copies of the bytes), so nothing this test process holds is counted. The bounds are generous;
the exact figures are in ``bench/bench_imaging.py`` and the README.
"""

from __future__ import annotations

import io
import json
import os
import random
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from PIL import Image

from bananaline.checks import inspect_image
from bananaline.errors import GenerationError
from bananaline.imaging import ImageTooLarge, UndecodableImage, derive, scan

_CHILD = r"""
import json, sys, tracemalloc
from pathlib import Path
from bananaline.checks import inspect_image
from bananaline.config import Settings
from bananaline.storage.derivatives import make_derivatives, probe

def status_kb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])
    return 0

settings = Settings(_env_file=None)
warm = Path(sys.argv[2]).read_bytes()
inspect_image(warm, "image/png", max_pixels=settings.max_image_pixels)
make_derivatives(warm, probe(warm, settings.max_image_pixels), settings)
data = Path(sys.argv[1]).read_bytes()
before_kb = status_kb("VmRSS")
tracemalloc.start()
image = inspect_image(data, "image/png", max_pixels=settings.max_image_pixels)
made = make_derivatives(data, probe(data, settings.max_image_pixels), settings)
python_peak = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()
# VmHWM, this process's own high-water mark: ru_maxrss would carry the forking parent's peak
# (a pytest process of 1.2 GB late in the suite) across fork and exec.
peak_kb = status_kb("VmHWM")
print(json.dumps({
    "bytes": len(data), "added": (peak_kb - before_kb) * 1024, "python_peak": python_peak,
    "size": [image.width, image.height], "blank": image.blank,
    "compressed": list(made.compressed_size or ()), "thumbnail": list(made.thumbnail_size or ()),
}))
"""


def _png(image: Image.Image, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **params)
    return buffer.getvalue()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS from /proc")
def test_4k_checks_and_derivatives_stay_far_below_a_decoded_raster(tmp_path: Path) -> None:
    width, height = 5504, 3072
    noise = Image.frombytes("RGB", (width, height), random.Random(15).randbytes(width * height * 3))
    big = tmp_path / "4k.png"
    big.write_bytes(_png(noise, compress_level=1))
    noise.close()
    small = tmp_path / "small.png"
    small.write_bytes(_png(Image.linear_gradient("L").convert("RGB")))
    # Only what the child needs: the measurement is of our code, not of variables other tests left.
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "PYTHONPATH", "VIRTUAL_ENV")}
    env["MALLOC_ARENA_MAX"] = "2"  # glibc's per-thread arenas (libvips' workers) blur RSS otherwise
    runs = []
    for _ in range(3):  # RSS is noisy (one CI run saw an outlier): the best of three fresh processes
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, str(big), str(small)],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        runs.append(json.loads(done.stdout))
        if runs[-1]["added"] < 2.5 * width * height * 3:
            break
    figures = min(runs, key=lambda run: run["added"])
    assert figures["size"] == [width, height] and figures["blank"] is False
    assert figures["compressed"] == [4500, 2512] and figures["thumbnail"] == [512, 286]
    raster = width * height * 3  # 51 MB: what one full decode would cost
    # Streaming: ~40-90 MB (once 111) for all of it on this noise (allocator arenas of libvips' threads make
    # it vary); the Pillow path added ~160 MB (3 rasters' worth), so this still catches a return
    # to full-raster decoding.
    assert figures["added"] < 2.5 * raster, figures
    # No Python-side copy of the 4K bytes (the image's own bytes are held by the caller).
    assert figures["python_peak"] < 0.25 * figures["bytes"], figures


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def test_20000_square_header_bomb_is_refused_on_the_streaming_path() -> None:
    ihdr = struct.pack(">IIBBBBB", 20_000, 20_000, 8, 2, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
    bomb += _chunk(b"IDAT", zlib.compress(b"\0" * 999)) + _chunk(b"IEND", b"")
    with pytest.raises(ImageTooLarge, match="20000x20000"):
        scan(bomb, "image/png", max_pixels=8192 * 8192, tolerance=6)
    with pytest.raises(ImageTooLarge):
        derive(
            bomb,
            "image/png",
            (20_000, 20_000),
            compressed_long_edge=4500,
            thumbnail_long_edge=512,
            jpeg_quality=90,
            webp_quality=80,
            webp_effort=0,
            max_pixels=8192 * 8192,
        )
    with pytest.raises(GenerationError) as caught:
        inspect_image(bomb, "image/png", max_pixels=8192 * 8192)
    assert caught.value.detail == "too_large"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
@pytest.mark.parametrize("keep", [0.5, 0.95])
def test_truncated_images_are_undecodable_on_the_streaming_path(fmt: str, keep: float) -> None:
    noise = Image.frombytes("RGB", (640, 480), random.Random(3).randbytes(640 * 480 * 3))
    buffer = io.BytesIO()
    noise.save(buffer, fmt)
    data = buffer.getvalue()
    cut = data[: int(len(data) * keep)]
    mime = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}[fmt]
    assert scan(data, mime, max_pixels=10**8, tolerance=6).blank is False
    with pytest.raises(UndecodableImage):
        scan(cut, mime, max_pixels=10**8, tolerance=6)
    with pytest.raises(GenerationError) as caught:
        inspect_image(cut, mime, max_pixels=10**8)
    assert caught.value.detail == "undecodable"


def test_sixteen_bit_and_transparent_pngs_are_judged_in_8_bit() -> None:
    flat16 = Image.new("I;16", (300, 200), 40000)
    assert scan(_png(flat16), "image/png", max_pixels=10**8, tolerance=6).blank
    ramp = b"".join(struct.pack("<H", x * 257) for _ in range(256) for x in range(256))
    ramp16 = Image.frombytes("I;16", (256, 256), ramp)
    assert not scan(_png(ramp16), "image/png", max_pixels=10**8, tolerance=6).blank
    clear = Image.new("RGBA", (300, 200), (12, 200, 40, 0))
    found = scan(_png(clear), "image/png", max_pixels=10**8, tolerance=6)
    assert found.blank and found.preview and found.preview.startswith(b"\xff\xd8")
