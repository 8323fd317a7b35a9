"""The simulator must never be the bottleneck: cached payloads, concurrent serving, own process.

Timings are printed (run with ``-s`` to see them) and only bounded generously."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
import time

import httpx
from simhelpers import KEY, decode_image

from bananaline.simulator import SimulatorConfig, SimulatorServer, free_port


def _gemini_body(prompt: str, ratio: str = "1:1", size: str = "1K") -> dict:
    return {
        "contents": [{"role": "user", "parts": [{"text": prompt}]}],
        "generationConfig": {"imageConfig": {"aspectRatio": ratio, "imageSize": size}},
    }


async def test_fifty_concurrent_1k_requests_are_all_in_flight_together():
    """The simulator serves 50 calls at once (a benchmark needs 64): a 1 s latency leaves every
    call time to arrive before the first answers. Throughput figures are bench/'s business."""
    async with SimulatorServer(SimulatorConfig(latency_s=1.0)) as server:
        await asyncio.to_thread(server.warm, 1024, 1024)
        url = f"{server.base_url}/v1beta/models/gemini-3-pro-image-preview:generateContent"
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
        async with httpx.AsyncClient(timeout=30.0, limits=limits) as client:
            started = time.perf_counter()
            responses = await asyncio.gather(
                *(
                    client.post(url, json=_gemini_body(f"row {i}"), headers={"x-goog-api-key": KEY})
                    for i in range(50)
                )
            )
            elapsed_s = time.perf_counter() - started
        assert all(response.status_code == 200 for response in responses)
        total_mb = sum(len(response.content) for response in responses) / 1e6
        stats = server.stats()
    print(
        f"\n50 concurrent realistic 1K requests at 1 s latency: {elapsed_s:.2f} s "
        f"(overhead {elapsed_s - 1.0:.2f} s, {total_mb:.0f} MB of JSON)"
    )
    assert stats["max_in_flight"] == 50


async def test_first_4k_encode_then_cached_throughput():
    async with SimulatorServer(SimulatorConfig(palette_size=1)) as server:
        url = f"{server.base_url}/v1beta/models/gemini-3-pro-image-preview:generateContent"
        headers = {"x-goog-api-key": KEY}
        async with httpx.AsyncClient(timeout=60.0) as client:
            started = time.perf_counter()
            first = await client.post(url, json=_gemini_body("a 4K city", "16:9", "4K"), headers=headers)
            first_s = time.perf_counter() - started
            assert first.status_code == 200
            parts = first.json()["candidates"][0]["content"]["parts"]
            data = [p for p in parts if "inlineData" in p and not p.get("thought")][0]["inlineData"]["data"]
            png_mb = len(base64.b64decode(data)) / 1e6
            assert decode_image(data).size == (5504, 3072)
            encodes_after_first = server.stats()["cache"]["encodes"]

            repeats = 4
            started = time.perf_counter()
            for i in range(repeats):
                response = await client.post(
                    url, json=_gemini_body(f"again {i}", "16:9", "4K"), headers=headers
                )
                assert response.status_code == 200
            cached_s = (time.perf_counter() - started) / repeats
        body_mb = len(first.content) / 1e6
    print(
        f"\nfirst 4K request (encode included): {first_s:.2f} s, PNG {png_mb:.1f} MB, body {body_mb:.1f} MB; "
        f"cached 4K: {cached_s * 1000:.0f} ms/request, {body_mb / cached_s:.0f} MB/s incl. client parsing"
    )
    assert 12 <= png_mb <= 35  # weighs like a real 4K PNG
    assert server.stats()["cache"]["encodes"] == encodes_after_first, "repeats are served from the cache"


def test_runs_as_its_own_process():
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bananaline.simulator", "--port", str(port), "--not-realistic"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(f"{base}/_sim/health", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
            assert time.monotonic() < deadline, "the simulator process did not start"
            time.sleep(0.05)
        response = httpx.post(
            f"{base}/v1/chat/completions",
            json={"model": "gemini-2.5-flash-image", "messages": [{"role": "user", "content": "hi"}]},
            headers={"authorization": f"Bearer {KEY}"},
        )
        assert response.status_code == 200
        assert httpx.get(f"{base}/_sim/stats").json()["requests_total"] == 1
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stderr:
            process.stderr.close()
