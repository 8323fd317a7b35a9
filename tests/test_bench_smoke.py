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
