"""Background generations that outlive the HTTP request that started them.

Workflow platforms cut calls at about 180 s while a 4K image can take longer. The plugin
endpoint therefore starts the generation as an asyncio task owned by the app, waits for it up
to ``plugin_wait_s`` and otherwise answers ``running`` with the task id. The task finishes
either way and persists its answer, so ``GET /v1/tasks/{id}`` works from any worker.

A task whose process stopped before it finished (shutdown) is recorded as failed, never left
``running`` forever by a clean stop.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, insert, select, update

from ..logs import get_logger
from . import tables

#: Produces the task's final answer (a JSON-able dict with a ``status`` of done/failed).
TaskWork = Callable[[str], Awaitable[dict[str, Any]]]

log = get_logger("bananaline.service.tasks")


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


class TaskRegistry:
    def __init__(self, engine: Engine, instance_id: str) -> None:
        self._engine = engine
        self._instance_id = instance_id
        self._running: dict[str, asyncio.Task[dict[str, Any]]] = {}

    @property
    def in_flight(self) -> int:
        return len(self._running)

    async def submit(
        self,
        *,
        owner: str | None,
        kind: str,
        request_summary: dict[str, Any],
        work: TaskWork,
        interrupted: dict[str, Any],
    ) -> str:
        """Persist a ``running`` task and start ``work`` in the background; ``interrupted`` is the
        answer recorded if the service stops first."""
        task_id = "task_" + secrets.token_urlsafe(18)
        await asyncio.to_thread(self._insert, task_id, owner, kind, request_summary)
        task = asyncio.create_task(self._run(task_id, work, interrupted), name=f"bananaline-{task_id}")
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
        return await asyncio.to_thread(self._select, task_id)

    async def shutdown(self, grace_s: float = 5.0) -> None:
        """Give running tasks ``grace_s`` to finish, then cancel them (they record ``interrupted``)."""
        pending = set(self._running.values())
        if pending:
            _, still = await asyncio.wait(pending, timeout=grace_s)
            for task in still:
                task.cancel()
            if still:
                await asyncio.wait(still, timeout=grace_s)

    async def _run(self, task_id: str, work: TaskWork, interrupted: dict[str, Any]) -> dict[str, Any]:
        try:
            answer = await work(task_id)
        except asyncio.CancelledError:
            await asyncio.shield(asyncio.to_thread(self._finish, task_id, interrupted))
            raise
        except Exception:
            log.exception("task_crashed", task_id=task_id)
            answer = dict(interrupted)
        await asyncio.to_thread(self._finish, task_id, answer)
        return answer

    def _insert(self, task_id: str, owner: str | None, kind: str, request_summary: dict[str, Any]) -> None:
        with self._engine.begin() as conn:
            conn.execute(
                insert(tables.tasks).values(
                    id=task_id,
                    owner=owner,
                    kind=kind,
                    status="running",
                    request_json=json.dumps(request_summary, ensure_ascii=False),
                    instance_id=self._instance_id,
                    created_at=time.time(),
                )
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
                )
            )

    def _select(self, task_id: str) -> TaskRecord | None:
        with self._engine.connect() as conn:
            row = conn.execute(select(tables.tasks).where(tables.tasks.c.id == task_id)).first()
        if row is None:
            return None
        return TaskRecord(
            id=row.id,
            owner=row.owner,
            kind=row.kind,
            status=row.status,
            request=json.loads(row.request_json),
            response=json.loads(row.response_json) if row.response_json else None,
            created_at=row.created_at,
            finished_at=row.finished_at,
        )
