"""Image work alone: libvips (the package's path) vs the Pillow path it replaced, same PNG.

For each input (the simulator's realistic 4K and 1K PNGs, rendered here) and each step, a fresh
child process (imports and libvips loaded and warmed on a small image first) runs the step once and
reports the peak RSS it added over the bytes it already held, and its CPU time:

* ``checks``: validity decode + blank/near-uniform test + 160 px preview
  (``checks.inspect_image`` vs the former Pillow implementation, kept below for the comparison);
* ``derivatives``: compressed 4500 px JPEG + 512 px WebP thumbnail
  (``storage.derivatives.make_derivatives`` vs the former Pillow implementation).

    python bench/bench_imaging.py            # ~30 s
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import _common as common

STEPS = ("checks", "derivatives")
ENGINES = ("libvips", "pillow")


def _pillow_checks(data: bytes) -> None:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.verify()
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        factor = max(1, -(-max(image.size) // 256))
        small = image.reduce(factor)
        small.getextrema()
        preview = small.copy()
        preview.thumbnail((160, 160))
        preview.save(io.BytesIO(), "JPEG", quality=70)


def _pillow_derivatives(data: bytes) -> None:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as opened:
        opened.load()
        image = opened.convert("RGB") if opened.mode != "RGB" else opened
        image.thumbnail((4500, 4500), Image.Resampling.LANCZOS)
        image.save(io.BytesIO(), "JPEG", quality=95)
        image.thumbnail((512, 512), Image.Resampling.LANCZOS, reducing_gap=1.0)
        image.save(io.BytesIO(), "WEBP", quality=80, method=2)


def _libvips_checks(data: bytes) -> None:
    from bananaline.checks import inspect_image

    inspect_image(data, "image/png", max_pixels=8192 * 8192)


def _libvips_derivatives(data: bytes) -> None:
    from bananaline.config import Settings
    from bananaline.storage.derivatives import make_derivatives, probe

    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    make_derivatives(data, probe(data, settings.max_image_pixels), settings)


def _rss_kb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    return 0


def child(engine: str, step: str, path: str, warm: str) -> None:
    from bananaline.imaging import preload

    preload()
    work = {
        ("libvips", "checks"): _libvips_checks,
        ("libvips", "derivatives"): _libvips_derivatives,
        ("pillow", "checks"): _pillow_checks,
        ("pillow", "derivatives"): _pillow_derivatives,
    }[(engine, step)]
    work(Path(warm).read_bytes())
    data = Path(path).read_bytes()
    before_kb = _rss_kb()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    work(data)
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime
    print(json.dumps({"added_mb": (after.ru_maxrss - before_kb) / 1024, "cpu_ms": cpu_s * 1000}))


def measure(repeat: int) -> dict:
    from bananaline.simulator.images import encode, render

    figures: dict = {"inputs": {}, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        inputs = {}
        for name, (width, height) in {"4K": (5504, 3072), "1K": (1024, 1024)}.items():
            path = Path(tmp) / f"{name}.png"
            path.write_bytes(encode(render(width, height, 0, "normal", True), "png"))
            inputs[name] = path
            figures["inputs"][name] = {"width": width, "height": height, "mb": path.stat().st_size / 1e6}
        warm = Path(tmp) / "warm.png"
        warm.write_bytes(encode(render(256, 256, 1, "normal", True), "png"))
        for name, path in inputs.items():
            for step in STEPS:
                for engine in ENGINES:
                    samples = []
                    for _ in range(repeat):
                        done = subprocess.run(
                            [sys.executable, __file__, "--child", engine, step, str(path), str(warm)],
                            capture_output=True,
                            text=True,
                            check=True,
                            env=common.child_env(),
                        )
                        samples.append(json.loads(done.stdout))
                    figures["runs"].append(
                        {
                            "input": name,
                            "step": step,
                            "engine": engine,
                            "added_mb": sorted(s["added_mb"] for s in samples)[len(samples) // 2],
                            "cpu_ms": sorted(s["cpu_ms"] for s in samples)[len(samples) // 2],
                        }
                    )
    return figures


def render_table(figures: dict) -> str:
    rows = [
        [run["input"], run["step"], run["engine"], f"{run['added_mb']:.1f}", f"{run['cpu_ms']:.0f}"]
        for run in figures["runs"]
    ]
    sizes = ", ".join(
        f"{k} {v['width']}x{v['height']} PNG {v['mb']:.1f} MB" for k, v in figures["inputs"].items()
    )
    header = ["input", "step", "engine", "peak RSS added (MB)", "CPU (ms)"]
    return f"Inputs: {sizes}; median of the runs.\n\n" + common.markdown_table(header, rows)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:6])
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    print(common.load_line())
    figures = measure(args.repeat)
    print(render_table(figures))
    print(common.load_line())
    if args.json:
        print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
