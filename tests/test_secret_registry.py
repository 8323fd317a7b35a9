"""The redaction registry stays bounded under per-request own keys, and configured secrets are
never evicted from it (issue 8)."""

from __future__ import annotations

import time

from bananaline import errors
from bananaline.errors import redact, register_secret, registered_secret_count, request_scoped_secrets


def test_100k_request_scoped_keys_keep_the_registry_bounded_and_configured_keys_redacted() -> None:
    configured = "configured-upstream-key-5b8c2e"
    register_secret(configured)  # outside a request: pinned
    before = registered_secret_count()
    with request_scoped_secrets():
        for number in range(100_000):
            register_secret(f"own-key-{number:06d}-{number * 7919 % 100_003:06d}")
    growth = registered_secret_count() - before
    assert 0 < growth <= errors.MAX_REQUEST_SECRETS
    assert redact(f"upstream said: bad key {configured}!") == "upstream said: bad key ***!"
    latest = "own-key-099999-" + f"{99_999 * 7919 % 100_003:06d}"
    assert redact(f"x {latest} y") == "x *** y"  # the recent ones are still redacted
    assert "own-key-000000-000000" in redact("own-key-000000-000000")  # long evicted


def test_explicit_transient_flag_and_pinning_wins() -> None:
    value = "pinned-after-transient-91c0"
    register_secret(value, transient=True)
    register_secret(value, transient=False)
    with request_scoped_secrets():
        for number in range(errors.MAX_REQUEST_SECRETS + 10):
            register_secret(f"flood-{number:08d}", transient=True)
    assert redact(value) == "***"


def test_redact_cost_does_not_grow_with_a_full_registry() -> None:
    with request_scoped_secrets():
        for number in range(errors.MAX_REQUEST_SECRETS):
            register_secret(f"cost-check-{number:08d}")
    line = "generation failed: upstream 500 for model gemini-3-pro-image-preview in 1.23 s " * 3
    started = time.perf_counter()
    for _ in range(1000):
        redact(line)
    per_call_ms = time.perf_counter() - started  # seconds for 1000 calls = ms per call
    assert per_call_ms < 0.5, f"{per_call_ms:.3f} ms per redact with a full registry"


def test_overlapping_secrets_longest_first() -> None:
    register_secret("abcdef123456")
    register_secret("abcdef123456789")
    assert redact("k=abcdef123456789 and abcdef123456") == "k=*** and ***"
