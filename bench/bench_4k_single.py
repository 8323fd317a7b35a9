"""One 4K generation (gemini-3-pro-image-preview, 16:9, 5504x3072): bananaline vs google-genai.

Each measurement is a fresh Python process that makes the request against the simulator (its
own process) and writes the image to disk, the way ``bananaline generate`` does. Reported per
client, as the median of ``--repeat`` runs: the child's peak RSS (kernel high-water mark), its
RSS after imports (the floor before any request), and the time from building the client to the
image being on disk. The response size is the JSON body the simulator sends.

    python bench/bench_4k_single.py [--repeat 3] [--latency 0] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import _common as common

MODEL = "gemini-3-pro-image-preview"
PROMPT = "a banana on a marble desk, product shot, soft light"
CLIENTS = ("bananaline", "google-genai")


# --- children -----------------------------------------------------------------------------------


async def _bananaline_child(base_url: str, aspect_ratio: str, image_size: str, out_dir: Path) -> dict:
    from bananaline.client import ImageClient
    from bananaline.config import Settings
    from bananaline.delivery import save_result, store_result
    from bananaline.imaging import preload
    from bananaline.storage import ImageStore
    from bananaline.types import GenerationRequest

    preload()  # libvips is a library load like any import: counted with the imports
    rss_after_import_mb = common.own_peak_rss_mb()
    started = time.perf_counter()
    settings = Settings(base_url=base_url, api_key=common.API_KEY, max_attempts=1, out_dir=out_dir)
    request = GenerationRequest(prompt=PROMPT, model=MODEL, aspect_ratio=aspect_ratio, image_size=image_size)
    async with ImageClient(settings) as client:
        result = await client.generate(request)
    if not result.ok:
        raise SystemExit(f"generation failed: {result.error}")
    paths = save_result(result, out_dir)
    # Checks and provenance above; here the compressed copy and the thumbnail, as a store makes them.
    store = ImageStore.from_url((out_dir / "store").as_uri(), settings=settings)
    stored = await store_result(result, store)
    if not (stored[0] and stored[0].compressed_key and stored[0].thumbnail_key):
        raise SystemExit(f"derivatives missing: {stored}")
    elapsed_s = time.perf_counter() - started
    image = result.images[0]
    return {
        "elapsed_s": elapsed_s,
        "rss_after_import_mb": rss_after_import_mb,
        "image_bytes": paths[0].stat().st_size,
        "width": image.width,
        "height": image.height,
    }


async def _genai_child(base_url: str, aspect_ratio: str, image_size: str, out_dir: Path) -> dict:
    from google import genai
    from google.genai import types

    rss_after_import_mb = common.own_peak_rss_mb()
    started = time.perf_counter()
    client = genai.Client(
        api_key=common.API_KEY, http_options=types.HttpOptions(base_url=base_url, timeout=1_200_000)
    )
    response = await client.aio.models.generate_content(
        model=MODEL,
        contents=[PROMPT],
        config=types.GenerateContentConfig(
            response_modalities=["IMAGE"],
            image_config=types.ImageConfig(aspect_ratio=aspect_ratio, image_size=image_size),
        ),
    )
    written = 0
    parts = response.candidates[0].content.parts if response.candidates else []
    for part in parts or []:
        if part.inline_data is not None and part.inline_data.data and not part.thought:
            ext = "jpg" if part.inline_data.mime_type == "image/jpeg" else "png"
            path = out_dir / f"genai-{written}.{ext}"
            path.write_bytes(part.inline_data.data)
            written += 1
    if not written:
        raise SystemExit("google-genai returned no image")
    elapsed_s = time.perf_counter() - started
    await client.aio.aclose()
    return {
        "elapsed_s": elapsed_s,
        "rss_after_import_mb": rss_after_import_mb,
        "image_bytes": path.stat().st_size,
    }


def child_main(args: argparse.Namespace) -> None:
    common.install_loopback_guard()
    out_dir = Path(args.out_dir)
    runner = _bananaline_child if args.child == "bananaline" else _genai_child
    report = asyncio.run(runner(args.base_url, args.aspect_ratio, args.size, out_dir))
    report["peak_rss_self_mb"] = common.own_peak_rss_mb()
    common.emit(report)


# --- parent -------------------------------------------------------------------------------------


def measure(args: argparse.Namespace) -> dict:
    load_before = common.load_line()
    runs: dict[str, list[common.ChildResult]] = {name: [] for name in CLIENTS}
    with common.SimulatorProcess(latency_s=args.latency, realistic=not args.not_realistic) as sim:
        response_bytes = sim.warm(MODEL, args.aspect_ratio, args.size)
        for _ in range(args.repeat):
            for name in CLIENTS:  # interleaved, so a load spike hurts both sides alike
                with tempfile.TemporaryDirectory(prefix="bench4k-") as tmp:
                    argv = [
                        sys.executable,
                        __file__,
                        "--child",
                        name,
                        "--base-url",
                        sim.base_url,
                        "--aspect-ratio",
                        args.aspect_ratio,
                        "--size",
                        args.size,
                        "--out-dir",
                        tmp,
                    ]
                    result = common.run_child(argv, cwd=Path(tmp))
                common.check_child(result, name)
                runs[name].append(result)
        requests_total = sim.stats()["requests_total"]
    figures = {
        "model": MODEL,
        "aspect_ratio": args.aspect_ratio,
        "image_size": args.size,
        "repeat": args.repeat,
        "latency_s": args.latency,
        "response_mb": response_bytes / 1e6,
        "simulator_requests": requests_total,
        "load_before": load_before,
        "load_after": common.load_line(),
        "clients": {},
    }
    for name, results in runs.items():
        figures["clients"][name] = {
            "peak_rss_mb": common.median(r.peak_rss_mb for r in results),
            "rss_after_import_mb": common.median(r.report["rss_after_import_mb"] for r in results),
            "elapsed_s": common.median(r.report["elapsed_s"] for r in results),
            "process_wall_s": common.median(r.process_wall_s for r in results),
            "image_mb": results[0].report["image_bytes"] / 1e6,
            "connected": sorted({host for r in results for host in r.report["connected"]}),
            "peak_rss_mb_runs": [round(r.peak_rss_mb, 1) for r in results],
            "elapsed_s_runs": [round(r.report["elapsed_s"], 2) for r in results],
        }
    return figures


def render(figures: dict) -> str:
    rows = []
    for name, data in figures["clients"].items():
        rows.append(
            [
                name,
                f"{data['peak_rss_mb']:.0f}",
                f"{data['rss_after_import_mb']:.0f}",
                f"{data['peak_rss_mb'] - data['rss_after_import_mb']:.0f}",
                f"{(data['peak_rss_mb'] - data['rss_after_import_mb']) / data['image_mb']:.2f}",
                f"{data['elapsed_s']:.2f}",
                f"{data['process_wall_s']:.2f}",
            ]
        )
    header = [
        "client",
        "peak RSS (MB)",
        "RSS after imports (MB)",
        "added by the request (MB)",
        "added / image bytes",
        "request + save (s)",
        "process wall (s)",
    ]
    caption = (
        f"One {figures['image_size']} {figures['aspect_ratio']} image from {figures['model']} "
        f"(response {figures['response_mb']:.1f} MB of JSON, image "
        f"{figures['clients']['bananaline']['image_mb']:.1f} MB), simulator latency "
        f"{figures['latency_s']:g} s, median of {figures['repeat']} fresh processes each."
    )
    return caption + "\n\n" + common.markdown_table(header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3, help="fresh processes per client (median)")
    parser.add_argument("--latency", type=float, default=0.0, help="simulator latency in seconds")
    parser.add_argument("--aspect-ratio", default="16:9")
    parser.add_argument("--size", default="4K")
    parser.add_argument("--not-realistic", action="store_true", help="tiny flat images (smoke runs)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    parser.add_argument("--child", choices=CLIENTS, help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args)
        return
    figures = measure(args)
    print(render(figures))
    print(f"\nMachine: {figures['load_before']} before, {figures['load_after']} after.")
    if args.json:
        print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
