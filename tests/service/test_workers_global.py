"""``bananaline serve --workers 4`` on PostgreSQL enforces one caller's concurrency and budget
across all four worker processes (issue 10): the gate ledger in the shared database, not a
per-process share."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from bananaline import catalog
from bananaline.simulator import key_id
from pg_support import fresh_postgres_schema

from .serve_process import ServeProcess

pytestmark = pytest.mark.postgres

PRO_1K = float(catalog.MODELS["gemini-3-pro-image-preview"].price_for("1K"))


@pytest.fixture
def four_workers(sim, tmp_path):
    with fresh_postgres_schema("bl_workers") as (url, _schema):
        server = ServeProcess(tmp_path / "serve", sim.base_url, args=["--workers", "4"], db_url=url)
        with server:
            yield server


def _fire(server: ServeProcess, token: str, prompts: list[str]) -> list[httpx.Response]:
    def one(prompt: str) -> httpx.Response:
        # a fresh connection each: the kernel spreads them over the four workers' shared socket
        with httpx.Client(base_url=server.base_url, timeout=120, trust_env=False) as http:
            return http.post(
                "/v1/plugin/generate",
                json={"cleantext": prompt},
                headers={"Authorization": f"Bearer {token}"},
            )

    with ThreadPoolExecutor(len(prompts)) as pool:
        return list(pool.map(one, prompts))


def test_one_callers_concurrency_holds_across_four_workers(four_workers, sim):
    upstream = "upstream-workers-conc-02"
    token = four_workers.add_caller("conc-two", upstream_key=upstream, concurrency=2)
    answers = _fire(four_workers, token, [f"worker banana {i} [sim latency=0.8]" for i in range(12)])
    assert [answer.status_code for answer in answers] == [200] * 12, [a.text for a in answers]
    stats = sim.stats()["keys"][key_id(upstream)]
    assert stats["requests"] == 12
    assert stats["max_in_flight"] == 2  # four processes, one limit: 2, not 8


def test_one_callers_budget_holds_across_four_workers(four_workers, sim):
    upstream = "upstream-workers-budget-1"
    budget = 3 * PRO_1K + 0.01  # room for three 1K Pro images
    token = four_workers.add_caller("budget-three", upstream_key=upstream, concurrency=8, budget_usd=budget)
    answers = _fire(four_workers, token, [f"budget worker banana {i} [sim latency=0.5]" for i in range(10)])
    statuses = sorted(answer.status_code for answer in answers)
    assert set(statuses) <= {200, 402}, statuses
    with httpx.Client(base_url=four_workers.base_url, timeout=30, trust_env=False) as http:
        spent = http.get("/v1/usage", headers={"Authorization": f"Bearer {token}"}).json()["cost_usd"]
    made = sim.stats()["keys"][key_id(upstream)]["requests"]
    assert made == statuses.count(200) == 3  # exactly what the budget holds, whichever worker answered
    assert abs(spent - made * PRO_1K) < 1e-6 and spent <= budget
