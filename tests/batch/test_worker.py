"""Workers over the work queue, in this process (SQLite, the simulator): the store's any-batch claim,
``BatchEngine.work`` across batches, a stop that lets jobs finish, a cancel that gives them back,
a database outage ridden out with backoff; and ``batch submit`` / ``status --json`` / ``export``
as another machine would use them (``--db`` only, another directory)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time

import pytest
from pydantic import SecretStr
from sqlalchemy.exc import OperationalError
from typer.testing import CliRunner

from bananaline.batch import runner as runner_module
from bananaline.batch.engine import BatchEngine
from bananaline.batch.keys import CallerKey, KeyRing
from bananaline.batch.store import JobStore
from bananaline.cli import app
from bananaline.simulator import prompt_id

from .cli_process import start_bananaline

KEY = "worker-test-key-0001"


def _engine(settings_for, sim, **overrides) -> BatchEngine:
    settings = settings_for(sim, make_compressed=False, **overrides)
    return BatchEngine(settings, keyring=KeyRing({}, default=CallerKey(api_key=SecretStr(KEY))))


def _rows(label: str, count: int) -> list[dict[str, str]]:
    return [{"prompt": f"{label} row {i}: a banana"} for i in range(count)]


def test_store_claims_from_every_unowned_batch_oldest_first(tmp_path, settings_for, fast_sim):
    engine = _engine(settings_for, fast_sim)
    first = engine.create_batch(_rows("first", 2))
    second = engine.create_batch(_rows("second", 2))
    owned = engine.create_batch(_rows("owned", 2), owner="service-caller")
    jobs: JobStore = engine.jobs
    assert jobs.queued_callers(None) == {""}
    assert jobs.open_jobs(None) == 4  # a service caller's batch is not the workers' to run
    claimed = [jobs.claim(None, [""], run_token="w:1:a", lease_s=30) for _ in range(5)]
    assert [(job.batch_id, job.row_index) for job in claimed if job] == [
        (first, 0),
        (first, 1),
        (second, 0),
        (second, 1),
    ]
    assert claimed[4] is None
    assert jobs.job_counts(owned) == {"queued": 2}
    assert jobs.open_jobs(None) == 4  # running jobs are still open: they come back if their runner dies
    assert jobs.recover(None, now=10**12) == 4  # leases long expired
    assert jobs.queued_callers(None) == {""}
    engine.close()


async def test_work_runs_every_batch_once_and_exits_when_idle(tmp_path, settings_for, fast_sim):
    fast_sim.set_latency(0.05)
    engine = _engine(settings_for, fast_sim)
    first, second = engine.create_batch(_rows("a", 6)), engine.create_batch(_rows("b", 5))
    owned = engine.create_batch(_rows("c", 2), owner="someone")
    stats = await asyncio.wait_for(engine.work(concurrency=4, exit_when_idle=True, poll_s=0.05), 60)
    assert stats.jobs_finished == 11 and stats.images == 11
    assert engine.jobs.job_counts(first) == {"done": 6} and engine.jobs.job_counts(second) == {"done": 5}
    assert engine.jobs.job_counts(owned) == {"queued": 2}
    prompts = fast_sim.stats()["prompts"]
    assert all(prompts.get(prompt_id(row["prompt"])) == 1 for row in _rows("a", 6) + _rows("b", 5))
    status = engine.status(first)
    assert all(row.status == "done" and row.images for row in status.rows)
    engine.close()


async def test_idle_worker_picks_up_a_batch_submitted_later_and_stops_on_request(
    tmp_path, settings_for, fast_sim
):
    fast_sim.set_latency(0.05)
    engine = _engine(settings_for, fast_sim)
    stop = asyncio.Event()
    work = asyncio.create_task(engine.work(concurrency=2, stop=stop, poll_s=0.05))
    await asyncio.sleep(0.3)
    assert not work.done()  # an empty queue is no reason to leave
    batch_id = await asyncio.to_thread(engine.create_batch, _rows("late", 4))
    for _ in range(200):
        if engine.jobs.job_counts(batch_id).get("done") == 4:
            break
        await asyncio.sleep(0.05)
    stop.set()
    stats = await asyncio.wait_for(work, 10)
    assert stats.jobs_finished == 4 and engine.jobs.job_counts(batch_id) == {"done": 4}
    engine.close()


async def test_stop_finishes_in_flight_jobs_and_cancel_gives_them_back(tmp_path, settings_for, fast_sim):
    fast_sim.set_latency(0.6)
    engine = _engine(settings_for, fast_sim)
    batch_id = engine.create_batch(_rows("stop", 8))
    stop = asyncio.Event()
    work = asyncio.create_task(engine.work(concurrency=2, stop=stop, poll_s=0.05))
    while engine.jobs.job_counts(batch_id).get("running", 0) < 2:
        await asyncio.sleep(0.02)
    stop.set()  # first signal: no new claims, the two in flight finish
    stats = await asyncio.wait_for(work, 10)
    assert stats.jobs_finished == 2 and stats.interrupted
    assert engine.jobs.job_counts(batch_id) == {"done": 2, "queued": 6}

    work = asyncio.create_task(engine.work(concurrency=2, poll_s=0.05))
    while engine.jobs.job_counts(batch_id).get("running", 0) < 2:
        await asyncio.sleep(0.02)
    work.cancel()  # second signal: the jobs in flight go back to the queue at once
    with pytest.raises(asyncio.CancelledError):
        await work
    assert engine.jobs.job_counts(batch_id) == {"done": 2, "queued": 6}
    engine.close()


async def test_a_lost_database_stops_claims_with_backoff_and_costs_no_row(
    tmp_path, settings_for, fast_sim, monkeypatch
):
    """Claims and recording fail for a while (PostgreSQL restarting): the worker backs off, keeps
    the finished result in memory, records it when the database is back, and runs no row twice."""
    monkeypatch.setattr(runner_module, "DB_BACKOFF_INITIAL_S", 0.02)
    fast_sim.set_latency(0.05)
    engine = _engine(settings_for, fast_sim)
    batch_id = engine.create_batch(_rows("outage", 6))
    real_claim, real_finish = engine.jobs.claim, engine.jobs.finish
    failures = {"claim": 3, "finish": 2}

    def flaky(name, real):
        def call(*args, **kwargs):
            if failures[name] > 0:
                failures[name] -= 1
                raise OperationalError("select 1", {}, ConnectionError("server closed the connection"))
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(engine.jobs, "claim", flaky("claim", real_claim))
    monkeypatch.setattr(engine.jobs, "finish", flaky("finish", real_finish))
    stats = await asyncio.wait_for(engine.work(concurrency=2, exit_when_idle=True, poll_s=0.05), 30)
    assert failures == {"claim": 0, "finish": 0}
    assert stats.jobs_finished == 6 and engine.jobs.job_counts(batch_id) == {"done": 6}
    prompts = fast_sim.stats()["prompts"]
    assert [prompts.get(prompt_id(row["prompt"])) for row in _rows("outage", 6)] == [1] * 6
    engine.close()


def test_submit_then_status_and_export_from_another_directory(tmp_path, monkeypatch):
    """``batch submit`` queues without running (no model is called, no key is needed); any machine
    that reaches the store reads the batch with ``--db`` alone."""
    db_url = f"sqlite:///{tmp_path / 'shared' / 'jobs.db'}"
    sheet = tmp_path / "in.csv"
    sheet.write_text(
        "提示词,size,n\n一只香蕉,1K,1\na banana,2K,2\n,1K,1\n", encoding="utf-8"
    )  # the last row has no prompt: invalid, recorded failed
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["batch", "submit", str(sheet), "--db", db_url, "--col", "prompt=提示词", "--json"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    assert figures["rows"] == 3 and figures["jobs_queued"] == 3 and figures["jobs_invalid"] == 1
    assert figures["estimated_cost_usd"] > 0
    batch_id = figures["batch_id"]

    again = runner.invoke(
        app, ["batch", "submit", str(sheet), "--db", db_url, "--col", "prompt=提示词"], catch_exceptions=False
    )
    assert again.exit_code == 0 and again.stdout.strip() == batch_id  # the same sheet: the same batch

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    status = runner.invoke(
        app, ["batch", "status", batch_id, "--db", db_url, "--json"], catch_exceptions=False
    )
    assert status.exit_code == 0, status.output
    summary = json.loads(status.stdout)
    assert summary["batch_id"] == batch_id
    out = elsewhere / "out.csv"
    export = runner.invoke(
        app, ["batch", "export", batch_id, "--db", db_url, "--out", str(out)], catch_exceptions=False
    )
    assert export.exit_code == 0, export.output
    exported = out.read_text(encoding="utf-8-sig").splitlines()
    assert exported[0].startswith("提示词,size,n,status") and len(exported) == 4

    bad = runner.invoke(app, ["batch", "submit", str(sheet), "--db", db_url, "--col", "prompt=nope"])
    assert bad.exit_code == 2


def test_worker_process_first_signal_finishes_second_gives_back(tmp_path, settings_for, fast_sim):
    """``bananaline worker`` itself: SIGTERM stops claiming; a second SIGTERM while jobs are in
    flight cancels them, returns their leases to the queue and exits 130."""
    fast_sim.set_latency(2.0)
    engine = _engine(settings_for, fast_sim)
    batch_id = engine.create_batch(_rows("signals", 6))
    log = tmp_path / "worker.log"
    with log.open("wb") as stderr:
        worker = start_bananaline(
            tmp_path,
            fast_sim,
            *("worker", "--concurrency", "3"),
            db_url=engine.db_url,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            api_key=KEY,
        )
        try:
            deadline = time.monotonic() + 60
            while engine.jobs.job_counts(batch_id).get("running", 0) < 3:
                assert worker.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
            worker.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=30) == 130
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    assert engine.jobs.job_counts(batch_id) == {"queued": 6}  # nothing left running under a dead lease
    events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert [e["event"] for e in events if e["event"].startswith("worker_")] == [
        "worker_started",
        "worker_stopping",
        "worker_stopping",
        "worker_stopped",
    ]
    assert events[-1]["aborted"] is True
    claimed = [e for e in events if e["event"] == "job_claimed"]
    assert len(claimed) == 3 and {e["worker"] for e in claimed} == {events[0]["worker"]}
    engine.close()


class _Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict]] = []

    def warning(self, event: str, **fields) -> None:
        self.events.append(("warning", event, fields))

    def error(self, event: str, **fields) -> None:
        self.events.append(("error", event, fields))


def test_a_worker_started_before_its_database_waits_with_backoff(monkeypatch):
    """Patient (a long-running worker): retries 0.5 s, 1 s, … until the database answers."""
    from bananaline.batch import worker_cli
    from bananaline.config import Settings

    attempts: list[float] = []

    def engine(settings, keyring, *, lease_s):
        attempts.append(lease_s)
        if len(attempts) < 3:
            raise OperationalError("connect", {}, ConnectionError("connection refused"))
        return "the engine"

    sleeps: list[float] = []
    monkeypatch.setattr(worker_cli, "_engine", engine)
    monkeypatch.setattr(worker_cli.time, "sleep", sleeps.append)
    log = _Log()
    settings = Settings(db_url="postgresql+psycopg://u:pw-not-shown@127.0.0.1:1/x")
    got = worker_cli._connect(settings, KeyRing({}), lease_s=30, patient=True, log=log)
    assert got == "the engine" and attempts == [30, 30, 30] and sleeps == [0.5, 1.0]
    assert [(level, event) for level, event, _ in log.events] == [("warning", "worker_db_unavailable")] * 2
    assert all("pw-not-shown" not in fields["db"] for _, _, fields in log.events)


def test_an_exit_when_idle_worker_gives_up_on_an_absent_database_at_once():
    """``--exit-when-idle`` (scripts): the real connection error, exit 1, no wait."""
    import typer

    from bananaline.batch import worker_cli
    from bananaline.config import Settings

    log = _Log()
    settings = Settings(db_url="postgresql+psycopg://u:pw-not-shown@127.0.0.1:1/x")
    started = time.monotonic()
    with pytest.raises(typer.Exit) as stopped:
        worker_cli._connect(settings, KeyRing({}), lease_s=30, patient=False, log=log)
    assert stopped.value.exit_code == worker_cli.EXIT_DB_UNAVAILABLE == 1
    assert time.monotonic() - started < 30
    [(level, event, fields)] = log.events
    assert (level, event) == ("error", "worker_db_unavailable") and "pw-not-shown" not in fields["db"]
