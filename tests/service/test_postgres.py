"""The service's key flows on PostgreSQL: callers, plugin generate and poll, usage, isolation,
orphaned-task sweep, and no secret in plain text anywhere in the schema.

Each run gets a fresh schema (``search_path`` in the URL) that is dropped afterwards. Without a
server at 127.0.0.1:5432 the module skips, unless ``TEST_REQUIRE_POSTGRES=1`` (CI), where it fails.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select, text
from typer.testing import CliRunner

from bananaline.cli import app as cli_app
from bananaline.db import make_engine, upgrade
from bananaline.service import tables
from pg_support import fresh_postgres_schema

from .conftest import SECRET_KEY, RunningService, service_settings
from .helpers import poll_task, upstream_requests
from .test_batches_api import wait_complete

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def pg_schema() -> Iterator[tuple[str, str]]:
    """(db_url, schema): a fresh schema on the local server, dropped at the end."""
    with fresh_postgres_schema("bl_service") as schema:
        yield schema


@pytest.fixture(scope="module")
def pg_service(
    pg_schema: tuple[str, str], simulator: Any, service_log: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningService]:
    root = tmp_path_factory.mktemp("service-pg")
    settings = service_settings(root, simulator.base_url, db_url=pg_schema[0], plugin_wait_s=0.5)
    running = RunningService(settings).start()
    yield running
    running.stop()


def _finished(http: Any, answer: dict[str, Any]) -> dict[str, Any]:
    """The plugin's answer, polled to the end if the 0.5 s wait ran out first."""
    return answer if answer["status"] != "running" else poll_task(http, answer["task_id"])


def _add_caller_with_the_cli(db_url: str, name: str, upstream_key: str, monkeypatch: Any) -> str:
    monkeypatch.setenv("BANANALINE_SECRET_KEY", SECRET_KEY)
    monkeypatch.setenv("PG_TEST_UPSTREAM_KEY", upstream_key)
    result = CliRunner().invoke(
        cli_app, ["callers", "add", name, "--api-key-env", "PG_TEST_UPSTREAM_KEY", "--db", db_url]
    )
    assert result.exit_code == 0, result.output
    return result.stdout.strip().splitlines()[-1]


def test_callers_generate_poll_usage_and_isolation_on_postgres(pg_service, pg_schema, sim, monkeypatch):
    db_url, schema = pg_schema
    key_a = f"PG-UPSTREAM-A-{time.time_ns()}"
    own_key = f"PG-OWN-APIKEY-{time.time_ns()}"
    token_a = _add_caller_with_the_cli(db_url, "pg-team-a", key_a, monkeypatch)
    token_b = pg_service.add_caller(upstream_key=f"PG-UPSTREAM-B-{time.time_ns()}")

    with pg_service.client(token_a) as a:
        quick = a.post("/v1/plugin/generate", json={"cleantext": "a postgres banana", "aspect_ratio": "1:1"})
        assert quick.status_code == 200, quick.text
        done = _finished(a, quick.json())
        assert done["status"] == "done" and done["analysis"] == "图片生成成功"
        assert a.get(done["url"]).status_code == 200

        slow = a.post("/v1/plugin/generate", json={"cleantext": "a slow postgres banana [sim latency=1.5]"})
        assert slow.json()["status"] == "running"
        polled = poll_task(a, slow.json()["task_id"])
        assert polled["status"] == "done" and polled["task_id"] == slow.json()["task_id"]

        own = a.post("/v1/plugin/generate", json={"cleantext": "paid by my key", "apikey": own_key})
        assert _finished(a, own.json())["status"] == "done"

        batch_id = a.post("/v1/batches", json={"rows": [{"prompt": "a pg batch banana"}]}).json()["batch_id"]
        assert wait_complete(a, batch_id)["rows"][0]["status"] == "done"

        usage = a.get("/v1/usage").json()
        assert usage["caller"] == "pg-team-a"
        assert usage["requests"] == 4 and usage["succeeded"] == 4 and usage["images"] == 4
        assert len(a.get("/v1/files").json()["files"]) == 3  # batch images are listed with their batch
    assert upstream_requests(sim, key_a) == 3 and upstream_requests(sim, own_key) == 1

    with pg_service.client(token_b) as b:
        stolen = b.get(f"/v1/tasks/{done['task_id']}")
        unknown = b.get("/v1/tasks/task_unknownunknownunknown0")
        assert stolen.status_code == unknown.status_code == 404 and stolen.json() == unknown.json()
        assert b.get(f"/v1/batches/{batch_id}").status_code == 404
        assert b.get("/v1/batches").json()["batches"] == []
        assert b.get("/v1/files").json()["files"] == []
        assert b.get("/v1/usage").json()["requests"] == 0

    # no secret in plain text anywhere in the schema: every row of every table, as text
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            table_names = (
                conn.execute(
                    text("select table_name from information_schema.tables where table_schema = :s"),
                    {"s": schema},
                )
                .scalars()
                .all()
            )
            assert {"service_callers", "service_tokens", "service_tasks", "batch_jobs"} <= set(table_names)
            dump = "\n".join(
                str(row[0])
                for name in table_names
                for row in conn.execute(text(f'select t::text from "{schema}"."{name}" t'))
            )
            ciphertexts = conn.execute(select(tables.callers.c.upstream_key_enc)).scalars().all()
    finally:
        engine.dispose()
    assert "a postgres banana" in dump  # the dump really holds the rows
    for secret in (token_a, token_b, token_a.removeprefix("bl_"), key_a, own_key):
        assert secret not in dump, f"{secret[:8]}… stored in plain text"
    assert len(ciphertexts) == 2 and all(value.startswith("gAAAA") for value in ciphertexts)


def test_start_up_sweeps_orphaned_tasks_on_postgres(pg_schema, simulator, tmp_path):
    db_url, _ = pg_schema
    upgrade(db_url)
    now = time.time()
    engine = make_engine(db_url)
    with engine.begin() as conn:
        for task_id, lease in (("task_pg_orphan", now - 5), ("task_pg_live_elsewhere", now + 600)):
            conn.execute(
                insert(tables.tasks).values(
                    id=task_id,
                    owner=None,
                    kind="plugin",
                    status="running",
                    request_json=json.dumps({"prompt": "elsewhere"}),
                    instance_id="0badc0de:4242:bbbbbbbbbbbb",
                    created_at=now - 60,
                    lease_expires_at=lease,
                )
            )
    engine.dispose()
    running = RunningService(service_settings(tmp_path, simulator.base_url, db_url=db_url)).start()
    try:
        with running.client() as http:
            orphan = http.get("/v1/tasks/task_pg_orphan").json()
            assert orphan["status"] == "failed" and orphan["error_kind"] == "internal"
            assert "(service_restarted)" in orphan["error"]
            assert http.get("/v1/tasks/task_pg_live_elsewhere").json()["status"] == "running"
    finally:
        running.stop()
