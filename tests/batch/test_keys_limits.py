"""Keys files and limiters in isolation (a fake clock: no sleeping)."""

from __future__ import annotations

import math

import pytest

from bananaline.admission import CallerGates, CallerLimits
from bananaline.batch.keys import KeyRing
from bananaline.errors import ErrorKind, GenerationError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_keys_toml_inline_env_default_and_unknown(tmp_path, monkeypatch):
    path = tmp_path / "keys.toml"
    path.write_text(
        '[default]\napi_key = "default-key-000111"\n'
        '[callers.alice]\napi_key_env = "ALICE_KEY"\nconcurrency = 2\nrpm = 30\n'
        '[callers."张三"]\napi_key_env = "ZHANG_KEY"\n',
        encoding="utf-8",
    )
    monkeypatch.setenv("ALICE_KEY", "alice-key-222333")
    monkeypatch.delenv("ZHANG_KEY", raising=False)
    ring = KeyRing.from_toml(path)
    assert ring.key_for("alice").get_secret_value() == "alice-key-222333"
    assert ring.key_for("").get_secret_value() == "default-key-000111"
    assert ring.key_for("张三") is None and "ZHANG_KEY" in ring.explain_missing("张三")[0]
    assert ring.key_for("mallory") is None and "[callers.mallory]" in ring.explain_missing("mallory")[0]
    limits = ring.limits_for("alice")
    assert (limits.concurrency, limits.rpm) == (2, 30.0)
    assert "000111" not in repr(ring) and "222333" not in repr(ring.entries)


def test_bad_keys_file_is_rejected(tmp_path):
    path = tmp_path / "keys.toml"
    path.write_text("[callers.a]\napi_key = 'x'\nconcurency = 2\n")
    with pytest.raises(ValueError, match="unknown settings"):
        KeyRing.from_toml(path)


async def test_rpm_is_a_moving_window_shared_by_both_ways_in():
    gates = CallerGates()
    gate = gates.get("a", CallerLimits(concurrency=10, rpm=3))
    await gate.take_request()  # a request door (plugin, gateway)
    gate.acquire()  # a batch row
    gate.release()
    assert gate.ready_in_s() == 0
    gate.acquire()
    gate.release()
    assert 50 < gate.ready_in_s() <= 60  # three starts in this minute: the next waits for the window
    with pytest.raises(GenerationError) as refused:
        await gate.take_request()
    assert refused.value.kind is ErrorKind.RATE_LIMITED and refused.value.retry_after_s >= 50
    assert gates.get("b", CallerLimits(rpm=3)).ready_in_s() == 0  # per caller


def test_caller_limiter_halves_on_429_pauses_and_recovers():
    clock = Clock()
    limiter = CallerGates(clock=clock).get("a", CallerLimits(concurrency=8))
    for _ in range(8):
        assert limiter.ready_in_s() == 0
        limiter.acquire()
    assert limiter.ready_in_s() == math.inf
    limiter.on_rate_limited(retry_after_s=2.0)
    limiter.on_rate_limited(retry_after_s=2.0)  # the same burst: one cut
    assert limiter.slots == 4
    for _ in range(8):
        limiter.release()
    assert limiter.ready_in_s() == pytest.approx(2.0)
    clock.now += 2.0
    assert limiter.ready_in_s() == 0
    clock.now += 5.0
    limiter.on_rate_limited(retry_after_s=None)
    assert limiter.slots == 2
    successes = 0
    while limiter.slots < 8:
        limiter.on_success()
        successes += 1
    assert 8 < successes < 60  # additive: about one slot per round of successes
    assert limiter.slots == 8


async def test_budget_reservations_hold_until_released():
    gate = CallerGates().get("a", CallerLimits(budget_usd=1.0))
    first = await gate.reserve(0.5, 0.24)
    assert (await gate.reserve(0.5, 0.24)).amount_usd == 0.24
    with pytest.raises(GenerationError) as refused:
        await gate.reserve(0.5, 0.24)  # 0.5 spent + 0.48 reserved: no room for a third
    assert refused.value.kind is ErrorKind.BUDGET_EXCEEDED
    await gate.release_reservation(first)
    assert (await gate.reserve(0.5, 0.24)).amount_usd == 0.24
