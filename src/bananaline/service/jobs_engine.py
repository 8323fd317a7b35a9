"""The batch engine as the service runs it: owned by callers, paid by the caller's key.

Every batch submitted over HTTP is owned by the calling caller (its id is part of the batch id,
so two callers submitting the same sheet get two batches). A sheet's ``caller`` column is ignored
for keys: the authenticated caller's upstream key, concurrency and rpm pay for every row. Rows may
not reference server paths (``allow_local_refs=False``). Runs are asyncio tasks owned by the app;
the cost of what each run made is added to the caller's usage when it ends.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ..batch import BatchEngine, CallerKey, KeyRing
from ..catalog import MODELS
from ..logs import get_logger
from .auth import Caller
from .usage import UsageRecord

if TYPE_CHECKING:
    from .deps import AppState

log = get_logger("bananaline.service.jobs")


def build_batch_engine(state: AppState) -> BatchEngine:
    """The shared engine for reads (list, status, export, retry, cancel)."""
    return BatchEngine(state.settings, store=state.store)


def _keyring(state: AppState, caller: Caller) -> KeyRing:
    key = caller.upstream_key or state.settings.api_key
    entry = CallerKey(
        api_key=key, concurrency=caller.concurrency, rpm=float(caller.rpm) if caller.rpm else None
    )
    return KeyRing({}, default=entry, fallback_to_default=True)


def _cost_so_far(state: AppState, batch_id: str, owner: str) -> tuple[float, int]:
    assert state.batches is not None
    rows = state.batches.status(batch_id, owner=owner).rows
    return sum(row.cost_usd or 0.0 for row in rows), sum(len(row.images) for row in rows)


def pending_estimate_usd(state: AppState, batch_id: str, owner: str) -> float:
    """What the rows still queued would cost at catalog prices (unknown models at the dearest)."""
    assert state.batches is not None
    dearest = max(float(p) for spec in MODELS.values() for p in spec.price_usd.values())
    total = 0.0
    for row in state.batches.status(batch_id, owner=owner).rows:
        if row.status not in {"queued", "running"}:
            continue
        model = row.cells.get("model") or state.settings.model
        spec = MODELS.get(model)
        size = row.cells.get("size") or None
        price = float(spec.price_for(size or spec.default_size)) if spec else dearest
        total += price
    return total


def start_run(state: AppState, caller: Caller, batch_id: str, *, reserved_usd: float = 0.0) -> bool:
    """Start running the batch unless it already runs in this process. Returns whether it started."""
    runs = state.batch_runs if state.batch_runs is not None else {}
    current = runs.get(batch_id)
    if current is not None and not current.done():
        state.limiter.release_budget(caller.id, reserved_usd)
        return False
    engine = BatchEngine(state.settings, store=state.store, keyring=_keyring(state, caller))

    async def run() -> None:
        before_usd, before_images = await asyncio.to_thread(_cost_so_far, state, batch_id, caller.id)
        try:
            summary = await engine.run(batch_id, concurrency=caller.concurrency)
            log.info("batch_run_done", batch_id=batch_id, caller=caller.name, rows=summary.rows_by_status)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a crashed run must still be accounted and logged
            log.error("batch_run_failed", batch_id=batch_id, error=type(exc).__name__)
        finally:
            await asyncio.shield(
                _account(state, engine, caller, batch_id, before_usd, before_images, reserved_usd)
            )

    task = asyncio.create_task(run(), name=f"bananaline-batch-{batch_id}")
    runs[batch_id] = task
    task.add_done_callback(lambda _: runs.pop(batch_id, None) if runs.get(batch_id) is task else None)
    return True


async def _account(
    state: AppState,
    engine: BatchEngine,
    caller: Caller,
    batch_id: str,
    before_usd: float,
    before_images: int,
    reserved_usd: float,
) -> None:
    try:
        after_usd, after_images = await asyncio.to_thread(_cost_so_far, state, batch_id, caller.id)
        record = UsageRecord(
            caller_id=caller.id,
            source="batch",
            model="batch",
            image_size=None,
            ok=True,
            error_kind=None,
            images=max(0, after_images - before_images),
            cost_usd=max(0.0, after_usd - before_usd),
            elapsed_s=0.0,
            own_key=False,
            task_id=batch_id[:40],
        )
        await asyncio.to_thread(state.usage.record, record)
        state.metrics.images.labels(caller=caller.name).inc(record.images)
        state.metrics.cost.labels(caller=caller.name).inc(record.cost_usd)
    finally:
        state.limiter.release_budget(caller.id, reserved_usd)
        await asyncio.to_thread(engine.close)


def describe(info: Any) -> dict[str, Any]:
    return info.to_dict()  # type: ignore[no-any-return]
