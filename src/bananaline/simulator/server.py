"""Running the simulator: blocking (:func:`run`, the CLI) or in a background thread
(:class:`SimulatorServer`, for tests and benchmarks)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from types import TracebackType
from typing import Any

import uvicorn

from .app import create_app, queued_fault_from
from .config import SimulatorConfig
from .faults import QueuedFault
from .state import SimulatorState
from .wire import install_log_filter


def run(
    host: str = "127.0.0.1", port: int = 8765, config: SimulatorConfig | None = None, log_level: str = "info"
) -> None:
    """Serve the simulator until interrupted (``bananaline fake-upstream``)."""
    install_log_filter()
    app = create_app(config or SimulatorConfig())
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=2, ws="none")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class SimulatorServer:
    """The simulator on a free loopback port, in a background thread.

    Example::

        with SimulatorServer(SimulatorConfig(latency_s=0.1)) as sim:
            httpx.post(f"{sim.base_url}/v1/chat/completions", ...)
            assert sim.stats()["requests_total"] == 1

    ``async with`` works too. Counters, faults and latency are changed directly (no HTTP).
    """

    def __init__(
        self,
        config: SimulatorConfig | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        startup_timeout_s: float = 10.0,
    ) -> None:
        self.state = SimulatorState.create(config or SimulatorConfig())
        self.host = host
        self.port = port or 0
        self.startup_timeout_s = startup_timeout_s
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def config(self) -> SimulatorConfig:
        return self.state.config

    def start(self) -> SimulatorServer:
        install_log_filter()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = int(sock.getsockname()[1])
        uv_config = uvicorn.Config(
            create_app(state=self.state),
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=1,
            lifespan="on",
            ws="none",
        )
        server = uvicorn.Server(uv_config)
        self._server = server
        self._thread = threading.Thread(
            target=lambda: asyncio.run(server.serve(sockets=[sock])), name="bananaline-simulator", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout_s
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the simulator did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        self.state.stop_waiters()
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self.state.images.close()
        self._server = None
        self._thread = None

    # --- control ---------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        snapshot = self.state.stats.snapshot()
        snapshot["cache"] = self.state.images.stats()
        snapshot["queued_faults"] = self.state.faults.queued()
        return snapshot

    def reset(self) -> None:
        self.state.reset()

    def add_fault(
        self,
        fault: str,
        times: int | None = 1,
        match: str | None = None,
        retry_after: float | None = None,
        latency: float | None = None,
        protocol: str | None = None,
    ) -> QueuedFault:
        """Queue ``fault`` for the next ``times`` requests whose prompt contains ``match``."""
        spec = {
            "fault": fault,
            "times": times,
            "match": match,
            "retry_after": retry_after,
            "latency": latency,
            "protocol": protocol,
        }
        return self.state.faults.add(queued_fault_from(spec))

    def set_latency(self, latency_s: float) -> None:
        self.state.update_config({"latency_s": latency_s})

    def configure(self, **changes: Any) -> SimulatorConfig:
        return self.state.update_config(changes)

    def warm(self, width: int, height: int, palettes: int | None = None) -> None:
        """Encode the payloads for one pixel size ahead of a benchmark (blocking)."""
        config = self.state.config
        for palette in range(palettes if palettes is not None else config.palette_size):
            self.state.images.get(config.image_format, width, height, palette, "normal", config.realistic)

    # --- context managers ------------------------------------------------------------------

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> SimulatorServer:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.stop)
