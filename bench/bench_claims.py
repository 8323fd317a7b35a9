"""How many jobs per second the job store can hand out, and how many database round trips a row costs.

Two measurements, on SQLite (a file next to the script's temp dir) and on PostgreSQL (a fresh
schema on ``--pg-url``, dropped afterwards; skipped with a note if unreachable):

* **claims/s**: a batch of ``--jobs`` queued jobs (plus ``--history`` finished ones, as a store in
  use has) is drained by P claimer processes at once, each looping ``JobStore.claim`` (the any-batch
  claim a ``bananaline worker`` makes: ``FOR UPDATE SKIP LOCKED`` on PostgreSQL) then
  ``JobStore.finish`` with a tiny outcome. No upstream, no storage: the store's own ceiling.
  Reported as jobs/s over the drain (every job claimed and finished exactly once is checked);
* **round trips per row**: ``BatchEngine.work`` runs ``--rows`` rows against the simulator (no
  latency, tiny images) and every SQL statement and transaction on the job store's engine is
  counted (claims, results, heartbeats, and on PostgreSQL the shared gate ledger: limit slots and
  rpm starts), once for a caller without limits and once for one with ``concurrency`` and ``rpm``.

    python bench/bench_claims.py [--jobs 3000] [--history 20000] [--claimers 1 4 16] [--rows 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import _common as common

PLAN = {"prompt": "bench claim", "model": "gemini-2.5-flash-image", "references": []}


# --- claimer child ------------------------------------------------------------------------------


def claimer_main(args: argparse.Namespace) -> None:
    from bananaline.batch.store import JobOutcome, JobStore, new_run_token

    jobs = JobStore(args.db, migrate=False)
    token = new_run_token()
    outcome = JobOutcome(ok=True, attempts=1, latency_s=0.0)
    with jobs.engine.connect():
        pass  # open a pooled connection before the start line
    while time.time() < args.start_at:
        time.sleep(0.001)
    claimed: list[int] = []
    while True:
        job = jobs.claim(None, [""], run_token=token, lease_s=300)
        if job is None:
            break
        if not jobs.finish(job.job_id, job.lease_id, outcome):
            raise SystemExit(f"lost the lease of job {job.job_id}")
        claimed.append(job.job_id)
    ended_at = time.time()
    jobs.close()
    common.emit({"claimed": claimed, "ended_at": ended_at})


# --- parent -------------------------------------------------------------------------------------


def seed(db_url: str, jobs: int, history: int) -> None:
    """One finished batch of ``history`` jobs (the past) and one of ``jobs`` queued ones."""
    from sqlalchemy import update

    from bananaline.batch.models import DONE, JobRecord
    from bananaline.batch.store import JobStore, NewRow

    store = JobStore(db_url)
    row = NewRow(cells={"prompt": "x"}, caller="", n=1, plan=PLAN, plan_error=None)
    if history:
        store.create_batch(
            "history", name=None, owner=None, header=["prompt"], columns_json="{}", rows=[row] * history
        )
        with store.engine.begin() as conn:
            conn.execute(update(JobRecord).where(JobRecord.batch_id == "history").values(status=DONE))
    store.create_batch(
        "queued", name=None, owner=None, header=["prompt"], columns_json="{}", rows=[row] * jobs
    )
    store.close()


def drain(db_url: str, claimers: int, expected: int) -> dict[str, Any]:
    start_at = time.time() + 1.5 + 0.15 * claimers  # every child is up and connected by then
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--child", "--db", db_url, "--start-at", repr(start_at)],
            cwd=common.BENCH_DIR,
            env=common.child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(claimers)
    ]
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise SystemExit(f"claimer failed:\n{err.decode()[-2000:]}")
        reports.append(json.loads(out.decode().strip().splitlines()[-1]))
    ids = [job_id for report in reports for job_id in report["claimed"]]
    if len(ids) != expected or len(set(ids)) != expected:
        raise SystemExit(f"{len(ids)} claims of {expected} jobs ({len(set(ids))} distinct)")
    elapsed_s = max(report["ended_at"] for report in reports) - start_at
    return {
        "claimers": claimers,
        "jobs": expected,
        "elapsed_s": round(elapsed_s, 3),
        "jobs_per_s": round(expected / elapsed_s, 1),
        "per_claimer": [len(report["claimed"]) for report in reports],
    }


async def count_round_trips(db_url: str, base_url: str, rows: int, keys_toml: str, work_dir: Path) -> dict:
    """Statements and transactions per row of ``BatchEngine.work`` on this store."""
    from sqlalchemy import event

    from bananaline.batch.engine import BatchEngine
    from bananaline.batch.keys import KeyRing
    from bananaline.config import Settings
    from bananaline.logs import configure_logging

    configure_logging(level=logging.WARNING)  # a worker logs every job: not what is measured here

    keys = work_dir / f"keys-{uuid.uuid4().hex[:6]}.toml"
    keys.write_text(keys_toml, encoding="utf-8")
    settings = Settings(
        db_url=db_url,
        base_url=base_url,
        api_key=common.API_KEY,
        store_url=f"file://{work_dir / 'images'}",
        spool_dir=work_dir / "spool",
        make_compressed=False,
        make_thumbnail=False,
    )
    engine = BatchEngine(settings, keyring=KeyRing.from_toml(keys))
    engine.create_batch(
        [{"prompt": f"round trip row {i} {uuid.uuid4().hex}", "caller": "alice"} for i in range(rows)]
    )
    counts = {"statements": 0, "transactions": 0}

    def on_statement(*_: Any) -> None:
        counts["statements"] += 1

    def on_commit(*_: Any) -> None:
        counts["transactions"] += 1

    event.listen(engine.jobs.engine, "before_cursor_execute", on_statement)
    event.listen(engine.jobs.engine, "commit", on_commit)
    started = time.perf_counter()
    stats = await engine.work(concurrency=16, exit_when_idle=True, poll_s=0.2)
    elapsed_s = time.perf_counter() - started
    engine.close()
    if stats.jobs_finished != rows:
        raise SystemExit(f"round trips: {stats.jobs_finished} of {rows} rows finished")
    return {
        "rows": rows,
        "shared_limits": settings.shares_limits,
        "statements_per_row": round(counts["statements"] / rows, 1),
        "transactions_per_row": round(counts["transactions"] / rows, 1),
        "elapsed_s": round(elapsed_s, 2),
    }


LIMITLESS = '[callers.alice]\napi_key = "bench-key-not-secret"\n'
LIMITED = '[callers.alice]\napi_key = "bench-key-not-secret"\nconcurrency = 8\nrpm = 100000\n'


def measure_backend(backend: str, args: argparse.Namespace, sim: common.SimulatorProcess) -> dict:
    figures: dict[str, Any] = {"drains": [], "round_trips": {}}
    for claimers in args.claimers:
        with common.job_store_url(backend, args.pg_url, "bench-claims") as url:
            seed(url, args.jobs, args.history)
            figures["drains"].append(drain(url, claimers, args.jobs))
    for label, keys_toml in (("no caller limits", LIMITLESS), ("concurrency + rpm", LIMITED)):
        with (
            common.job_store_url(backend, args.pg_url, "bench-claims") as url,
            tempfile.TemporaryDirectory(prefix="bench-claims-") as tmp,
        ):
            sim.reset()
            figures["round_trips"][label] = asyncio.run(
                count_round_trips(url, sim.base_url, args.rows, keys_toml, Path(tmp))
            )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=3000, help="queued jobs drained per measurement")
    parser.add_argument("--history", type=int, default=20000, help="finished jobs already in the store")
    parser.add_argument("--claimers", type=int, nargs="+", default=[1, 4, 16], help="claimer processes")
    parser.add_argument("--rows", type=int, default=200, help="rows of the round-trip count")
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument("--pg-url", default=common.PG_URL)
    parser.add_argument("--json", action="store_true", help="also print every figure as JSON")
    parser.add_argument("--not-realistic", action="store_true", help="accepted for symmetry (always tiny)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        claimer_main(args)
        return
    report: dict[str, Any] = {
        "jobs": args.jobs,
        "history": args.history,
        "load_before": common.load_line(),
        "backends": {},
    }
    with common.SimulatorProcess(latency_s=0.0, realistic=False) as sim:
        for backend in args.backends:
            if backend == "postgresql" and not common.postgres_reachable(args.pg_url):
                continue
            report["backends"][backend] = measure_backend(backend, args, sim)
    report["load_after"] = common.load_line()
    print_report(report)
    if args.json:
        print(json.dumps(report))


def print_report(report: dict[str, Any]) -> None:
    print(f"job store claims: {report['jobs']} queued jobs behind {report['history']} finished ones")
    print(f"{report['load_before']}\n")
    rows = []
    for backend, figures in report["backends"].items():
        for drain_figures in figures["drains"]:
            rows.append(
                [
                    backend,
                    drain_figures["claimers"],
                    drain_figures["jobs_per_s"],
                    f"{1000 / drain_figures['jobs_per_s'] * drain_figures['claimers']:.2f}",
                ]
            )
    print(
        common.markdown_table(
            ["store", "claimer processes", "jobs/s (claim + finish)", "ms per job per claimer"], rows
        )
    )
    print()
    rows = []
    for backend, figures in report["backends"].items():
        for label, trips in figures["round_trips"].items():
            rows.append(
                [
                    backend,
                    label,
                    "yes" if trips["shared_limits"] else "no",
                    trips["statements_per_row"],
                    trips["transactions_per_row"],
                ]
            )
    print(
        common.markdown_table(
            ["store", "caller", "shared limits", "SQL statements per row", "transactions per row"], rows
        )
    )
    print(f"\n{report['load_after']}")


if __name__ == "__main__":
    main()
