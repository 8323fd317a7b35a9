"""Everything one simulator instance remembers, shared by its routes and its controller."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any

from .config import OPENAI_STYLES, SimulatorConfig
from .faults import FaultBook
from .images import ImageCache, Payload
from .stats import Stats


class FileRegistry:
    """Images served at ``/files/{id}.{ext}`` for the OpenAI ``url`` style (bounded, LRU)."""

    def __init__(self, capacity: int = 512) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._files: OrderedDict[str, tuple[bytes, str]] = OrderedDict()

    def add(self, payload: Payload, declared_mime: str | None = None) -> str:
        file_id = uuid.uuid4().hex
        with self._lock:
            self._files[file_id] = (payload.data, declared_mime or payload.mime)
            while len(self._files) > self.capacity:
                self._files.popitem(last=False)
        return file_id

    def get(self, file_id: str) -> tuple[bytes, str] | None:
        with self._lock:
            return self._files.get(file_id)

    def clear(self) -> None:
        with self._lock:
            self._files.clear()


@dataclass
class SimulatorState:
    config: SimulatorConfig
    images: ImageCache
    faults: FaultBook = field(default_factory=FaultBook)
    stats: Stats = field(default_factory=Stats)
    files: FileRegistry = field(default_factory=FileRegistry)
    #: Set when the server shuts down: wakes every ``hang`` and latency sleep at once.
    stopping: asyncio.Event | None = None
    loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def create(cls, config: SimulatorConfig) -> SimulatorState:
        return cls(config=replace(config), images=ImageCache(config.cache_budget_bytes))

    def reset(self) -> None:
        """Forget counters, queued faults and ``times`` counts (cached images stay)."""
        self.stats.reset()
        self.faults.clear()
        self.files.clear()

    def update_config(self, changes: dict[str, Any]) -> SimulatorConfig:
        """Apply ``POST /_sim/config`` changes; raises ValueError on a bad field or value."""
        allowed = {
            "latency_s",
            "valid_keys",
            "image_format",
            "realistic",
            "default_openai_style",
            "palette_size",
            "hang_s",
        }
        unknown = set(changes) - allowed
        if unknown:
            raise ValueError(f"unknown config fields: {', '.join(sorted(unknown))}")
        values = dict(changes)
        if "latency_s" in values:
            values["latency_s"] = float(values["latency_s"])
        if "hang_s" in values:
            values["hang_s"] = float(values["hang_s"])
        if "valid_keys" in values and values["valid_keys"] is not None:
            values["valid_keys"] = set(values["valid_keys"])
        if values.get("image_format", "png") not in ("png", "jpeg"):
            raise ValueError("image_format must be png or jpeg")
        if values.get("default_openai_style", "markdown") not in OPENAI_STYLES:
            raise ValueError(f"default_openai_style must be one of {', '.join(OPENAI_STYLES)}")
        self.config = replace(self.config, **values)
        return self.config

    def stop_waiters(self) -> None:
        if self.loop is not None and self.stopping is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.stopping.set)
