"""Counters: per key (hashed), in flight from arrival to end of response, per prompt, per fault."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
from simhelpers import KEY

from bananaline.simulator import key_id, prompt_id


async def test_in_flight_is_counted_per_key_while_requests_wait(lsim, gemini, openai):
    lsim.set_latency(2.0)  # long enough for all 8 calls to arrive on a loaded machine
    other = "second-key-for-stats"
    calls = [asyncio.ensure_future(gemini(f"slow {i}")) for i in range(5)]
    calls += [asyncio.ensure_future(openai(f"slow {i}", key=other)) for i in range(3)]
    deadline = time.monotonic() + 5
    while lsim.stats()["in_flight"] < 8 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    during = lsim.stats()
    assert during["in_flight"] == 8
    assert during["keys"][key_id(KEY)]["in_flight"] == 5
    assert during["keys"][key_id(other)]["in_flight"] == 3
    responses = await asyncio.gather(*calls)
    assert all(response.status_code == 200 for response in responses)
    after = lsim.stats()
    assert after["in_flight"] == 0 and after["max_in_flight"] == 8
    assert after["keys"][key_id(KEY)] == {"requests": 5, "in_flight": 0, "max_in_flight": 5}
    assert after["keys"][key_id(other)] == {"requests": 3, "in_flight": 0, "max_in_flight": 3}
    assert after["by_protocol"] == {"gemini": 5, "openai": 3}


async def test_prompts_faults_paths_and_statuses_are_counted(lsim, gemini, openai):
    failing = "row 7 [sim fault=http_500 times=1]"
    await gemini(failing)
    await gemini(failing)
    await openai("row 8")
    stats = lsim.stats()
    assert stats["prompts"] == {prompt_id(failing): 2, prompt_id("row 8"): 1}
    assert stats["by_fault"] == {"http_500": 1}
    assert stats["by_status"] == {"500": 1, "200": 2}
    assert stats["by_path"] == {
        "/v1beta/models/gemini-3-pro-image-preview:generateContent": 2,
        "/v1/chat/completions": 1,
    }
    assert stats["requests_total"] == 3


async def test_raw_keys_never_appear_in_stats(lsim, gemini):
    secret = "sk-very-secret-key-123456"
    await gemini("a cat", key=secret)
    dumped = json.dumps(lsim.stats())
    assert secret not in dumped
    assert key_id(secret) in dumped and len(key_id(secret)) == 12


async def test_reset_keeps_in_flight_requests_balanced(lsim, gemini):
    lsim.set_latency(0.4)
    pending = asyncio.ensure_future(gemini("slow one"))
    deadline = time.monotonic() + 5
    while lsim.stats()["in_flight"] < 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    lsim.reset()
    assert lsim.stats()["in_flight"] == 1
    assert (await pending).status_code == 200
    deadline = time.monotonic() + 5  # the server counts the request out after its last byte went
    while lsim.stats()["in_flight"] and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    stats = lsim.stats()
    assert stats["in_flight"] == 0 and stats["requests_total"] == 0
    assert stats["keys"][key_id(KEY)]["in_flight"] == 0


async def test_stop_is_prompt_even_with_a_hanging_request():
    from bananaline.simulator import SimulatorConfig, SimulatorServer

    server = SimulatorServer(SimulatorConfig(realistic=False)).start()
    url = f"{server.base_url}/v1beta/models/gemini-2.5-flash-image:generateContent"
    body = {"contents": [{"parts": [{"text": "wait [sim fault=hang]"}]}]}
    async with httpx.AsyncClient(timeout=30.0) as client:
        pending = asyncio.ensure_future(client.post(url, json=body, headers={"x-goog-api-key": KEY}))
        deadline = time.monotonic() + 5
        while server.stats()["in_flight"] < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        started = time.monotonic()
        await asyncio.to_thread(server.stop)
        stop_s = time.monotonic() - started
        response = await pending
    assert response.status_code == 499  # the hang was woken by the shutdown
    assert stop_s < 30.0  # woken by the shutdown, not by the hour-long hang
