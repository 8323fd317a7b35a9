"""``data:`` URIs are decoded bounded in size and memory, and off the event loop when large (issue 8)."""

from __future__ import annotations

import base64
import threading
import tracemalloc
from urllib.parse import quote_from_bytes

import pytest

from bananaline import references
from bananaline.errors import GenerationError
from bananaline.references import _decode_data_uri

LIMIT = 1_000_000
_B64 = base64.b64encode(bytes(range(256)) * 10).decode()


def _detail(error: pytest.ExceptionInfo[GenerationError]) -> str | None:
    return error.value.detail


@pytest.mark.parametrize(
    "uri",
    [
        "data:image/png;base64," + base64.b64encode(bytes(range(256)) * 10).decode(),
        "data:image/png;base64," + base64.urlsafe_b64encode(bytes(range(256)) * 10).decode().rstrip("="),
        "data:image/png;base64," + quote_from_bytes(base64.b64encode(bytes(range(256)) * 10), safe=""),
        "data:image/png;base64," + "\n".join(_B64[i : i + 76] for i in range(0, len(_B64), 76)),
        "data:image/png," + quote_from_bytes(bytes(range(256)) * 10, safe=""),
    ],
    ids=["base64", "urlsafe", "percent-base64", "wrapped-base64", "percent-raw"],
)
def test_every_encoding_round_trips(uri: str) -> None:
    assert _decode_data_uri(uri, "label", LIMIT) == bytes(range(256)) * 10


def test_chunk_boundaries_never_split_an_escape(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(references, "_DATA_URI_CHUNK_CHARS", 7)
    payload = bytes(range(256)) * 3
    for prefix in ("", "a", "ab"):
        uri = "data:image/png," + prefix + quote_from_bytes(payload, safe="")
        assert _decode_data_uri(uri, "label", LIMIT) == prefix.encode() + payload


def test_refused_before_decoding_when_it_must_exceed_the_limit() -> None:
    uri = "data:image/png;base64," + "A" * (LIMIT * 2)
    tracemalloc.start()
    try:
        with pytest.raises(GenerationError) as error:
            _decode_data_uri(uri, "label", LIMIT)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert _detail(error) == "too_large"
    assert peak < 64 * 1024  # nothing was decoded


@pytest.mark.parametrize("header", ["data:image/png,", "data:image/png;base64,"])
def test_percent_escapes_decode_in_bounded_memory(header: str) -> None:
    """24 MB of ``%41`` (the smallest decoded size cannot be known up front for base64): decoding
    stops at the limit; the old decoder split the whole URI into millions of small objects
    (+1.9 GB in the service)."""
    uri = header + "%41" * (8 * 1024 * 1024)
    limit = 200_000
    tracemalloc.start()
    try:
        with pytest.raises(GenerationError) as error:
            _decode_data_uri(uri, "label", limit)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert _detail(error) == "too_large"
    assert peak < 4 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"


def test_within_the_limit_memory_is_about_the_decoded_size() -> None:
    uri = "data:image/png," + "%41" * (1024 * 1024)
    tracemalloc.start()
    try:
        decoded = _decode_data_uri(uri, "label", LIMIT * 2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert decoded == b"A" * (1024 * 1024)
    assert peak < 4 * len(decoded), f"peak {peak / 1e6:.1f} MB for {len(decoded) / 1e6:.1f} MB"


def test_invalid_base64_is_not_an_image() -> None:
    with pytest.raises(GenerationError) as error:
        _decode_data_uri("data:image/png;base64,@@@@", "label", LIMIT)
    assert _detail(error) == "not_an_image"


async def test_large_data_uris_are_decoded_in_a_worker_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[str] = []
    original = references._decode_data_uri

    def spy(source: str, label: str, limit: int) -> bytes:
        threads.append(threading.current_thread().name)
        return original(source, label, limit)

    monkeypatch.setattr(references, "_decode_data_uri", spy)
    from bananaline.config import Settings

    settings = Settings()
    small = "data:image/png,%41%42"
    large = "data:image/png," + "%41" * references.DATA_URI_INLINE_DECODE_CHARS
    for source in (small, large):
        assert await references._load_raw(
            source, settings=settings, client=None, resolver=None, allow_paths=False
        )
    assert threads[0] == threading.current_thread().name
    assert threads[1] != threading.current_thread().name
