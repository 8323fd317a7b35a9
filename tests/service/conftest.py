"""The service on loopback: a real uvicorn server in a thread, the simulator as its upstream.

Servers are session-scoped (start-up runs migrations); each test makes its own callers, so
tests never share a token or an owner.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from pydantic import SecretStr

from bananaline.config import Settings
from bananaline.db import make_engine
from bananaline.logs import configure_logging
from bananaline.service.app import create_app
from bananaline.service.auth import KeyCipher
from bananaline.service.callers import CallerRepository

SECRET_KEY = "test-secret-key-" + "x" * 24


class RunningService:
    """``create_app(settings)`` served by uvicorn on a free loopback port."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._engine = make_engine(settings.db_url)
        self.callers = CallerRepository(self._engine, KeyCipher(settings.secret_key))

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> RunningService:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            create_app(self.settings), log_level="warning", access_log=False, lifespan="on", ws="none"
        )
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(
            target=lambda: asyncio.run(server.serve(sockets=[sock])), name="bananaline-service", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the service did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=15)
        self._engine.dispose()

    def add_caller(self, name: str | None = None, **options: Any) -> str:
        """A new caller with its own upstream key (unless given); returns the service token."""
        name = name or f"caller-{secrets.token_hex(4)}"
        options.setdefault("upstream_key", f"upstream-{name}-{secrets.token_hex(8)}")
        _, token = self.callers.add(name, **options)
        return token

    def client(self, token: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=60, trust_env=False, **kwargs)


def service_settings(root: Path, upstream: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "base_url": upstream,
        "db_url": f"sqlite:///{root / 'service.db'}",
        "store_url": f"file://{root / 'images'}",
        "spool_dir": root / "spool",
        "out_dir": root / "out",
        "secret_key": SecretStr(SECRET_KEY),
        "plugin_wait_s": 30.0,
        "max_attempts": 2,
        "backoff_initial_s": 0.05,
        "backoff_max_s": 0.1,
        "max_upload_bytes": 2 * 1024 * 1024,
        "make_compressed": False,
    }
    values.update(overrides)
    return Settings(**values)


_log_streams: dict[Path, Any] = {}


@pytest.fixture(scope="session")
def simulator() -> Iterator[Any]:
    """The service tests' own upstream (it overrides the session-wide one for this directory):
    tasks that the session-long services leave running can never touch another directory's
    simulator and its ``requests_total == 0`` assertions."""
    from bananaline.simulator import SimulatorServer

    with SimulatorServer() as server:
        yield server


@pytest.fixture(scope="session")
def service_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Everything the service logs during the session, as JSON lines, for the secrecy checks."""
    path = tmp_path_factory.mktemp("logs") / "service.jsonl"
    with path.open("a", encoding="utf-8", buffering=1) as stream:
        _log_streams[path] = stream
        configure_logging(json_output=True, stream=stream)
        yield path
        _log_streams.pop(path)
    configure_logging(json_output=True)


@pytest.fixture
def captured_log(service_log: Path) -> Path:
    """Re-point logging at the session log file, in case another test reconfigured it."""
    configure_logging(json_output=True, stream=_log_streams[service_log])
    return service_log


@pytest.fixture(scope="session")
def service(
    simulator: Any, service_log: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningService]:
    root = tmp_path_factory.mktemp("service")
    running = RunningService(service_settings(root, simulator.base_url)).start()
    yield running
    running.stop()


@pytest.fixture(scope="session")
def short_wait_service(
    simulator: Any, service_log: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningService]:
    """A second app whose plugin endpoint stops waiting after 0.5 s."""
    root = tmp_path_factory.mktemp("service-short")
    running = RunningService(service_settings(root, simulator.base_url, plugin_wait_s=0.5)).start()
    yield running
    running.stop()
