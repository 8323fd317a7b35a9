"""The benchmark scripts run end to end with tiny parameters (not a timed test: no figure is
asserted, only that every row was done, through the simulator, by the sides that were asked for)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"


def run_bench(script: str, *args: str) -> tuple[str, dict]:
    completed = subprocess.run(
        [sys.executable, str(BENCH_DIR / script), *args, "--not-realistic", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=BENCH_DIR,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    text = completed.stdout
    table, _, rest = text.partition("\n{")
    return table, json.loads("{" + rest)


def test_single_4k_compares_both_clients() -> None:
    table, figures = run_bench("bench_4k_single.py", "--repeat", "1")
    assert "| bananaline |" in table and "| google-genai |" in table
    assert figures["simulator_requests"] == 2
    for client in ("bananaline", "google-genai"):
        data = figures["clients"][client]
        assert data["peak_rss_mb"] > data["rss_after_import_mb"] > 0
        assert data["connected"] and all(host.startswith("127.0.0.1:") for host in data["connected"])


def test_batch_throughput_runs_every_row_on_both_sides() -> None:
    table, figures = run_bench(
        "bench_batch_throughput.py", "--rows", "12", "--latency", "0.3", "--concurrency", "4"
    )
    assert "of ideal" in table
    for side in ("bananaline", "google-genai"):
        data = figures["sides"][side]
        assert data["rows_done"] == 12, data
        assert data["simulator_requests"] == 12
        assert data["simulator_max_in_flight"] == 4
        assert data["peak_rss_mb"] > 0


def test_batch_4k_rss_reports_the_engine() -> None:
    table, figures = run_bench(
        "bench_batch_4k_rss.py", "--rows", "3", "--concurrency", "3", "--latency", "0.5"
    )
    assert "< 1000 MB" in table
    data = figures["sides"]["bananaline"]
    assert data["rows_done"] == 3
    assert data["simulator_max_in_flight"] == 3


def test_claims_drains_every_job_once_and_counts_round_trips() -> None:
    table, figures = run_bench(
        "bench_claims.py",
        *("--backends", "sqlite", "--jobs", "40", "--history", "10", "--claimers", "1", "2", "--rows", "6"),
    )
    assert "| jobs/s (claim + finish) |" in table and "| SQL statements per row |" in table
    sqlite = figures["backends"]["sqlite"]
    assert [(d["claimers"], sum(d["per_claimer"])) for d in sqlite["drains"]] == [(1, 40), (2, 40)]
    for trips in sqlite["round_trips"].values():
        assert trips["rows"] == 6 and trips["statements_per_row"] > 0 and trips["transactions_per_row"] > 0


def test_workers_share_one_batch_and_print_the_speed_up() -> None:
    table, figures = run_bench(
        "bench_workers.py",
        *("--db", "sqlite", "--rows", "8", "--latency", "0.2", "--concurrency", "2", "--workers", "1", "2"),
    )
    assert "| speed-up |" in table and "| ideal rows/s |" in table
    assert [run["workers"] for run in figures["runs"]] == [1, 2]
    for run in figures["runs"]:
        assert sum(run["rows_per_worker"]) == 8 and run["simulator_max_in_flight"] <= 2 * run["workers"]
