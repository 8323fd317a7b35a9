"""One admission path for every door (issue 8, items 5-8): prices, budgets and limits hold per
caller across the plugin, the gateways and the jobs API at once, over real HTTP."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from google import genai
from google.genai import types as genai_types
from openai import OpenAI

from bananaline import catalog
from bananaline.simulator import key_id

from .test_batches_api import wait_complete

PRO_1K = float(catalog.MODELS["gemini-3-pro-image-preview"].price_for("1K"))
PRO_4K = float(catalog.MODELS["gemini-3-pro-image-preview"].price_for("4K"))


def _stats(sim: Any, key: str) -> dict[str, Any]:
    return dict(sim.stats()["keys"].get(key_id(key), {}))


def _spent(service: Any, http: httpx.Client) -> float:
    return float(http.get("/v1/usage").json()["cost_usd"])


def _plugin(http: httpx.Client, prompt: str, **fields: Any) -> httpx.Response:
    return http.post("/v1/plugin/generate", json={"cleantext": prompt, **fields})


def test_models_prefix_is_priced_and_charged_against_the_budget(service, sim):
    """Item 5: ``models/gemini-3-pro-image-preview`` (google-genai's own spelling) is the Pro
    model: priced, charged, and refused once the budget cannot hold another 4K image."""
    upstream = "upstream-prefix-key-0001"
    token = service.add_caller(upstream_key=upstream, budget_usd=0.30)
    client = genai.Client(
        api_key=token, http_options=genai_types.HttpOptions(base_url=service.base_url, timeout=60_000)
    )
    config = genai_types.GenerateContentConfig(
        response_modalities=["IMAGE"],
        image_config=genai_types.ImageConfig(aspect_ratio="1:1", image_size="4K"),
    )
    made = refused = 0
    for i in range(4):
        try:
            client.models.generate_content(
                model="models/gemini-3-pro-image-preview", contents=f"prefixed banana {i}", config=config
            )
            made += 1
        except genai.errors.APIError as exc:
            assert exc.code == 402, exc
            refused += 1
    with service.client(token) as http:
        prefixed_plugin = _plugin(
            http, "plugin banana", model="models/GEMINI-3-PRO-IMAGE-PREVIEW", resolution="4k"
        )
        spent = _spent(service, http)
    assert made == 1 and refused == 3
    assert prefixed_plugin.status_code == 402
    assert spent == PRO_4K  # the Pro 4K price, never $0
    assert _stats(sim, upstream)["requests"] == 1


def test_jobs_budget_estimate_uses_the_plan_mapping_defaults_n_and_4k(service, sim):
    """Item 6: a mapped row with ``gemini-3-pro-image``, ``4k`` and ``n=4`` needs 4 x the 4K price,
    so a $0.30 budget refuses it with a 402 before any upstream call."""
    upstream = "upstream-jobs-estimate-01"
    token = service.add_caller(upstream_key=upstream, budget_usd=0.30)
    columns = {"prompt": "提示词", "model": "模型", "size": "尺寸", "n": "张数"}
    with service.client(token) as http:
        mapped = http.post(
            "/v1/batches",
            json={
                "rows": [{"提示词": "四张香蕉", "模型": "gemini-3-pro-image", "尺寸": "4k", "张数": 4}],
                "columns": columns,
            },
        )
        defaulted = http.post(
            "/v1/batches",
            json={
                "rows": [{"prompt": f"default {i}"} for i in range(3)],
                "columns": {"default_model": "models/gemini-3-pro-image-preview", "default_size": "4K"},
            },
        )
    assert mapped.status_code == 402, mapped.text
    assert "0.9600" in mapped.json()["error"]["detail"]  # 4 x 0.24, not one 1K image
    assert defaulted.status_code == 402, defaulted.text  # 3 x 0.24 = 0.72 > 0.30
    assert _stats(sim, upstream).get("requests", 0) == 0


def test_racing_requests_and_jobs_never_overspend_and_every_call_is_charged(service, sim):
    """Items 6-7: 10 plugin requests, 4 gateway requests and a 6-row job race against a budget
    that holds two 1K Pro images. Spend stays within the budget (plus at most one image), and the
    spend recorded equals what the upstream made."""
    upstream = "upstream-budget-race-001"
    budget = 0.30
    token = service.add_caller(upstream_key=upstream, budget_usd=budget, concurrency=8)
    prompt = "race banana [sim latency=0.4]"

    def plugin(i: int) -> int:
        with service.client(token) as http:
            return _plugin(http, f"{prompt} {i}", model="models/gemini-3-pro-image-preview").status_code

    def gateway(i: int) -> int:
        client = OpenAI(base_url=service.base_url + "/v1", api_key=token, max_retries=0)
        try:
            client.images.generate(model="gemini-3-pro-image-preview", prompt=f"{prompt} gw {i}", n=1)
            return 200
        except Exception as exc:  # noqa: BLE001 - the SDK's error carries the status
            return int(getattr(exc, "status_code", 0))

    def job() -> int:
        with service.client(token) as http:
            rows = [{"prompt": f"{prompt} job {i}", "model": "gemini-3-pro-image-preview"} for i in range(6)]
            response = http.post("/v1/batches", json={"rows": rows})
            if response.status_code == 202:
                wait_complete(http, response.json()["batch_id"])
            return response.status_code

    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(plugin, i) for i in range(10)]
        futures += [pool.submit(gateway, i) for i in range(4)]
        futures.append(pool.submit(job))
        statuses = [future.result(timeout=120) for future in futures]
    assert set(statuses) <= {200, 202, 402}, statuses
    with service.client(token) as http:
        spent = _spent(service, http)
    made = _stats(sim, upstream)["requests"]  # every call succeeds here: one image each
    assert spent <= budget + PRO_1K + 1e-9
    assert spent <= budget + 1e-9  # reservations are held until the spend is written
    assert abs(spent - made * PRO_1K) < 1e-6, (spent, made)  # every upstream image is charged
    assert made >= 1


def test_a_callers_concurrency_holds_across_plugin_gateway_and_jobs(service, sim):
    """Item 8: concurrency 2 means at most 2 upstream calls in flight for the caller's key,
    whichever doors the requests came in by, all at once."""
    upstream = "upstream-concurrency-02x"
    token = service.add_caller(upstream_key=upstream, concurrency=2)
    prompt = "crowd banana [sim latency=0.4]"

    def plugin(i: int) -> int:
        with service.client(token) as http:
            return _plugin(http, f"{prompt} {i}").status_code

    def gateway(i: int) -> int:
        client = OpenAI(base_url=service.base_url + "/v1", api_key=token, max_retries=0)
        client.chat.completions.create(
            model="gemini-3-pro-image-preview", messages=[{"role": "user", "content": f"{prompt} chat {i}"}]
        )
        return 200

    def job() -> int:
        with service.client(token) as http:
            response = http.post(
                "/v1/batches", json={"rows": [{"prompt": f"{prompt} row {i}"} for i in range(6)]}
            )
            assert response.status_code == 202, response.text
            done = wait_complete(http, response.json()["batch_id"])
            assert {row["status"] for row in done["rows"]} == {"done"}
            return 202

    with ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(plugin, i) for i in range(4)]
        futures += [pool.submit(gateway, i) for i in range(4)]
        futures.append(pool.submit(job))
        assert [future.result(timeout=120) for future in futures] == [200] * 8 + [202]
    stats = _stats(sim, upstream)
    assert stats["requests"] == 14
    assert stats["max_in_flight"] == 2


def test_a_callers_rpm_counts_job_rows_and_requests_together(service, sim):
    """Item 8: rpm 4 is four upstream starts a minute for the caller, rows and requests alike:
    a 7-row job starts four rows, the rest wait, and a plugin request in that minute is a 429."""
    upstream = "upstream-rpm-limit-0004"
    token = service.add_caller(upstream_key=upstream, rpm=4, concurrency=8)
    with service.client(token) as http:
        submitted = http.post("/v1/batches", json={"rows": [{"prompt": f"paced row {i}"} for i in range(7)]})
        assert submitted.status_code == 202, submitted.text
        batch_id = submitted.json()["batch_id"]
        deadline = time.monotonic() + 30
        while _stats(sim, upstream).get("requests", 0) < 4:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(1.5)  # proving a negative: unpaced rows would have started by now
        assert _stats(sim, upstream)["requests"] == 4
        refused = _plugin(http, "one more banana")
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["Retry-After"]) >= 1
        status = http.get(f"/v1/batches/{batch_id}").json()
        assert status["batch"]["jobs_by_status"].get("queued", 0) == 3
        http.post(f"/v1/batches/{batch_id}/cancel")
    assert _stats(sim, upstream)["requests"] == 4
