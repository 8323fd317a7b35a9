"""``--dry-run``: check every row as far as possible without calling a model, and price the batch.

Each row is planned (columns, template, merged prompt), validated against the catalog, its
references are loaded for real (reachable, really images, through the SSRF guard), and its
caller's key is looked up. The estimate is the catalog price × ``n`` per row, by caller.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from ..config import Settings
from ..errors import ErrorKind, GenerationError
from ..references import load_references
from .columns import ColumnConfig, RowPlanner
from .engine import admit_row
from .keys import KeyRing
from .template import in_render_pool


@dataclass
class DryRunRow:
    row_index: int
    caller: str
    n: int
    ok: bool
    error_kind: str | None = None
    error: str | None = None
    cost_usd: float | None = None


@dataclass
class DryRunReport:
    rows: list[DryRunRow]
    cost_by_caller: dict[str, float] = field(default_factory=dict)
    images_by_caller: dict[str, int] = field(default_factory=dict)

    @property
    def total_cost_usd(self) -> float:
        return round(sum(self.cost_by_caller.values()), 6)

    @property
    def invalid_rows(self) -> list[DryRunRow]:
        return [row for row in self.rows if not row.ok]


async def dry_run(
    rows: list[dict[str, str]],
    *,
    columns: ColumnConfig,
    settings: Settings,
    keyring: KeyRing,
    base_dir: Path | None = None,
    concurrency: int = 8,
) -> DryRunReport:
    planner = RowPlanner(columns, default_model=settings.model, base_dir=base_dir)
    await in_render_pool(planner.prerender, rows)  # one pass, off the event loop
    gate = asyncio.Semaphore(concurrency)
    loaded: dict[str, asyncio.Task[None]] = {}

    async with httpx.AsyncClient(follow_redirects=False, trust_env=False) as http:

        async def load_one(ref: str) -> None:
            async with gate:
                await load_references([ref], settings=settings, client=http)

        async def check_refs(refs: tuple[str, ...]) -> None:
            for ref in refs:  # each distinct reference is loaded once, however many rows use it
                if ref not in loaded:
                    loaded[ref] = asyncio.ensure_future(load_one(ref))
            for ref in refs:
                await asyncio.shield(loaded[ref])

        async def check(index: int, cells: dict[str, str]) -> DryRunRow:
            plan = planner.plan(cells)
            row = DryRunRow(index, plan.caller, plan.n, ok=False)
            try:
                if plan.error is not None:
                    raise plan.error
                admitted = admit_row(plan, remote=False)
                if keyring.key_for(plan.caller) is None:
                    message, message_zh = keyring.explain_missing(plan.caller)
                    raise GenerationError(ErrorKind.NO_API_KEY, message=message, message_zh=message_zh)
                await check_refs(plan.references)
            except GenerationError as error:
                row.error_kind, row.error = error.kind.value, error.message
                return row
            row.ok = True
            row.cost_usd = admitted.reserve_usd
            return row

        checked = await asyncio.gather(*(check(i, cells) for i, cells in enumerate(rows)))
        for task in loaded.values():
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: a failure was already reported on its rows
    report = DryRunReport(list(checked))
    for row in report.rows:
        if row.ok:
            name = row.caller or "(default)"
            report.cost_by_caller[name] = round(
                report.cost_by_caller.get(name, 0.0) + (row.cost_usd or 0.0), 6
            )
            report.images_by_caller[name] = report.images_by_caller.get(name, 0) + row.n
    return report
