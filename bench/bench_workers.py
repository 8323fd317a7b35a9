"""Scale out: one ``bananaline worker`` against three, on one batch, same per-worker concurrency.

The upstream (the simulator, its own process) answers every call after ``--latency`` seconds (2 s
by default), so the upstream, not this 2-core machine, is what a worker waits on: one worker with
``--concurrency C`` can finish at most ``C / latency`` rows per second, three at most three times
that. The batch (``--rows`` 1K images, no caller limits) is queued in a fresh job store
(PostgreSQL by default: the multi-machine engine; ``--db sqlite`` for one machine), then N real
``bananaline worker --exit-when-idle`` processes drain it. The run time is measured in the job
store, from the first claim to the last result (process start-up excluded; each process's wall
time is shown beside it), and every row is checked done exactly once (the simulator's count).

    python bench/bench_workers.py [--rows 480] [--latency 2] [--concurrency 16] [--workers 1 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import _common as common

MODEL = "gemini-3-pro-image-preview"


def submit(db_url: str, rows: int, run_label: str) -> str:
    from bananaline.batch.engine import BatchEngine
    from bananaline.config import Settings

    engine = BatchEngine(Settings(db_url=db_url, model=MODEL))
    try:
        return engine.create_batch(
            [
                {"prompt": f"scale-out {run_label} row {i}: a banana, studio light", "size": "1K"}
                for i in range(rows)
            ]
        )
    finally:
        engine.close()


def run_timing(db_url: str, batch_id: str) -> tuple[float, dict[str, int]]:
    """``(first claim -> last result in s, jobs by status)``."""
    from sqlalchemy import func, select

    from bananaline.batch.models import JobRecord
    from bananaline.db.base import make_engine

    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            first, last = conn.execute(
                select(func.min(JobRecord.claimed_at), func.max(JobRecord.finished_at)).where(
                    JobRecord.batch_id == batch_id
                )
            ).one()
            counts = dict(
                conn.execute(
                    select(JobRecord.status, func.count())
                    .where(JobRecord.batch_id == batch_id)
                    .group_by(JobRecord.status)
                ).all()
            )
    finally:
        engine.dispose()
    return float(last - first), counts


def run_workers(args: argparse.Namespace, sim: common.SimulatorProcess, workers: int) -> dict[str, Any]:
    from bananaline.simulator import prompt_id

    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        work_dir = Path(tmp)
        with common.job_store_url(args.db, args.pg_url, "bench-workers") as db_url:
            label = f"{workers}w-{uuid.uuid4().hex[:6]}"
            batch_id = submit(db_url, args.rows, label)
            sim.reset()
            env = common.child_env(
                BANANALINE_API_KEY=common.API_KEY,
                BANANALINE_SPOOL_DIR=str(work_dir / "spool"),
                **({"BANANALINE_MAKE_COMPRESSED": "false"} if args.no_derivatives else {}),
            )
            argv = [
                sys.executable,
                "-m",
                "bananaline",
                "worker",
                "--db",
                db_url,
                "--store",
                f"file://{work_dir / 'images'}",
                "--base-url",
                sim.base_url,
                "--concurrency",
                str(args.concurrency),
                "--exit-when-idle",
                "--poll-s",
                "0.2",
            ]
            load_before = common.load_line()
            started = time.perf_counter()
            logs = [(work_dir / f"worker{index}.log").open("w+b") for index in range(workers)]
            procs = [
                subprocess.Popen(argv, cwd=work_dir, env=env, stdout=subprocess.DEVNULL, stderr=log)
                for log in logs
            ]
            walls, cpu_s, log_texts = [], 0.0, []
            for proc, log in zip(procs, logs, strict=True):
                _, status, usage = os.wait4(proc.pid, 0)
                proc.returncode = os.waitstatus_to_exitcode(status)
                walls.append(time.perf_counter() - started)
                cpu_s += usage.ru_utime + usage.ru_stime
                log.seek(0)
                log_texts.append(log.read().decode("utf-8", "replace"))
                log.close()
                if proc.returncode != 0:
                    raise SystemExit(f"a worker exited {proc.returncode}:\n{log_texts[-1][-2000:]}")
            run_s, counts = run_timing(db_url, batch_id)
    stats = sim.stats()
    label_prompts = [f"scale-out {label} row {i}: a banana, studio light" for i in range(args.rows)]
    once = sum(1 for prompt in label_prompts if stats["prompts"].get(prompt_id(prompt)) == 1)
    if counts != {"done": args.rows} or once != args.rows:
        raise SystemExit(f"{workers} worker(s): jobs {counts}, {once} of {args.rows} prompts requested once")
    held = [sum(1 for line in text.splitlines() if '"job_claimed"' in line) for text in log_texts]
    return {
        "workers": workers,
        "concurrency_per_worker": args.concurrency,
        "rows": args.rows,
        "run_s": round(run_s, 2),
        "rows_per_s": round(args.rows / run_s, 2),
        "ideal_rows_per_s": round(workers * args.concurrency / args.latency, 2),
        "process_wall_s": round(max(walls), 2),
        "worker_cpu_ms_per_row": round(cpu_s * 1000 / args.rows, 1),
        "rows_per_worker": held,
        "simulator_max_in_flight": stats["max_in_flight"],
        "load_before": load_before,
        "load_after": common.load_line(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=480)
    parser.add_argument("--latency", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=16, help="per worker")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--db", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--pg-url", default=common.PG_URL)
    parser.add_argument("--no-derivatives", action="store_true", help="store the original image only")
    parser.add_argument("--not-realistic", action="store_true", help="tiny flat images (smoke runs)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.db == "postgresql" and not common.postgres_reachable(args.pg_url):
        raise SystemExit("no PostgreSQL to measure on: start it, give --pg-url, or use --db sqlite")
    report: dict[str, Any] = {
        "latency_s": args.latency,
        "db": args.db,
        "realistic": not args.not_realistic,
        "runs": [],
    }
    with common.SimulatorProcess(latency_s=args.latency, realistic=not args.not_realistic) as sim:
        report["response_mb"] = round(sim.warm(MODEL, "1:1", "1K") / 1e6, 2)
        for workers in args.workers:
            report["runs"].append(run_workers(args, sim, workers))
    base = report["runs"][0]
    rows = []
    for run in report["runs"]:
        run["speedup"] = round(base["run_s"] / run["run_s"], 2)
        rows.append(
            [
                run["workers"],
                run["concurrency_per_worker"],
                run["rows"],
                run["run_s"],
                run["rows_per_s"],
                run["ideal_rows_per_s"],
                f"{run['speedup']:.2f}x",
                " / ".join(map(str, run["rows_per_worker"])),
                run["simulator_max_in_flight"],
                run["worker_cpu_ms_per_row"],
            ]
        )
    print(
        f"{args.rows} rows of 1K ({report['response_mb']} MB responses), "
        f"upstream latency {args.latency:g} s, job store {args.db}, no caller limits"
    )
    print(report["runs"][0]["load_before"] + "\n")
    print(
        common.markdown_table(
            [
                "workers",
                "concurrency each",
                "rows",
                "run (s)",
                "rows/s",
                "ideal rows/s",
                "speed-up",
                "rows per worker",
                "upstream max in flight",
                "worker CPU per row (ms)",
            ],
            rows,
        )
    )
    print("\n" + report["runs"][-1]["load_after"])
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
