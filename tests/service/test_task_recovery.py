"""No plugin task stays ``running`` forever: kill -9, restarts, clean stops, other workers, leases.

The servers here are real ``bananaline serve`` subprocesses (so ``kill -9`` kills a real process)
or in-thread apps, all on one SQLite file; the simulator holds a generation open with
``[sim latency=30]`` so a task is certainly running when its server dies.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import insert, select

from bananaline.db import make_engine, upgrade
from bananaline.service import tables

from .conftest import RunningService, service_settings
from .serve_process import ServeProcess

SLOW = "a banana that takes its time [sim latency=30]"


class RecoveryServer(ServeProcess):
    """A server on the test's one SQLite file, asked for a generation that stays running."""

    def post_slow(self, apikey: str) -> str:
        response = httpx.post(
            f"{self.base_url}/v1/plugin/generate",
            json={"cleantext": SLOW, "apikey": apikey},
            timeout=30,
            trust_env=False,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["status"] == "running"
        return str(body["task_id"])

    def get_task(self, task_id: str) -> dict[str, Any]:
        response = httpx.get(f"{self.base_url}/v1/tasks/{task_id}", timeout=30, trust_env=False)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)


@pytest.fixture
def start_server(tmp_path: Path, simulator: Any) -> Iterator[Callable[[], RecoveryServer]]:
    """Starts ``bananaline serve`` processes that share one database, store and spool; stops them
    all at the end."""
    started: list[RecoveryServer] = []

    def start() -> RecoveryServer:
        server = RecoveryServer(
            tmp_path / f"serve{len(started)}",
            simulator.base_url,
            db_url=f"sqlite:///{tmp_path / 'tasks.db'}",
            store_url=f"file://{tmp_path / 'images'}",
            spool_dir=str(tmp_path / "spool"),
            plugin_wait_s="0.3",
        )
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


def _status_in_db(db_url: str, task_id: str) -> str:
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            query = select(tables.tasks.c.status).where(tables.tasks.c.id == task_id)
            return str(conn.execute(query).scalar())
    finally:
        engine.dispose()


def _assert_interrupted(answer: dict[str, Any], task_id: str, detail: str) -> None:
    assert answer["status"] == "failed"
    assert answer["analysis"] == "图片生成失败"
    assert answer["error_kind"] == "internal"
    assert f"({detail})" in answer["error"]
    assert answer["task_id"] == task_id and answer["url"] == "" and answer["urls"] == []


def test_kill_9_then_restart_interrupts_orphans_but_never_a_live_workers_task(sim, start_server):
    first = start_server()
    db_url = first.db_url
    read_on_start, read_lazily = first.post_slow("own-key-recovery-1"), first.post_slow("own-key-recovery-2")

    # a second worker starting on the same database leaves the live worker's tasks alone
    other_worker = start_server()
    assert other_worker.get_task(read_on_start)["status"] == "running"
    assert _status_in_db(db_url, read_on_start) == _status_in_db(db_url, read_lazily) == "running"

    first.kill()
    # the surviving worker sees the dead process's task as interrupted when it is read ...
    _assert_interrupted(other_worker.get_task(read_lazily), read_lazily, "service_restarted")
    assert _status_in_db(db_url, read_on_start) == "running"  # ... and only that one: nobody read it yet

    # ... and a restarted server interrupts every orphan during start-up, before anyone asks
    restarted = start_server()
    assert _status_in_db(db_url, read_on_start) == "failed"
    answer = restarted.get_task(read_on_start)
    _assert_interrupted(answer, read_on_start, "service_restarted")
    assert other_worker.get_task(read_on_start) == answer


def test_a_clean_stop_interrupts_through_the_same_answer(sim, tmp_path, simulator):
    settings = service_settings(tmp_path, simulator.base_url, plugin_wait_s=0.2)
    first = RunningService(settings).start()
    with first.client() as http:
        task_id = http.post("/v1/plugin/generate", json={"cleantext": SLOW, "apikey": "own-key-stop"}).json()[
            "task_id"
        ]
    first.stop()  # waits the 5 s grace, then cancels the generation
    again = RunningService(settings).start()
    try:
        with again.client() as http:
            _assert_interrupted(http.get(f"/v1/tasks/{task_id}").json(), task_id, "service_stopped")
    finally:
        again.stop()


def test_start_up_sweeps_expired_leases_of_other_machines_and_keeps_live_ones(sim, tmp_path, simulator):
    """Another host's process cannot be checked by PID: only its lease tells. Rows written as that
    host would have written them, then a server starts on the database."""
    settings = service_settings(tmp_path, simulator.base_url)
    upgrade(settings.db_url)
    now = time.time()
    rows = {
        "task_expired_lease_elsewhere": now - 1,
        "task_live_lease_elsewhere": now + 600,
        "task_written_before_leases": None,
    }
    engine = make_engine(settings.db_url)
    with engine.begin() as conn:
        for task_id, lease in rows.items():
            conn.execute(
                insert(tables.tasks).values(
                    id=task_id,
                    owner=None,
                    kind="plugin",
                    status="running",
                    request_json=json.dumps({"prompt": "elsewhere"}),
                    instance_id="0badc0de:4242:aaaaaaaaaaaa",  # not this machine's tag
                    created_at=now - 120,
                    lease_expires_at=lease,
                )
            )
    engine.dispose()
    running = RunningService(settings).start()
    try:
        assert _status_in_db(settings.db_url, "task_expired_lease_elsewhere") == "failed"
        assert _status_in_db(settings.db_url, "task_written_before_leases") == "failed"
        assert _status_in_db(settings.db_url, "task_live_lease_elsewhere") == "running"
        with running.client() as http:
            answer = http.get("/v1/tasks/task_expired_lease_elsewhere").json()
            _assert_interrupted(answer, "task_expired_lease_elsewhere", "service_restarted")
            assert http.get("/v1/tasks/task_live_lease_elsewhere").json()["status"] == "running"
    finally:
        running.stop()
