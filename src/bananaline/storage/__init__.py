"""Storage: one interface over OpenDAL (fs, s3, oss, memory), content-addressed keys, derivatives, spool.

>>> store = ImageStore.from_url("s3://bucket/images?endpoint=http://127.0.0.1:9000", settings=settings)
>>> stored = await store.put_image(png_bytes, mime="image/png", metadata={"prompt": "a banana"})
>>> stored.status, stored.key
('stored', 'images/2025/01/31/<sha256>.png')
"""

from .results import FlushReport, StoredImage
from .spool import Spool, SpoolEntry
from .store import ImageStore
from .urls import StoreLocation, parse_store_url, redacted_store_url

__all__ = [
    "FlushReport",
    "ImageStore",
    "Spool",
    "SpoolEntry",
    "StoreLocation",
    "StoredImage",
    "parse_store_url",
    "redacted_store_url",
]
