"""``bananaline serve`` in its own process, for tests that measure the server (RSS, latency) or need
its real start-up path (environment settings, uvicorn flags)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bananaline.simulator import free_port

from .conftest import SECRET_KEY


class ServeProcess:
    """``python -m bananaline serve`` on a free loopback port, settings through ``BANANALINE_*``
    (``env``: ``db_url="…"`` for ``BANANALINE_DB_URL`` and so on; the database defaults to a
    SQLite file in ``root``)."""

    def __init__(self, root: Path, upstream: str, *, args: list[str] | None = None, **env: str) -> None:
        self.root = root
        self.port = free_port()
        self.db_url = env.get("db_url", f"sqlite:///{root / 'service.db'}")
        values = {
            "BANANALINE_BASE_URL": upstream,
            "BANANALINE_DB_URL": self.db_url,
            "BANANALINE_STORE_URL": f"file://{root / 'images'}",
            "BANANALINE_SPOOL_DIR": str(root / "spool"),
            "BANANALINE_OUT_DIR": str(root / "out"),
            "BANANALINE_SECRET_KEY": SECRET_KEY,
            "BANANALINE_MAX_ATTEMPTS": "1",
            "BANANALINE_MAKE_COMPRESSED": "false",
        }
        values.update({f"BANANALINE_{name.upper()}": value for name, value in env.items()})
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("BANANALINE_")} | values
        self.args = args or []
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = root / "serve.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> ServeProcess:
        self.root.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        command = [sys.executable, "-m", "bananaline", "serve", "--port", str(self.port), *self.args]
        self.process = subprocess.Popen(command, cwd=self.root, env=self.env, stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited {self.process.returncode}: {self.log_path.read_text()}")
            try:
                if httpx.get(self.base_url + "/healthz", timeout=1, trust_env=False).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"serve did not start: {self.log_path.read_text()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def add_caller(self, name: str, **options: Any) -> str:
        from pydantic import SecretStr

        from bananaline.db import make_engine
        from bananaline.service.auth import KeyCipher
        from bananaline.service.callers import CallerRepository

        engine = make_engine(self.db_url)
        try:
            options.setdefault("upstream_key", f"upstream-{name}-key")
            _, token = CallerRepository(engine, KeyCipher(SecretStr(SECRET_KEY))).add(name, **options)
        finally:
            engine.dispose()
        return token

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Watch:
    """While a block runs: the server's peak RSS growth (psutil, sampled every 20 ms) and the
    slowest ``/healthz`` answer (polled every 50 ms from another connection)."""

    def __init__(self, server: ServeProcess) -> None:
        import psutil

        self.server = server
        self.process = psutil.Process(server.pid)
        self.baseline_rss = self.process.memory_info().rss
        self.peak_rss = self.baseline_rss
        self.slowest_health_s = 0.0
        self.health_failures = 0
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._sample_rss, daemon=True),
            threading.Thread(target=self._poll_health, daemon=True),
        ]

    @property
    def rss_growth_mb(self) -> float:
        return (self.peak_rss - self.baseline_rss) / 1e6

    def _sample_rss(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)
            except Exception:  # noqa: BLE001 - the process may be gone
                return
            time.sleep(0.02)

    def _poll_health(self) -> None:
        with httpx.Client(base_url=self.server.base_url, timeout=30, trust_env=False) as http:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    ok = http.get("/healthz").status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.slowest_health_s = max(self.slowest_health_s, time.perf_counter() - started)
                self.health_failures += 0 if ok else 1
                time.sleep(0.05)

    def __enter__(self) -> Watch:
        for thread in self._threads:
            thread.start()
        time.sleep(0.2)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.3)
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=40)
