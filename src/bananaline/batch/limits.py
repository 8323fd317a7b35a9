"""Per-caller limits: a concurrency cap that backs off on 429s (AIMD) and a requests-per-minute bucket.

The dispatcher asks each caller's limiter :meth:`CallerLimiter.ready_in_s` before claiming a job
for it, so a caller at its limit never holds a global slot while it waits and never blocks
another caller's rows. When a caller is rate limited its effective concurrency halves (at most
once per cool-down) and it pauses for the upstream's ``Retry-After``; every success then adds
back ``1/effective``, i.e. one slot per round of successes, until the configured cap is reached.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

Clock = Callable[[], float]


class TokenBucket:
    """``rate_per_minute`` requests, spaced evenly (capacity 1): never a burst above the limit."""

    def __init__(
        self, rate_per_minute: float, *, capacity: float = 1.0, clock: Clock = time.monotonic
    ) -> None:
        if rate_per_minute <= 0:
            raise ValueError("rate_per_minute must be positive")
        self.rate_per_s = rate_per_minute / 60.0
        self.capacity = capacity
        self._clock = clock
        self._tokens = capacity
        self._updated = clock()

    def _refill(self, now: float) -> None:
        self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate_per_s)
        self._updated = now

    def ready_in_s(self) -> float:
        now = self._clock()
        self._refill(now)
        if self._tokens >= 1.0:
            return 0.0
        return (1.0 - self._tokens) / self.rate_per_s

    def take(self) -> None:
        self._refill(self._clock())
        self._tokens -= 1.0


class CallerLimiter:
    """One caller's gate. Not thread-safe: the dispatcher runs on one event loop."""

    def __init__(
        self,
        name: str,
        *,
        concurrency: int | None,
        rpm: float | None,
        ceiling: int,
        default_pause_s: float = 1.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self.name = name
        self.max_concurrency = max(1, min(concurrency or ceiling, ceiling))
        self.effective = float(self.max_concurrency)
        self.in_flight = 0
        self.paused_until = 0.0
        self.rate_limited_count = 0
        self._last_cut = -math.inf
        self._default_pause_s = default_pause_s
        self._clock = clock
        self.bucket = TokenBucket(rpm, clock=clock) if rpm else None

    @property
    def slots(self) -> int:
        return max(1, int(self.effective))

    def ready_in_s(self) -> float:
        """0 when a request may start now; ``inf`` when only a finishing request can free a slot."""
        if self.in_flight >= self.slots:
            return math.inf
        wait = max(0.0, self.paused_until - self._clock())
        if self.bucket is not None:
            wait = max(wait, self.bucket.ready_in_s())
        return wait

    def acquire(self) -> None:
        self.in_flight += 1
        if self.bucket is not None:
            self.bucket.take()

    def release(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)

    def on_success(self) -> None:
        if self.effective < self.max_concurrency:
            self.effective = min(float(self.max_concurrency), self.effective + 1.0 / self.effective)

    def on_rate_limited(self, retry_after_s: float | None = None) -> None:
        """Multiplicative decrease, once per cool-down (a burst of 429s is one signal), and a pause."""
        now = self._clock()
        self.rate_limited_count += 1
        pause_s = retry_after_s if retry_after_s and retry_after_s > 0 else self._default_pause_s
        if now - self._last_cut >= max(pause_s, self._default_pause_s):
            self.effective = max(1.0, self.effective / 2.0)
            self._last_cut = now
        self.paused_until = max(self.paused_until, now + pause_s)


class Limiters:
    """The limiters of one run: one per caller, all under the global ``--concurrency`` ceiling."""

    def __init__(
        self,
        ceiling: int,
        limits_for: Callable[[str], tuple[int | None, float | None]],
        *,
        clock: Clock = time.monotonic,
    ) -> None:
        self.ceiling = ceiling
        self._limits_for = limits_for
        self._clock = clock
        self._by_caller: dict[str, CallerLimiter] = {}

    def __getitem__(self, caller: str) -> CallerLimiter:
        limiter = self._by_caller.get(caller)
        if limiter is None:
            concurrency, rpm = self._limits_for(caller)
            limiter = CallerLimiter(
                caller, concurrency=concurrency, rpm=rpm, ceiling=self.ceiling, clock=self._clock
            )
            self._by_caller[caller] = limiter
        return limiter

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._by_caller.values())
