"""Peak memory of the batch engine with 32 4K rows in flight at once (target: under 1.5 GB).

32 rows of gemini-3-pro-image-preview 16:9 4K (a 20 MB PNG in 27 MB of JSON each) go through a
fresh :class:`~bananaline.batch.engine.BatchEngine` in a child process at concurrency 32. The
simulator holds every call for ``--latency`` seconds so all 32 responses arrive together: the
worst case for memory. Reported: the child's peak RSS (kernel high-water mark), the run's wall
time, and the simulator's max in flight (proof that 32 were really open at once).
``--sides bananaline google-genai`` adds the same rows through google-genai with a semaphore.

    python bench/bench_batch_4k_rss.py [--rows 32] [--concurrency 32] [--latency 2] [--json]
"""

from __future__ import annotations

import argparse
import json

import bench_batch_throughput as throughput

TARGET_MB = 1000.0  # issue 15 (was 1500)


def render(figures: dict) -> str:
    header = [
        "side",
        "rows done",
        "peak RSS (MB)",
        "target",
        "run (s)",
        "simulator max in flight",
        "process wall (s)",
    ]
    rows = []
    for side, data in figures["sides"].items():
        verdict = "met" if data["peak_rss_mb"] < TARGET_MB else "MISSED"
        rows.append(
            [
                side,
                f"{data['rows_done']}/{figures['rows']}",
                f"{data['peak_rss_mb']:.0f}",
                f"< {TARGET_MB:.0f} MB: {verdict}" if side == "bananaline" else "",
                f"{data['elapsed_s']:.1f}",
                data["simulator_max_in_flight"],
                f"{data['process_wall_s']:.1f}",
            ]
        )
    caption = (
        f"{figures['rows']} rows of {figures['size']} {figures['aspect_ratio']} "
        f"({figures['response_mb']:.1f} MB of JSON each) at concurrency {figures['concurrency']}, "
        f"simulator latency {figures['latency_s']:g} s."
    )
    return caption + "\n\n" + throughput.common.markdown_table(header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    throughput.add_common_arguments(
        parser, rows=32, latency=2.0, concurrency=32, size="4K", aspect_ratio="16:9"
    )
    parser.add_argument("--sides", nargs="+", choices=throughput.SIDES, default=["bananaline"])
    args = parser.parse_args()
    if args.child:
        throughput.child_main(args)
        return
    figures = throughput.measure(args, script=__file__)
    print(render(figures))
    for side, data in figures["sides"].items():
        print(f"\n{side}: {data['load_before']} before, {data['load_after']} after; errors {data['errors']}")
    if args.json:
        print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
