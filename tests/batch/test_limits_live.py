"""Per-caller limits as the upstream sees them (simulator latency 0.3 s)."""

from __future__ import annotations

from pydantic import SecretStr

from bananaline.batch.engine import BatchEngine
from bananaline.batch.keys import CallerKey, KeyRing
from bananaline.simulator import key_id


async def test_caller_concurrency_limits_hold_at_the_upstream(fast_sim, settings_for):
    fast_sim.set_latency(0.3)
    ring = KeyRing(
        {
            "a": CallerKey(api_key=SecretStr("caller-a-key-01"), concurrency=2),
            "b": CallerKey(api_key=SecretStr("caller-b-key-02"), concurrency=5),
        }
    )
    engine = BatchEngine(settings_for(fast_sim), keyring=ring)
    rows = [{"prompt": f"limit row {i}", "caller": "a" if i % 3 == 0 else "b"} for i in range(36)]
    summary = await engine.run(engine.create_batch(rows), concurrency=16)
    assert summary.rows_by_status == {"done": 36}
    keys = fast_sim.stats()["keys"]
    assert keys[key_id("caller-a-key-01")]["max_in_flight"] == 2
    assert keys[key_id("caller-b-key-02")]["max_in_flight"] == 5
    engine.close()


async def test_a_rate_limited_caller_retries_and_still_finishes(fast_sim, settings_for):
    """Every row's first call gets a 429; the client honours the wait and each row finishes on its
    second attempt. (The AIMD slow-down itself is proven with a fake clock in test_keys_limits.)"""
    ring = KeyRing({"a": CallerKey(api_key=SecretStr("caller-a-key-01"), concurrency=4)})
    engine = BatchEngine(settings_for(fast_sim), keyring=ring)
    rows = [
        {"prompt": f"busy {i} [sim fault=http_429 times=1 retry_after=0.2]", "caller": "a"} for i in range(8)
    ]
    summary = await engine.run(engine.create_batch(rows), concurrency=8)
    assert summary.rows_by_status == {"done": 8}
    assert all(row.attempts == 2 for row in engine.status(summary.batch_id).rows)
    assert fast_sim.stats()["by_fault"].get("http_429") == 8
    engine.close()
