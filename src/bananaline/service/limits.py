"""Per-caller admission: requests per minute, concurrent generations, and budget reservations.

The limits live in this process. With several uvicorn workers each worker enforces them on its
own share, so an operator divides the numbers by the worker count (README says so). Budget is
checked against the database (what has been spent everywhere) plus what this process has in
flight, so concurrent requests cannot all squeeze under the same remaining budget.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ..errors import ErrorKind, GenerationError


class CallerLimiter:
    def __init__(self) -> None:
        self._semaphores: dict[str, tuple[int, asyncio.Semaphore]] = {}
        self._windows: dict[str, deque[float]] = defaultdict(deque)
        self._reserved_usd: dict[str, float] = defaultdict(float)

    def take_rpm(self, caller_id: str, rpm: int | None) -> None:
        """Count one request, or refuse it with ``rate_limited`` and a Retry-After."""
        if not rpm:
            return
        now = time.monotonic()
        window = self._windows[caller_id]
        while window and now - window[0] >= 60.0:
            window.popleft()
        if len(window) >= rpm:
            retry_after_s = max(1.0, 60.0 - (now - window[0]))
            raise GenerationError(
                ErrorKind.RATE_LIMITED,
                detail="caller_rpm",
                message=f"this caller is limited to {rpm} requests per minute; retry in {retry_after_s:.0f}s",
                message_zh=f"该调用方每分钟最多 {rpm} 次请求，请 {retry_after_s:.0f} 秒后重试",
                retry_after_s=retry_after_s,
                request_sent=False,
            )
        window.append(now)

    def reserve_budget(
        self, caller_id: str, budget_usd: float | None, spent_usd: float, estimate_usd: float
    ) -> float:
        """Reserve ``estimate_usd`` or refuse with ``budget_exceeded``; returns the amount reserved."""
        if budget_usd is None:
            return 0.0
        committed = spent_usd + self._reserved_usd[caller_id]
        if committed + estimate_usd > budget_usd + 1e-9:
            raise GenerationError(
                ErrorKind.BUDGET_EXCEEDED,
                detail=f"spent {committed:.4f} of {budget_usd:.4f} USD; "
                f"this request needs about {estimate_usd:.4f}",
                request_sent=False,
            )
        self._reserved_usd[caller_id] += estimate_usd
        return estimate_usd

    def release_budget(self, caller_id: str, amount_usd: float) -> None:
        if amount_usd:
            self._reserved_usd[caller_id] = max(0.0, self._reserved_usd[caller_id] - amount_usd)

    @asynccontextmanager
    async def slot(self, caller_id: str, concurrency: int) -> AsyncIterator[None]:
        """Wait for one of the caller's ``concurrency`` generation slots."""
        limit = max(1, concurrency)
        current = self._semaphores.get(caller_id)
        if current is None or current[0] != limit:
            current = (limit, asyncio.Semaphore(limit))
            self._semaphores[caller_id] = current
        async with current[1]:
            yield
