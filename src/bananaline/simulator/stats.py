"""Request counters: per key (by a short hash, never the key), per prompt, per fault, per path.

In-flight counts run from the arrival of a request to the end of its response, so a test can
assert that a client never had more than N calls open on one key.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from typing import Any

ANONYMOUS = "-"


def key_id(key: str) -> str:
    """A short stable identifier of an API key: the first 12 hex digits of its SHA-256."""
    if not key:
        return ANONYMOUS
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]


def prompt_id(prompt: str) -> str:
    """The identifier of a prompt in :meth:`Stats.snapshot` ``prompts``: its SHA-256 hex digest."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


class Stats:
    """Thread-safe counters; :meth:`snapshot` is what ``GET /_sim/stats`` returns."""

    _requests_total: int
    _in_flight: int
    _max_in_flight: int

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clear()

    def reset(self) -> None:
        """Zero every counter; requests still in flight stay counted as in flight."""
        with self._lock:
            in_flight = self._in_flight
            keys = {kid: e["in_flight"] for kid, e in self._keys.items() if e["in_flight"]}
            self._clear()
            self._in_flight = self._max_in_flight = in_flight
            for kid, count in keys.items():
                self._keys[kid] = {"requests": 0, "in_flight": count, "max_in_flight": count}

    def _clear(self) -> None:
        self._requests_total = 0
        self._in_flight = 0
        self._max_in_flight = 0
        self._keys: dict[str, dict[str, int]] = {}
        self._by_path: Counter[str] = Counter()
        self._by_status: Counter[str] = Counter()
        self._by_fault: Counter[str] = Counter()
        self._by_model: Counter[str] = Counter()
        self._by_protocol: Counter[str] = Counter()
        self._prompts: Counter[str] = Counter()
        self._last_call: dict[str, Any] | None = None

    def begin(self, kid: str, path: str, counted: bool) -> None:
        """A request arrived. ``counted`` is False for control and file routes."""
        with self._lock:
            self._by_path[path] += 1
            if not counted:
                return
            self._requests_total += 1
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            entry = self._keys.setdefault(kid, {"requests": 0, "in_flight": 0, "max_in_flight": 0})
            entry["requests"] += 1
            entry["in_flight"] += 1
            entry["max_in_flight"] = max(entry["max_in_flight"], entry["in_flight"])

    def end(self, kid: str, counted: bool, status: int | None) -> None:
        with self._lock:
            if status is not None:
                self._by_status[str(status)] += 1
            if not counted:
                return
            self._in_flight -= 1
            entry = self._keys.get(kid)
            if entry is not None:
                entry["in_flight"] -= 1

    def call(
        self, protocol: str, model: str, prompt: str, fault: str | None, details: dict[str, Any] | None = None
    ) -> None:
        """The request was parsed: count it by prompt, model and fault served. ``details`` (what the
        references and image options looked like) is kept for the last call, for tests to check."""
        with self._lock:
            self._last_call = {
                "protocol": protocol,
                "model": model,
                "prompt_id": prompt_id(prompt),
                **(details or {}),
            }
            self._prompts[prompt_id(prompt)] += 1
            self._by_model[model] += 1
            self._by_protocol[protocol] += 1
            if fault is not None:
                self._by_fault[fault] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests_total": self._requests_total,
                "in_flight": self._in_flight,
                "max_in_flight": self._max_in_flight,
                "keys": {kid: dict(entry) for kid, entry in self._keys.items()},
                "by_path": dict(self._by_path),
                "by_status": dict(self._by_status),
                "by_fault": dict(self._by_fault),
                "by_model": dict(self._by_model),
                "by_protocol": dict(self._by_protocol),
                "prompts": dict(self._prompts),
                "last_call": self._last_call,
            }
