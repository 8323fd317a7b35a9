"""bananaline: dependable image generation with Google's Nano Banana models.

The public API is exactly ``__all__``. Names load on first use, so ``import bananaline.catalog``
does not pull in httpx, Pillow and the protocol decoders.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "MODELS": "catalog",
    "ModelSpec": "catalog",
    "ImageClient": "client",
    "SyncImageClient": "client",
    "Settings": "config",
    "get_settings": "config",
    "ErrorKind": "errors",
    "GenerationError": "errors",
    "GeneratedImage": "types",
    "GenerationRequest": "types",
    "GenerationResult": "types",
    "Usage": "types",
    "WireProtocol": "types",
}

__all__ = [
    "MODELS",
    "ErrorKind",
    "GeneratedImage",
    "GenerationError",
    "GenerationRequest",
    "GenerationResult",
    "ImageClient",
    "ModelSpec",
    "Settings",
    "SyncImageClient",
    "Usage",
    "WireProtocol",
    "get_settings",
]

if TYPE_CHECKING:
    from .catalog import MODELS, ModelSpec
    from .client import ImageClient, SyncImageClient
    from .config import Settings, get_settings
    from .errors import ErrorKind, GenerationError
    from .types import GeneratedImage, GenerationRequest, GenerationResult, Usage, WireProtocol


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'bananaline' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module_name}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
