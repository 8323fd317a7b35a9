"""Keys files and limiters in isolation (a fake clock: no sleeping)."""

from __future__ import annotations

import math

import pytest

from bananaline.batch.keys import KeyRing
from bananaline.batch.limits import CallerLimiter, TokenBucket


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


def test_token_bucket_spaces_requests():
    clock = Clock()
    bucket = TokenBucket(60, clock=clock)
    assert bucket.ready_in_s() == 0
    bucket.take()
    assert bucket.ready_in_s() == pytest.approx(1.0)
    clock.now += 0.5
    assert bucket.ready_in_s() == pytest.approx(0.5)
    clock.now += 0.5
    assert bucket.ready_in_s() == 0


def test_caller_limiter_halves_on_429_pauses_and_recovers():
    clock = Clock()
    limiter = CallerLimiter("a", concurrency=8, rpm=None, ceiling=16, clock=clock)
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


def test_limiter_is_capped_by_the_global_ceiling():
    assert CallerLimiter("a", concurrency=50, rpm=None, ceiling=4).slots == 4
    assert CallerLimiter("a", concurrency=None, rpm=None, ceiling=4).slots == 4
