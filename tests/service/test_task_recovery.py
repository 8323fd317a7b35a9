"""No plugin task stays ``running`` forever: kill -9, restarts, clean stops, other workers, leases.

The servers here are real ``bananaline serve`` subprocesses (so ``kill -9`` kills a real process)
or in-thread apps, all on one SQLite file; the simulator holds a generation open with
``[sim latency=30]`` so a task is certainly running when its server dies.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import insert, select

from bananaline.db import make_engine, upgrade
from bananaline.service import tables
from bananaline.simulator import free_port

from .conftest import SECRET_KEY, RunningService, service_settings

SLOW = "a banana that takes its time [sim latency=30]"


class ServeProcess:
    """``python -m bananaline serve`` on a free loopback port."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bananaline", "serve", "--port", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.base_url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{self.base_url}/healthz", trust_env=False).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert self.process.poll() is None, "serve exited during start-up"
            assert time.monotonic() < deadline, "serve did not come up"
            time.sleep(0.05)

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
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@pytest.fixture
def serve_env(tmp_path: Path, simulator: Any) -> dict[str, str]:
    return {
        **os.environ,
        "BANANALINE_DB_URL": f"sqlite:///{tmp_path / 'tasks.db'}",
        "BANANALINE_STORE_URL": f"file://{tmp_path / 'images'}",
        "BANANALINE_SPOOL_DIR": str(tmp_path / "spool"),
        "BANANALINE_SECRET_KEY": SECRET_KEY,
        "BANANALINE_BASE_URL": simulator.base_url,
        "BANANALINE_PLUGIN_WAIT_S": "0.3",
        "BANANALINE_MAX_ATTEMPTS": "1",
    }


@pytest.fixture
def servers() -> Iterator[list[ServeProcess]]:
    started: list[ServeProcess] = []
    yield started
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


def test_kill_9_then_restart_interrupts_orphans_but_never_a_live_workers_task(sim, serve_env, servers):
    db_url = serve_env["BANANALINE_DB_URL"]
    first = ServeProcess(serve_env)
    servers.append(first)
    read_on_start, read_lazily = first.post_slow("own-key-recovery-1"), first.post_slow("own-key-recovery-2")

    # a second worker starting on the same database leaves the live worker's tasks alone
    other_worker = ServeProcess(serve_env)
    servers.append(other_worker)
    assert other_worker.get_task(read_on_start)["status"] == "running"
    assert _status_in_db(db_url, read_on_start) == _status_in_db(db_url, read_lazily) == "running"

    first.kill()
    # the surviving worker sees the dead process's task as interrupted when it is read ...
    _assert_interrupted(other_worker.get_task(read_lazily), read_lazily, "service_restarted")
    assert _status_in_db(db_url, read_on_start) == "running"  # ... and only that one: nobody read it yet

    # ... and a restarted server interrupts every orphan during start-up, before anyone asks
    restarted = ServeProcess(serve_env)
    servers.append(restarted)
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
