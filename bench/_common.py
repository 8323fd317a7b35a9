"""Shared plumbing of the benchmark scripts: the simulator in its own process, measured children,
a loopback-only network guard, and Markdown output.

Why separate processes: the figure that matters is the peak resident memory of the process that
makes the requests. If the simulator (which keeps encoded 4K payloads in memory) lived in the same
process, its memory would be counted too. So the simulator runs as ``python -m
bananaline.simulator`` and every measured side runs in a fresh child whose peak RSS the kernel
reports when it exits (``os.wait4``'s ``ru_maxrss``: exact, no sampling gaps).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

BENCH_DIR = Path(__file__).resolve().parent
API_KEY = "bench-key-not-secret"
#: The local PostgreSQL server of the job-store benchmarks (``--pg-url`` overrides it).
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
#: Environment variables a child must not inherit: they would change its settings or send it
#: through a proxy (which would also make loopback requests leave the machine).
_DROPPED_ENV_PREFIXES = ("BANANALINE_", "GOOGLE_", "GEMINI_")
_DROPPED_ENV_NAMES = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_env(**extra: str) -> dict[str, str]:
    """The parent's environment without bananaline/Google settings or proxies."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(_DROPPED_ENV_PREFIXES) and name.lower() not in _DROPPED_ENV_NAMES
    }
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def load_line() -> str:
    """The machine's load right now, for the report: load averages and CPU count."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1/5/15 min) on {os.cpu_count()} CPUs"


class SimulatorProcess:
    """``python -m bananaline.simulator`` on a free loopback port, as a separate process.

    ``palette_size=1`` makes every prompt map to one cached payload per pixel size, so the
    simulator encodes each size once (during :meth:`warm`) and then only copies bytes.
    """

    def __init__(self, *, latency_s: float = 0.0, realistic: bool = True, palette_size: int = 1) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.latency_s = latency_s
        self.realistic = realistic
        self.palette_size = palette_size
        self._proc: subprocess.Popen[bytes] | None = None
        self._http = httpx.Client(base_url=self.base_url, timeout=600.0, trust_env=False)

    def start(self, startup_timeout_s: float = 30.0) -> SimulatorProcess:
        argv = [
            sys.executable,
            "-m",
            "bananaline.simulator",
            "--port",
            str(self.port),
            "--latency-s",
            str(self.latency_s),
            "--palette-size",
            str(self.palette_size),
            "--log-level",
            "warning",
        ]
        if not self.realistic:
            argv.append("--not-realistic")
        self._proc = subprocess.Popen(argv, env=child_env(), stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"the simulator exited with {self._proc.returncode}")
            try:
                if self._http.get("/_sim/health").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the simulator did not start")
            time.sleep(0.1)

    def stop(self) -> None:
        self._http.close()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def __enter__(self) -> SimulatorProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stats(self) -> dict[str, Any]:
        return dict(self._http.get("/_sim/stats").json())

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the simulator process has used so far."""
        assert self._proc is not None
        times = psutil.Process(self._proc.pid).cpu_times()
        return float(times.user + times.system)

    def reset(self) -> None:
        self._http.post("/_sim/reset").raise_for_status()

    def set_latency(self, latency_s: float) -> None:
        self._http.post("/_sim/config", json={"latency_s": latency_s}).raise_for_status()
        self.latency_s = latency_s

    def key_max_in_flight(self) -> int:
        """The most calls the simulator ever had open at once (since the last reset)."""
        return int(self.stats()["max_in_flight"])

    def warm(self, model: str, aspect_ratio: str, image_size: str) -> int:
        """Make one Gemini-native call with no latency so the payload is encoded before any
        measurement; return the size of the JSON response body in bytes."""
        latency_s = self.latency_s
        self.set_latency(0.0)
        body = gemini_request_body("warm-up", aspect_ratio, image_size)
        size = 0
        try:
            with self._http.stream(
                "POST",
                f"/v1beta/models/{model}:generateContent",
                json=body,
                headers={"x-goog-api-key": API_KEY},
            ) as response:
                response.raise_for_status()
                for chunk in response.iter_raw():
                    size += len(chunk)
        finally:
            self.set_latency(latency_s)
            self.reset()
        return size


def gemini_request_body(prompt: str, aspect_ratio: str, image_size: str) -> dict[str, Any]:
    return {
        "contents": [{"role": "user", "parts": [{"text": prompt}]}],
        "generationConfig": {
            "responseModalities": ["IMAGE"],
            "imageConfig": {"aspectRatio": aspect_ratio, "imageSize": image_size},
        },
    }


