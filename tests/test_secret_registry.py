"""The redaction registry stays bounded under per-request own keys, and configured secrets are
never evicted from it (issue 8)."""

from __future__ import annotations

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


def test_a_full_registry_takes_the_indexed_path_and_still_finds_every_secret() -> None:
    """Past the small linear scan the registry looks secrets up by their last characters (so a
    redact costs the length of the line, not the size of the registry): with it full, the right
    secrets are still found and nothing else is touched. (Its cost is not timed here.)"""
    with request_scoped_secrets():
        for number in range(errors.MAX_REQUEST_SECRETS):
            register_secret(f"cost-check-{number:08d}")
    assert errors.registered_secret_count() > errors._LINEAR_SEARCH_MAX
    line = "upstream 500 for cost-check-00004095 and cost-check-00000007x in 1.23 s " * 3
    assert redact(line) == "upstream 500 for *** and ***x in 1.23 s " * 3
    assert redact("generation failed: upstream 500 in 1.23 s") == "generation failed: upstream 500 in 1.23 s"


def test_overlapping_secrets_longest_first() -> None:
    register_secret("abcdef123456")
    register_secret("abcdef123456789")
    assert redact("k=abcdef123456789 and abcdef123456") == "k=*** and ***"
