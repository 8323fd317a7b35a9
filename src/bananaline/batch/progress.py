"""Progress of a run, as numbers (for the service and tests) and as a Rich progress bar (CLI)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


@dataclass
class ProgressSnapshot:
    """Jobs (row × variant) by state; ``elapsed_s`` and the ``*_this_run`` figures cover this run."""

    total: int = 0
    done: int = 0
    failed: int = 0
    cancelled: int = 0
    queued: int = 0
    in_flight: int = 0
    images: int = 0
    spent_usd: float = 0.0
    finished_this_run: int = 0
    elapsed_s: float = 0.0

    @classmethod
    def from_counts(cls, counts: dict[str, int], *, spent_usd: float, images: int) -> ProgressSnapshot:
        return cls(
            total=sum(counts.values()),
            done=counts.get("done", 0),
            failed=counts.get("failed", 0),
            cancelled=counts.get("cancelled", 0),
            queued=counts.get("queued", 0) + counts.get("running", 0),
            images=images,
            spent_usd=spent_usd,
        )

    def record(self, ok: bool, *, images: int, cost_usd: float) -> None:
        if ok:
            self.done += 1
        else:
            self.failed += 1
        self.images += images
        self.spent_usd += cost_usd
        self.finished_this_run += 1

    @property
    def finished(self) -> int:
        return self.done + self.failed + self.cancelled

    @property
    def rate_per_s(self) -> float:
        return self.finished_this_run / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rate_per_s": self.rate_per_s}


class ProgressBar:
    """done/failed/in-flight, rate, ETA and money spent, on stderr."""

    def __init__(self, console: Console | None = None) -> None:
        self._progress = Progress(
            TextColumn("[bold]batch"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "[green]✓{task.fields[done]}[/] [red]✗{task.fields[failed]}[/] "
                "[cyan]⇄{task.fields[in_flight]}[/]"
            ),
            TextColumn("{task.fields[rate]:.2f}/s"),
            TimeRemainingColumn(),
            TextColumn("${task.fields[spent]:.3f}"),
            console=console or Console(stderr=True),
            transient=False,
        )
        self._task_id: Any = None

    def __enter__(self) -> ProgressBar:
        self._progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._progress.stop()

    def update(self, snapshot: ProgressSnapshot) -> None:
        fields: dict[str, Any] = {
            "done": snapshot.done,
            "failed": snapshot.failed,
            "in_flight": snapshot.in_flight,
            "rate": snapshot.rate_per_s,
            "spent": snapshot.spent_usd,
        }
        if self._task_id is None:
            self._task_id = self._progress.add_task(
                "batch", total=snapshot.total, completed=snapshot.finished, **fields
            )
            return
        self._progress.update(self._task_id, completed=snapshot.finished, total=snapshot.total, **fields)
