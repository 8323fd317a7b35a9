"""Test isolation: every data directory points at a temp dir, no user config leaks in,
and one upstream simulator serves the whole session over loopback."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

for _name in list(os.environ):
    if _name.startswith("BANANALINE_"):
        del os.environ[_name]
# Loopback never goes through a proxy, whatever the machine's environment says (test clients and
# SDKs read these variables; bananaline's own clients ignore them).
for _name in ("NO_PROXY", "no_proxy"):
    _existing = [item for item in os.environ.get(_name, "").split(",") if item]
    os.environ[_name] = ",".join(dict.fromkeys([*_existing, "127.0.0.1", "127.0.0.2", "localhost", "::1"]))


@pytest.fixture(autouse=True)
def _isolated_workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Run each test in its own directory so out/, data/ and bananaline.db never collide."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BANANALINE_CONFIG", raising=False)
    yield tmp_path


@pytest.fixture(scope="session")
def simulator():
    """The project's own fake upstream, started once per session on a free loopback port."""
    from bananaline.simulator import SimulatorServer

    with SimulatorServer() as server:
        yield server


@pytest.fixture
def sim(simulator):
    """The session simulator, reset to a clean state (no faults, no latency, zero stats)."""
    simulator.reset()
    simulator.set_latency(0.0)
    yield simulator
    simulator.reset()


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """One in-process moto S3 server for the session, on a free loopback port."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
