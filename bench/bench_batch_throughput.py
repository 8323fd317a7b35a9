"""Batch throughput: N 1K rows at a fixed upstream latency and concurrency, against the ideal.

With every call taking ``latency`` seconds upstream and ``concurrency`` calls open at once, no
client can do better than ``concurrency / latency`` rows per second (64 / 2 s = 32 rows/s). Two
sides run the same rows, each in a fresh child process whose peak RSS the kernel reports:

* ``bananaline batch``: the :class:`~bananaline.batch.engine.BatchEngine` (what ``bananaline
  batch run`` drives) with its defaults: a SQLite job store, a ``file://`` image store with
  derivatives (compressed copy and thumbnail), retries, per-caller limits;
* ``google-genai``: a plain ``asyncio.gather`` over an ``asyncio.Semaphore(concurrency)``,
  each image written to disk.

Throughput is rows finished / time of the run (from the first request to the last row; process
start-up and imports are excluded and shown separately as process wall). The simulator's own
``max_in_flight`` proves the concurrency was really reached.

    python bench/bench_batch_throughput.py [--rows 1000] [--latency 2] [--concurrency 64] [--json]
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
SIDES = ("bananaline", "google-genai")


def bench_rows(count: int, aspect_ratio: str, size: str) -> list[dict[str, str]]:
    return [
        {
            "prompt": f"bench row {index}: a banana, studio light",
            "model": MODEL,
            "aspect_ratio": aspect_ratio,
            "size": size,
        }
        for index in range(count)
    ]


# --- children -----------------------------------------------------------------------------------


async def run_batch_engine(args: argparse.Namespace, work_dir: Path) -> dict:
    """Shared with bench_batch_4k_rss.py: run the rows through a fresh BatchEngine."""
    from bananaline.batch.engine import BatchEngine
    from bananaline.config import Settings

    rss_after_import_mb = common.own_peak_rss_mb()
    settings = Settings(
        base_url=args.base_url,
        api_key=common.API_KEY,
        db_url=f"sqlite:///{work_dir / 'bench.db'}",
        store_url=f"file://{work_dir / 'images'}",
        spool_dir=work_dir / "spool",
        out_dir=work_dir / "out",
        make_compressed=not args.no_derivatives,
        make_thumbnail=not args.no_derivatives,
    )
    engine = BatchEngine(settings)
    batch_id = engine.create_batch(bench_rows(args.rows, args.aspect_ratio, args.size))
    started = time.perf_counter()
    summary = await engine.run(batch_id, concurrency=args.concurrency)
    elapsed_s = time.perf_counter() - started
    engine.close()
    return {
        "elapsed_s": elapsed_s,
        "rows_done": summary.rows_by_status.get("done", 0),
        "rows_by_status": summary.rows_by_status,
        "errors": {kind: group.count for kind, group in summary.errors_by_kind.items()},
        "rss_after_import_mb": rss_after_import_mb,
    }


async def run_genai(args: argparse.Namespace, work_dir: Path) -> dict:
    """Shared with bench_batch_4k_rss.py: the same rows with google-genai and a semaphore."""
    from google import genai
    from google.genai import types

    rss_after_import_mb = common.own_peak_rss_mb()
    rows = bench_rows(args.rows, args.aspect_ratio, args.size)
    client = genai.Client(
        api_key=common.API_KEY, http_options=types.HttpOptions(base_url=args.base_url, timeout=1_200_000)
    )
    gate = asyncio.Semaphore(args.concurrency)
    errors: dict[str, int] = {}
    out_dir = work_dir / "images"
    out_dir.mkdir()

    async def one(index: int, row: dict[str, str]) -> bool:
        async with gate:
            try:
                response = await client.aio.models.generate_content(
                    model=row["model"],
                    contents=[row["prompt"]],
                    config=types.GenerateContentConfig(
                        response_modalities=["IMAGE"],
                        image_config=types.ImageConfig(
                            aspect_ratio=row["aspect_ratio"], image_size=row["size"]
                        ),
                    ),
                )
            except Exception as exc:  # a benchmark counts failures instead of stopping
                name = type(exc).__name__
                errors[name] = errors.get(name, 0) + 1
                return False
            parts = response.candidates[0].content.parts if response.candidates else None
            for part in parts or []:
                if part.inline_data is not None and part.inline_data.data and not part.thought:
                    (out_dir / f"{index}.png").write_bytes(part.inline_data.data)
                    return True
            errors["no_image"] = errors.get("no_image", 0) + 1
            return False

    started = time.perf_counter()
    outcomes = await asyncio.gather(*(one(index, row) for index, row in enumerate(rows)))
    elapsed_s = time.perf_counter() - started
    await client.aio.aclose()
    return {
        "elapsed_s": elapsed_s,
        "rows_done": sum(outcomes),
        "rows_by_status": {"done": sum(outcomes), "failed": len(outcomes) - sum(outcomes)},
        "errors": errors,
        "rss_after_import_mb": rss_after_import_mb,
    }


def child_main(args: argparse.Namespace) -> None:
    common.install_loopback_guard()
    runner = run_batch_engine if args.child == "bananaline" else run_genai
    report = asyncio.run(runner(args, Path(args.work_dir)))
    common.emit(report)


def child_argv(script: str, side: str, args: argparse.Namespace, base_url: str, work_dir: str) -> list[str]:
    return [
        sys.executable,
        script,
        "--child",
        side,
        "--base-url",
        base_url,
        "--work-dir",
        work_dir,
        "--rows",
        str(args.rows),
        "--concurrency",
        str(args.concurrency),
        "--aspect-ratio",
        args.aspect_ratio,
        "--size",
        args.size,
        *(["--no-derivatives"] if args.no_derivatives else []),
    ]


# --- parent -------------------------------------------------------------------------------------


def measure(args: argparse.Namespace, *, script: str = __file__) -> dict:
    """Run each side of ``args.sides`` in a child of ``script`` against one simulator process."""
    ideal_rows_per_s = args.concurrency / args.latency if args.latency > 0 else None
    figures: dict = {
        "rows": args.rows,
        "latency_s": args.latency,
        "concurrency": args.concurrency,
        "size": args.size,
        "aspect_ratio": args.aspect_ratio,
        "realistic": not args.not_realistic,
        "derivatives": not args.no_derivatives,
        "ideal_rows_per_s": ideal_rows_per_s,
        "sides": {},
    }
    with common.SimulatorProcess(latency_s=args.latency, realistic=not args.not_realistic) as sim:
        figures["response_mb"] = sim.warm(MODEL, args.aspect_ratio, args.size) / 1e6
        for side in args.sides:
            sim.reset()
            load_before = common.load_line()
            sim_cpu_before_s = sim.cpu_s()
            with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
                result = common.run_child(child_argv(script, side, args, sim.base_url, tmp), cwd=Path(tmp))
            common.check_child(result, side)
            stats = sim.stats()
            sim_cpu_s = sim.cpu_s() - sim_cpu_before_s
            report = result.report
            rows_per_s = report["rows_done"] / report["elapsed_s"]
            figures["sides"][side] = {
                "rows_done": report["rows_done"],
                "rows_by_status": report["rows_by_status"],
                "errors": report["errors"],
                "elapsed_s": report["elapsed_s"],
                "process_wall_s": result.process_wall_s,
                "rows_per_s": rows_per_s,
                "fraction_of_ideal": rows_per_s / ideal_rows_per_s if ideal_rows_per_s else None,
                "peak_rss_mb": result.peak_rss_mb,
                "child_cpu_s": result.cpu_s,
                "simulator_cpu_s": sim_cpu_s,
                "rss_after_import_mb": report["rss_after_import_mb"],
                "simulator_requests": stats["requests_total"],
                "simulator_max_in_flight": stats["max_in_flight"],
                "connected": report["connected"],
                "load_before": load_before,
                "load_after": common.load_line(),
            }
    return figures


def render(figures: dict) -> str:
    header = [
        "side",
        "rows done",
        "run (s)",
        "rows/s",
        "of ideal",
        "peak RSS (MB)",
        "client CPU per row (ms)",
        "simulator max in flight",
        "simulator CPU (s)",
        "process wall (s)",
    ]
    rows = []
    for side, data in figures["sides"].items():
        fraction = data["fraction_of_ideal"]
        rows.append(
            [
                side,
                f"{data['rows_done']}/{figures['rows']}",
                f"{data['elapsed_s']:.1f}",
                f"{data['rows_per_s']:.1f}",
                f"{fraction:.2f}" if fraction is not None else "n/a",
                f"{data['peak_rss_mb']:.0f}",
                f"{1000 * data['child_cpu_s'] / max(1, data['rows_done']):.0f}",
                data["simulator_max_in_flight"],
                f"{data['simulator_cpu_s']:.1f}",
                f"{data['process_wall_s']:.1f}",
            ]
        )
    ideal = figures["ideal_rows_per_s"]
    caption = (
        f"{figures['rows']} rows of {figures['size']} {figures['aspect_ratio']} "
        f"({figures['response_mb']:.1f} MB of JSON each), simulator latency {figures['latency_s']:g} s, "
        f"concurrency {figures['concurrency']}" + (f": ideal {ideal:.1f} rows/s." if ideal else ".")
    )
    return caption + "\n\n" + common.markdown_table(header, rows)


def add_common_arguments(
    parser: argparse.ArgumentParser,
    *,
    rows: int,
    latency: float,
    concurrency: int,
    size: str,
    aspect_ratio: str,
) -> None:
    parser.add_argument("--rows", type=int, default=rows)
    parser.add_argument("--latency", type=float, default=latency, help="simulator latency in seconds")
    parser.add_argument("--concurrency", type=int, default=concurrency)
    parser.add_argument("--size", default=size)
    parser.add_argument("--aspect-ratio", default=aspect_ratio)
    parser.add_argument("--not-realistic", action="store_true", help="tiny flat images (smoke runs)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    parser.add_argument(
        "--no-derivatives",
        action="store_true",
        help="bananaline side: store the original only (no compressed copy, no thumbnail)",
    )
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--work-dir", help=argparse.SUPPRESS)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_arguments(parser, rows=1000, latency=2.0, concurrency=64, size="1K", aspect_ratio="1:1")
    parser.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
    args = parser.parse_args()
    if args.child:
        child_main(args)
        return
    figures = measure(args)
    print(render(figures))
    for side, data in figures["sides"].items():
        print(f"\n{side}: {data['load_before']} before, {data['load_after']} after; errors {data['errors']}")
    if args.json:
        print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
