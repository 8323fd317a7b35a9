"""Object keys. Content-addressed so that the same bytes always land in one place.

::

    [prefix/]YYYY/MM/DD/<sha256>.<ext>               the delivered bytes, real extension
    [prefix/]YYYY/MM/DD/<sha256>.json                metadata (prompt, model, usage, derivative keys...)
    [prefix/]YYYY/MM/DD/<sha256>.compressed.jpg      long edge <= 4500 px, JPEG
    [prefix/]YYYY/MM/DD/<sha256>.thumb.webp          512 px long edge, WebP
    [prefix/]index/<sha256[:2]>/<sha256>             pointer: JSON {"key": ...}, written last

The date is the UTC date of the first store. The index pointer maps a sha256 to that key on any
later day; it is written after the image, derivatives and metadata, so its existence means the
whole set is complete.
"""

from __future__ import annotations

import re
from datetime import datetime

INDEX_DIR = "index"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_IMAGE_KEY = re.compile(
    r"^(?:(?P<prefix>.+)/)?(?P<date>\d{4}/\d{2}/\d{2})/(?P<sha>[0-9a-f]{64})\.(?P<ext>[a-z0-9]+)$"
)


def _join(prefix: str, rest: str) -> str:
    return f"{prefix}/{rest}" if prefix else rest


def is_sha256(value: str) -> bool:
    return bool(_SHA256.match(value))


def image_key(prefix: str, sha256: str, extension: str, when: datetime) -> str:
    return _join(prefix, f"{when:%Y/%m/%d}/{sha256}.{extension}")


def _stem(key: str) -> str:
    match = _IMAGE_KEY.match(key)
    if not match:
        raise ValueError(f"not an image key: {key!r}")
    return key[: -(len(match.group("ext")) + 1)]


def metadata_key(key: str) -> str:
    return _stem(key) + ".json"


def compressed_key(key: str) -> str:
    return _stem(key) + ".compressed.jpg"


def thumbnail_key(key: str) -> str:
    return _stem(key) + ".thumb.webp"


def index_key(prefix: str, sha256: str) -> str:
    return _join(prefix, f"{INDEX_DIR}/{sha256[:2]}/{sha256}")


def is_internal(key: str, prefix: str) -> bool:
    """Bookkeeping objects that :meth:`ImageStore.list` hides: index pointers and temp files."""
    relative = key[len(prefix) + 1 :] if prefix and key.startswith(prefix + "/") else key
    return relative.startswith(f"{INDEX_DIR}/") or relative.startswith(".")
