"""Background generations that outlive the HTTP request that started them.

Workflow platforms cut calls at about 180 s while a 4K image can take longer. The plugin
endpoint therefore starts the generation as an asyncio task owned by the app, waits for it up
to ``plugin_wait_s`` and otherwise answers ``running`` with the task id. The task finishes
either way and persists its answer, so ``GET /v1/tasks/{id}`` works from any worker.

No task stays ``running`` forever. Every task row names the process running it (an
:mod:`instances` id) and holds a lease that process renews. A task ends ``interrupted`` (the
answer its kind gives for a detail) on one path, whoever notices first:

* a clean stop cancels what did not finish within the grace period (``service_stopped``);
* any process starting, every heartbeat, and every read of a running task sweep tasks whose
  process is certainly gone from this machine or whose lease ran out (``service_restarted``).

A live worker's tasks are never swept while it renews their lease. If a stalled worker does
finish a task after it was swept, its real answer replaces the interrupted one: the image exists
and was paid for.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, insert, or_, select, update

from ..instances import LIVE_INSTANCES, known_gone, new_instance_id
from ..logs import get_logger
from . import tables

#: Produces the task's final answer (a JSON-able dict with a ``status`` of done/failed).
TaskWork = Callable[[str], Awaitable[dict[str, Any]]]
#: The answer a task kind records when it cannot finish, given why (``service_stopped``, …).
InterruptedAnswer = Callable[[str], dict[str, Any]]

DEFAULT_LEASE_S = 60.0
STOPPED, RESTARTED, CRASHED = "service_stopped", "service_restarted", "task_crashed"

log = get_logger("bananaline.service.tasks")


def generic_interrupted(detail: str) -> dict[str, Any]:
    """For a kind that registered no answer of its own."""
    return {"status": "failed", "error_kind": "internal", "error_detail": detail}


@dataclass(frozen=True)
class TaskRecord:
    id: str
    owner: str | None
    kind: str
    status: str
    request: dict[str, Any]
    response: dict[str, Any] | None
    created_at: float
    finished_at: float | None
    instance_id: str = ""
    lease_expires_at: float | None = None

    def orphaned(self, now: float) -> bool:
        """Running, but its process is gone or stopped renewing the lease."""
        if self.status != "running":
            return False
        lease_over = self.lease_expires_at is None or self.lease_expires_at < now
        return lease_over or known_gone(self.instance_id)


class TaskRegistry:
    def __init__(
        self,
        engine: Engine,
        *,
        instance_id: str | None = None,
        interrupted: Mapping[str, InterruptedAnswer] | None = None,
        lease_s: float = DEFAULT_LEASE_S,
    ) -> None:
        self._engine = engine
        self.instance_id = instance_id or new_instance_id()
        self._interrupted = dict(interrupted or {})
        self.lease_s = lease_s
        self._running: dict[str, asyncio.Task[dict[str, Any]]] = {}
        self._heartbeat: asyncio.Task[None] | None = None

    @property
    def in_flight(self) -> int:
        return len(self._running)

    async def start(self) -> int:
        """Mark this process alive, interrupt the orphans left by dead ones, start renewing leases.
        Returns how many orphans were interrupted."""
        LIVE_INSTANCES.add(self.instance_id)
        swept = await asyncio.to_thread(self.sweep)
        if swept:
            log.warning("tasks_interrupted_on_start", count=len(swept), instance=self.instance_id)
        self._heartbeat = asyncio.create_task(self._beat(), name="bananaline-task-heartbeat")
        return len(swept)

    async def submit(
        self,
        *,
        owner: str | None,
        kind: str,
        request_summary: dict[str, Any],
        work: TaskWork,
    ) -> str:
        """Persist a ``running`` task and start ``work`` in the background."""
        task_id = "task_" + secrets.token_urlsafe(18)
        await asyncio.to_thread(self._insert, task_id, owner, kind, request_summary)
        task = asyncio.create_task(self._run(task_id, kind, work), name=f"bananaline-{task_id}")
        self._running[task_id] = task
        task.add_done_callback(lambda _: self._running.pop(task_id, None))
        return task_id

    async def wait(self, task_id: str, timeout_s: float) -> dict[str, Any] | None:
        """The task's answer if it finishes within ``timeout_s``; the task keeps running otherwise."""
        task = self._running.get(task_id)
        if task is None:
            record = await self.get(task_id)
            return record.response if record else None
        done, _ = await asyncio.wait({task}, timeout=max(0.0, timeout_s))
        return task.result() if done else None

    async def get(self, task_id: str) -> TaskRecord | None:
        """The task as stored; a running one whose process is gone is interrupted first."""
        record = await asyncio.to_thread(self._select, task_id)
        if record is not None and task_id not in self._running and record.orphaned(time.time()):
            await asyncio.to_thread(self.sweep, [record])
            record = await asyncio.to_thread(self._select, task_id)
        return record

    async def shutdown(self, grace_s: float = 5.0) -> None:
        """Give running tasks ``grace_s`` to finish, then cancel them (they record ``interrupted``)."""
        pending = set(self._running.values())
        if pending:
            _, still = await asyncio.wait(pending, timeout=grace_s)
            for task in still:
                task.cancel()
            if still:
                await asyncio.wait(still, timeout=grace_s)
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.wait({self._heartbeat}, timeout=grace_s)
        LIVE_INSTANCES.discard(self.instance_id)

    def sweep(self, candidates: list[TaskRecord] | None = None, *, now: float | None = None) -> list[str]:
        """Interrupt orphaned running tasks (all of them, or among ``candidates``); their ids."""
        now = time.time() if now is None else now
        if candidates is None:
            with self._engine.connect() as conn:
                rows = conn.execute(
                    select(tables.tasks).where(
                        tables.tasks.c.status == "running", tables.tasks.c.instance_id != self.instance_id
                    )
                ).all()
            candidates = [_record(row) for row in rows]
        swept = []
        for record in candidates:
            if not record.orphaned(now):
                continue
            # a gone process cannot renew; otherwise the lease must still be over when we write
            lease_over_at = None if known_gone(record.instance_id) else now
            if self._record_interrupted(record.id, record.kind, RESTARTED, lease_over_at=lease_over_at):
                swept.append(record.id)
        return swept

    async def _beat(self) -> None:
        """Renew this process's leases and sweep orphans, every third of a lease."""
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                if self._running:
                    await asyncio.to_thread(self._renew)
                swept = await asyncio.to_thread(self.sweep)
                if swept:
                    log.warning("tasks_interrupted", count=len(swept), instance=self.instance_id)
            except Exception as exc:  # noqa: BLE001 - a database hiccup must not end the heartbeat
                log.warning("task_heartbeat_failed", error=type(exc).__name__)

    async def _run(self, task_id: str, kind: str, work: TaskWork) -> dict[str, Any]:
        try:
            answer = await work(task_id)
        except asyncio.CancelledError:
            await asyncio.shield(asyncio.to_thread(self._record_interrupted, task_id, kind, STOPPED))
            raise
        except Exception:
            log.exception("task_crashed", task_id=task_id)
            answer = self._interrupted_answer(kind, CRASHED)
        await asyncio.to_thread(self._finish, task_id, answer)
        return answer

    def _interrupted_answer(self, kind: str, detail: str) -> dict[str, Any]:
        return self._interrupted.get(kind, generic_interrupted)(detail)

    def _insert(self, task_id: str, owner: str | None, kind: str, request_summary: dict[str, Any]) -> None:
        now = time.time()
        with self._engine.begin() as conn:
            conn.execute(
                insert(tables.tasks).values(
                    id=task_id,
                    owner=owner,
                    kind=kind,
                    status="running",
                    request_json=json.dumps(request_summary, ensure_ascii=False),
                    instance_id=self.instance_id,
                    created_at=now,
                    lease_expires_at=now + self.lease_s,
                )
            )

    def _renew(self) -> None:
        with self._engine.begin() as conn:
            conn.execute(
                update(tables.tasks)
                .where(tables.tasks.c.instance_id == self.instance_id, tables.tasks.c.status == "running")
                .values(lease_expires_at=time.time() + self.lease_s)
            )

    def _finish(self, task_id: str, answer: dict[str, Any]) -> None:
        with self._engine.begin() as conn:
            conn.execute(
                update(tables.tasks)
                .where(tables.tasks.c.id == task_id)
                .values(
                    status=str(answer.get("status", "failed")),
                    response_json=json.dumps(answer, ensure_ascii=False),
                    finished_at=time.time(),
                    lease_expires_at=None,
                )
            )

    def _record_interrupted(
        self, task_id: str, kind: str, detail: str, *, lease_over_at: float | None = None
    ) -> bool:
        """The one way a task becomes ``interrupted``: only while it is still running and, when
        ``lease_over_at`` is given, only if its owner has not renewed the lease past that time."""
        t = tables.tasks
        answer = self._interrupted_answer(kind, detail)
        conditions = [t.c.id == task_id, t.c.status == "running"]
        if lease_over_at is not None:
            conditions.append(or_(t.c.lease_expires_at.is_(None), t.c.lease_expires_at < lease_over_at))
        with self._engine.begin() as conn:
            changed = conn.execute(
                update(t)
                .where(*conditions)
                .values(
                    status=str(answer.get("status", "failed")),
                    response_json=json.dumps(answer, ensure_ascii=False),
                    finished_at=time.time(),
                    lease_expires_at=None,
                )
            ).rowcount
        if changed:
            log.warning("task_interrupted", task_id=task_id, kind=kind, detail=detail)
        return bool(changed)

    def _select(self, task_id: str) -> TaskRecord | None:
        with self._engine.connect() as conn:
            row = conn.execute(select(tables.tasks).where(tables.tasks.c.id == task_id)).first()
        return None if row is None else _record(row)


def _record(row: Any) -> TaskRecord:
    return TaskRecord(
        id=row.id,
        owner=row.owner,
        kind=row.kind,
        status=row.status,
        request=json.loads(row.request_json),
        response=json.loads(row.response_json) if row.response_json else None,
        created_at=row.created_at,
        finished_at=row.finished_at,
        instance_id=row.instance_id,
        lease_expires_at=row.lease_expires_at,
    )
