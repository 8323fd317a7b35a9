"""``kill -9`` mid-run, then the same command again: every row done exactly once.

The run is a real ``bananaline batch run`` subprocess against the simulator in this process
(latency 0.3 s). After SIGKILL, the jobs the database shows ``running`` are the ones that may be
generated twice; every other prompt must reach the upstream exactly once.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from bananaline.batch.models import ImageRecord, JobRecord
from bananaline.db.base import make_engine
from bananaline.simulator import prompt_id
from pg_support import fresh_postgres_schema

from .cli_process import job_counts, start_bananaline

ROWS = 40


def _run_cli(tmp_path: Path, sim, db_url: str) -> subprocess.Popen[bytes]:
    """``bananaline batch run in.csv`` with its images in ``tmp_path / "store"``."""
    return start_bananaline(
        tmp_path,
        sim,
        *("batch", "run", "in.csv", "--concurrency", "8", "--no-progress"),
        db_url=db_url,
        api_key="kill-test-key-0001",
    )


def _counts(db_url: str) -> dict[str, int]:
    try:
        return job_counts(db_url)
    except Exception:  # noqa: BLE001 - the tables may not exist yet
        return {}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'jobs.db'}"
        return
    with fresh_postgres_schema("bl_kill") as (url, _schema):
        yield url


def test_sigkill_mid_run_then_resume_finishes_every_row_exactly_once(fast_sim, tmp_path, db_url):
    fast_sim.set_latency(0.3)
    prompts = [f"kill test row {i}: a banana" for i in range(ROWS)]
    (tmp_path / "in.csv").write_text("prompt,n\n" + "".join(f"{p},1\n" for p in prompts), encoding="utf-8")
    store_dir = tmp_path / "store"

    started = time.monotonic()
    first = _run_cli(tmp_path, fast_sim, db_url)
    deadline = time.monotonic() + 60
    while _counts(db_url).get("done", 0) < 10:
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline, "the first run made no progress"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    at_kill = _counts(db_url)
    assert at_kill.get("done", 0) < ROWS, "killed too late to test anything"

    engine = make_engine(db_url)
    with engine.connect() as conn:
        running_rows = set(
            conn.execute(select(JobRecord.row_index).where(JobRecord.status == "running")).scalars()
        )

    second = _run_cli(tmp_path, fast_sim, db_url)
    out, err = second.communicate(timeout=120)
    elapsed_s = time.monotonic() - started
    assert second.returncode == 0, err.decode()
    print(
        f"\nkill test ({db_url.split(':')[0]}): {at_kill} at kill, {len(running_rows)} in flight, "
        f"both runs {elapsed_s:.1f}s"
    )

    assert _counts(db_url) == {"done": ROWS}
    per_prompt = fast_sim.stats()["prompts"]
    for index, prompt in enumerate(prompts):
        allowed = 2 if index in running_rows else 1
        assert 1 <= per_prompt.get(prompt_id(prompt), 0) <= allowed, (
            index,
            per_prompt.get(prompt_id(prompt)),
        )
    with engine.connect() as conn:
        images = conn.execute(select(ImageRecord.job_id, ImageRecord.sha256)).all()
    engine.dispose()
    assert len(images) == ROWS and len({job for job, _ in images}) == ROWS
    stored = [p for p in store_dir.rglob("*.png")]
    assert sorted(p.stem for p in stored) == sorted({sha for _, sha in images})
    output = (tmp_path / "in.out.csv").read_text(encoding="utf-8-sig")
    assert output.count(",done,") == ROWS


def test_ctrl_c_stops_claiming_lets_in_flight_finish_and_the_next_run_resumes(fast_sim, tmp_path):
    fast_sim.set_latency(0.3)
    db_url = f"sqlite:///{tmp_path / 'jobs.db'}"
    (tmp_path / "in.csv").write_text(
        "prompt\n" + "".join(f"ctrl-c row {i}\n" for i in range(ROWS)), encoding="utf-8"
    )
    first = _run_cli(tmp_path, fast_sim, db_url)
    deadline = time.monotonic() + 60
    while _counts(db_url).get("done", 0) < 5:
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    first.send_signal(signal.SIGINT)
    out, err = first.communicate(timeout=30)
    assert first.returncode == 130, err.decode()
    assert b"resume" in out
    stopped = _counts(db_url)
    assert "running" not in stopped and 5 <= stopped["done"] < ROWS and stopped["queued"] > 0
    calls = fast_sim.stats()["requests_total"]
    assert calls == stopped["done"]  # nothing in flight was abandoned

    second = _run_cli(tmp_path, fast_sim, db_url)
    _, err = second.communicate(timeout=120)
    assert second.returncode == 0, err.decode()
    assert _counts(db_url) == {"done": ROWS}
    assert fast_sim.stats()["requests_total"] == ROWS