@dataclass
class ChildResult:
    """One measured child: its exit code, kernel-reported peak RSS and CPU time, wall time and
    JSON report."""

    returncode: int
    peak_rss_mb: float
    process_wall_s: float
    cpu_s: float
    report: dict[str, Any] = field(default_factory=dict)
    stderr_tail: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and bool(self.report)


def run_child(argv: Sequence[str], *, cwd: Path, timeout_s: float = 1800.0) -> ChildResult:
    """Run ``argv`` and wait for it with ``os.wait4`` to read that one child's peak RSS.

    The child prints one JSON object as its last stdout line; it is parsed into ``report``.
    ``RUSAGE_CHILDREN`` would be the maximum over every child this process ever waited for
    (the simulator included), so the per-child ``wait4`` figure is the one to trust.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(list(argv), cwd=cwd, env=child_env(), stdout=out, stderr=err)
        deadline = started + timeout_s
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.02)
        wall_s = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        lines = out.read().decode("utf-8", "replace").strip().splitlines()
        stderr_tail = err.read().decode("utf-8", "replace")[-2000:]
    report: dict[str, Any] = {}
    if lines:
        try:
            report = json.loads(lines[-1])
        except json.JSONDecodeError:
            stderr_tail = "\n".join(lines[-5:]) + "\n" + stderr_tail
    cpu_s = usage.ru_utime + usage.ru_stime
    return ChildResult(proc.returncode, usage.ru_maxrss / 1024.0, wall_s, cpu_s, report, stderr_tail)


def check_child(result: ChildResult, what: str) -> None:
    if not result.ok:
        raise SystemExit(f"{what} failed (exit {result.returncode}):\n{result.stderr_tail}")


# --- job stores ---------------------------------------------------------------------------------


def postgres_reachable(pg_url: str) -> bool:
    """Whether ``pg_url`` answers; if not, says so on stderr (the caller skips PostgreSQL)."""
    from sqlalchemy import text

    from bananaline.db.base import make_engine

    try:
        admin = make_engine(pg_url, connect_args={"connect_timeout": 3})
        with admin.connect() as conn:
            conn.execute(text("select 1"))
        admin.dispose()
    except Exception as exc:  # any failure to connect: skip PostgreSQL, say why
        print(f"PostgreSQL at {pg_url} is unreachable ({type(exc).__name__}): skipped", file=sys.stderr)
        return False
    return True


@contextlib.contextmanager
def job_store_url(kind: str, pg_url: str, prefix: str) -> Iterator[str]:
    """A fresh, empty job store: a SQLite file in a temp dir, or a new schema on ``pg_url``
    (dropped afterwards)."""
    from sqlalchemy import text

    from bananaline.db.base import make_engine

    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix=f"{prefix}-") as tmp:
            yield f"sqlite:///{Path(tmp) / 'jobs.db'}"
        return
    admin = make_engine(pg_url, connect_args={"connect_timeout": 3})
    schema = f"{prefix.replace('-', '_')}_{uuid.uuid4().hex[:8]}"
    with admin.begin() as conn:
        conn.execute(text(f'create schema "{schema}"'))
    try:
        yield f"{pg_url}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'drop schema "{schema}" cascade'))
        admin.dispose()


# --- inside a child ----------------------------------------------------------------------------


_LOOPBACK_HOSTS = {"127.0.0.1", "::1", "localhost"}
CONNECTED: set[str] = set()


def install_loopback_guard() -> None:
    """Refuse any connection or DNS lookup that is not loopback, for the rest of the process.

    A Python audit hook sees every ``socket.connect`` and ``socket.getaddrinfo`` whichever
    library makes it (httpx, google-genai, anything they import), so a benchmark cannot reach
    the internet by accident. Hosts connected to are recorded in :data:`CONNECTED`.
    """

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event == "socket.getaddrinfo":
            host = args[0]
            if isinstance(host, bytes):
                host = host.decode()
            if host is not None and str(host) not in _LOOPBACK_HOSTS:
                raise PermissionError(f"benchmark guard: DNS lookup of {host!r} refused")
        elif event == "socket.connect":
            address = args[1]
            if isinstance(address, tuple) and address:
                host = str(address[0])
                if host not in _LOOPBACK_HOSTS:
                    raise PermissionError(f"benchmark guard: connection to {host!r} refused")
                CONNECTED.add(f"{host}:{address[1]}")

    sys.addaudithook(hook)


def own_peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def emit(report: dict[str, Any]) -> None:
    """The child's last stdout line: its report as JSON."""
    report.setdefault("connected", sorted(CONNECTED))
    print(json.dumps(report), flush=True)


# --- output -----------------------------------------------------------------------------------


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|")

    lines = [
        "| " + " | ".join(cell(name) for name in header) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|",
    ]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)
