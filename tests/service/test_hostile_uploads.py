"""Issue 8, items 1-3 over real HTTP: ``bananaline serve`` in its own process gets hostile sheets
and templates; each is a clear 4xx, the process stays up (``/healthz`` 200 right after), its RSS
grows by less than 150 MB while the request runs, and another caller is not slowed down."""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from batch.hostile import wide_csv, wide_jsonl, xfd_xlsx, zip_bomb_xlsx

from .serve_process import ServeProcess

RSS_BOUND_MB = 150.0
NESTED_LOOP = "{% for a in range(99999) %}{% for b in range(99999) %}{% endfor %}{% endfor %}"
#: Figures for the report: ``pytest -s`` prints them.
FIGURES: dict[str, str] = {}


@dataclass
class Server:
    serve: ServeProcess
    attacker: str
    bystander: str

    @property
    def pid(self) -> int:
        return self.serve.pid

    @property
    def db_path(self) -> Path:
        return self.serve.root / "service.db"

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.serve.base_url, headers=headers, timeout=60, trust_env=False)

    def assert_alive(self) -> None:
        process = self.serve.process
        assert process is not None and process.poll() is None, self.serve.log_path.read_text()[-3000:]
        with self.client() as http:
            assert http.get("/healthz").status_code == 200


@pytest.fixture(scope="module")
def server(simulator: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with ServeProcess(tmp_path_factory.mktemp("hostile"), simulator.base_url) as serve:
        tokens = [
            serve.add_caller(f"{role}-{secrets.token_hex(3)}", concurrency=8)
            for role in ("attacker", "bystander")
        ]
        yield Server(serve, *tokens)
    if FIGURES:
        print("\nhostile uploads:", *(f"  {name}: {figure}" for name, figure in FIGURES.items()), sep="\n")


class PeakRss:
    """The server's peak RSS (and its children's, the template renderers) while a block runs."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.baseline = self.process.memory_info().rss
        self.peak = self.baseline
        self.children_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
                children = 0
                for child in self.process.children():
                    try:
                        children += child.memory_info().rss
                    except psutil.Error:
                        pass
                self.children_peak = max(self.children_peak, children)
            except psutil.Error:
                return
            time.sleep(0.01)

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.baseline) / 1e6

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.05)
        self._stop.set()
        self._thread.join(timeout=5)


def _upload(server: Server, name: str, payload: bytes, **data: str) -> httpx.Response:
    with server.client(server.attacker) as http:
        files = {"file": (name, payload, "application/octet-stream")}
        return http.post("/v1/batches/upload", files=files, data=data)


@pytest.mark.parametrize(
    ("name", "build", "match"),
    [
        ("xfd1048576.xlsx", xfd_xlsx, "column 16,384"),
        ("bomb.xlsx", zip_bomb_xlsx, "inflates"),
        ("wide.csv", wide_csv, "20,000 columns"),
        ("wide.jsonl", wide_jsonl, "4,000 keys"),
    ],
)
def test_a_hostile_sheet_is_a_413_and_the_service_stays_up(server, name, build, match):
    payload = build()
    started = time.perf_counter()
    with PeakRss(server.pid) as rss:
        response = _upload(server, name, payload)
    elapsed = time.perf_counter() - started
    FIGURES[name] = (
        f"{len(payload):,} B -> {response.status_code}, RSS +{rss.growth_mb:.1f} MB, {elapsed:.2f} s"
    )
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["kind"] == "payload_too_large" and match in error["message"], error
    server.assert_alive()
    assert rss.growth_mb < RSS_BOUND_MB


def test_string_multiplication_in_a_template_is_a_422_and_nothing_is_stored(server):
    rows = b"product\n" + b"".join(b"banana %d\n" % i for i in range(4))
    db_before = server.db_path.stat().st_size
    with PeakRss(server.pid) as rss:
        response = _upload(server, "rows.csv", rows, columns='{"template": "{{ \'x\' * 50000000 }}"}')
    FIGURES["template x*5e7"] = f"{response.status_code}, RSS +{rss.growth_mb:.1f} MB"
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["kind"] == "invalid_input" and "50,000,000" in error["message"], error
    # the JSON-rows door refuses it the same way
    with server.client(server.attacker) as http:
        as_json = http.post(
            "/v1/batches", json={"rows": [{"product": "a"}], "columns": {"template": "{{ 'x' * 50000000 }}"}}
        )
    assert as_json.status_code == 422, as_json.text
    server.assert_alive()
    assert rss.growth_mb < RSS_BOUND_MB
    assert server.db_path.stat().st_size - db_before < 1_000_000


def test_six_looping_templates_do_not_slow_another_caller(server):
    rows = b"product\nbanana\n"
    columns = json.dumps({"template": NESTED_LOOP})
    usage_s: list[float] = []
    with PeakRss(server.pid) as rss, ThreadPoolExecutor(6) as pool:
        started = time.perf_counter()
        futures = [pool.submit(_upload, server, f"loop{i}.csv", rows, columns=columns) for i in range(6)]
        time.sleep(0.5)
        with server.client(server.bystander) as http:
            while not all(future.done() for future in futures):
                begin = time.perf_counter()
                assert http.get("/v1/usage").status_code == 200
                usage_s.append(time.perf_counter() - begin)
                time.sleep(0.2)
        responses = [future.result() for future in futures]
        elapsed = time.perf_counter() - started
    FIGURES["6 nested-loop templates"] = (
        f"all {sorted({r.status_code for r in responses})} in {elapsed:.1f} s; other caller's /v1/usage "
        f"slowest {max(usage_s):.3f} s over {len(usage_s)} calls; server RSS +{rss.growth_mb:.1f} MB, "
        f"renderers' RSS peak {rss.children_peak / 1e6:.0f} MB"
    )
    for response in responses:
        assert response.status_code == 422, response.text
        assert "for one row" in response.json()["error"]["message"]
    assert len(usage_s) >= 3 and max(usage_s) < 2.0
    server.assert_alive()
    assert rss.growth_mb < RSS_BOUND_MB
