"""Fresh processes that use an s3 store and exit, under CPU load: every one must exit 0.

Why: OpenDAL's async operator completes its awaitables from tokio threads that call back into
Python; one of them could still be inside ``loop.call_soon_threadsafe`` (GIL released in
``socket.send``) when the CLI printed its result and the interpreter began finalizing. CPython then
ends that thread with ``pthread_exit``, the forced unwind cannot cross Rust frames, and glibc
aborts: exit -6, nothing on stderr, after a successful result (see ``storage/backend.py``). The
race needs the tokio thread to be preempted at the wrong moment, so it shows under load only:
four processes at a time on two cores plus a CPU burner.

Two shapes: the CLI itself (``bananaline generate ... --store s3://...``), and a bare process
whose last act before exiting is a store call (``exists``, then ``url_for``), where the window is
widest: before the fix one such process in five aborted (12 of 60), the CLI far more rarely.

``STRESS_RUNS`` (CLI processes, default 60), ``STRESS_STORE_RUNS`` (bare store processes, 100),
``STRESS_PARALLEL`` (4) and ``STRESS_BURNERS`` (1) tune it; the default 160 processes stay under
three minutes on two cores. The bare store processes are where the old race showed (12 of 60
aborted before the fix), so they get the larger share. (``tests/conftest.py`` clears every
``BANANALINE_*`` variable before this module is read, so the knobs carry no such prefix; the
``BANANALINE_STRESS_*`` spellings are honoured too, should that conftest ever let them through.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from storage_support import ACCESS_KEY_ID, SECRET_ACCESS_KEY, s3_client


def _knob(name: str, default: int) -> int:
    return int(os.environ.get(f"BANANALINE_{name}") or os.environ.get(name) or default)


RUNS = _knob("STRESS_RUNS", 60)
STORE_RUNS = _knob("STRESS_STORE_RUNS", 100)
PARALLEL = _knob("STRESS_PARALLEL", 4)
BURNERS = _knob("STRESS_BURNERS", 1)
BURN = "while True:\n    pass\n"


#: A process whose last act is a store call: the shape in which the race is most likely.
STORE_CALL_THEN_EXIT = """
import asyncio, sys
from bananaline.config import Settings
from bananaline.storage import ImageStore

store = ImageStore.from_url(sys.argv[1], settings=Settings(spool_dir=sys.argv[2]))

async def main():
    assert await store.exists("stress/probe.json")
    print(await store.url_for("stress/probe.json"))

asyncio.run(main())
"""


def _child_env(**extra: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("BANANALINE_")}
    env.update(AWS_ACCESS_KEY_ID=ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY=SECRET_ACCESS_KEY, **extra)
    return env


class _Burners:
    """``count`` busy loops, so that the processes under test are preempted at random moments."""

    def __init__(self, count: int) -> None:
        self._processes = [subprocess.Popen([sys.executable, "-c", BURN]) for _ in range(count)]

    def __enter__(self) -> _Burners:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for process in self._processes:
            process.kill()
            process.wait()


@dataclass(frozen=True)
class Run:
    index: int
    returncode: int
    ok: bool
    url: str | None
    stderr_tail: str


def _one(index: int, store_url: str, env: dict[str, str], workdir: Path) -> Run:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bananaline",
            "generate",
            f"a plum, variation {index}",
            "--model",
            "gemini-3.1-flash-image-preview",
            "--aspect-ratio",
            "1:1",
            "--size",
            "512",
            "--json",
            "--store",
            store_url,
            "--out",
            str(workdir / "out"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=workdir,
        timeout=300,
    )
    ok, url = False, None
    lines = proc.stdout.splitlines()
    if len(lines) == 1:
        try:
            payload = json.loads(lines[0])
        except ValueError:
            payload = None
        if isinstance(payload, dict) and payload.get("ok") is True and payload.get("images"):
            image = payload["images"][0]
            url = image.get("url")
            ok = image.get("storage_status") == "stored"
    return Run(index, proc.returncode, ok, url, proc.stderr[-400:])


def _verdict(runs: list[Run], wall_s: float) -> tuple[list[Run], str]:
    abnormal = [run for run in runs if run.returncode != 0 or not run.ok]
    codes = Counter(run.returncode for run in runs)
    summary = (
        f"{len(abnormal)} abnormal of {len(runs)} in {wall_s:.0f}s ({PARALLEL} at a time, "
        f"{BURNERS} burner(s)); exit codes {dict(codes)}"
    )
    print(summary)
    details = "".join(
        f"\n  run {run.index}: exit {run.returncode}, ok={run.ok}, stderr: {run.stderr_tail!r}"
        for run in abnormal[:10]
    )
    return abnormal, summary + details


@pytest.mark.slow
def test_a_store_call_right_before_exit_never_aborts(moto_endpoint, s3_bucket, tmp_path):
    s3_client(moto_endpoint).put_object(Bucket=s3_bucket, Key="stress/probe.json", Body=b"{}")
    store_url = f"s3://{s3_bucket}/stress?endpoint={moto_endpoint}&region=us-east-1"
    env = _child_env()

    def one(index: int) -> Run:
        proc = subprocess.run(
            [sys.executable, "-c", STORE_CALL_THEN_EXIT, store_url, str(tmp_path / "spool")],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        url = proc.stdout.strip() or None
        ok = bool(url and url.startswith(moto_endpoint))
        return Run(index, proc.returncode, ok, url, proc.stderr[-400:])

    started = time.monotonic()
    with _Burners(BURNERS), ThreadPoolExecutor(PARALLEL) as pool:
        runs = list(pool.map(one, range(STORE_RUNS)))
    abnormal, report = _verdict(runs, time.monotonic() - started)
    assert not abnormal, report


@pytest.mark.slow
def test_generate_with_an_s3_store_never_aborts_at_exit(sim, moto_endpoint, s3_bucket, tmp_path):
    env = _child_env(
        BANANALINE_BASE_URL=sim.base_url,
        BANANALINE_API_KEY="stress-key-0123456789",
        BANANALINE_SPOOL_DIR=str(tmp_path / "spool"),
        BANANALINE_STORE_UPLOAD_ATTEMPTS="2",
    )
    store_url = f"s3://{s3_bucket}/stress?endpoint={moto_endpoint}&region=us-east-1"
    started = time.monotonic()
    with _Burners(BURNERS), ThreadPoolExecutor(PARALLEL) as pool:
        runs = list(pool.map(lambda index: _one(index, store_url, env, tmp_path), range(RUNS)))
    abnormal, report = _verdict(runs, time.monotonic() - started)
    assert not abnormal, report
    assert all(run.url and run.url.startswith(moto_endpoint) for run in runs)
    assert sim.stats()["requests_total"] == RUNS
