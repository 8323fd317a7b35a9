"""What both gateway flavours share: admit, generate, and turn a failure into a ServiceError."""

from __future__ import annotations

import base64
import re

from fastapi import Request

from ...errors import ErrorKind
from ...types import GenerationRequest, GenerationResult
from ..deps import files_base_url, get_state, resolve_principal
from ..http_errors import ServiceError

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$")


def check_model_name(model: str) -> str:
    name = model.removeprefix("models/")
    if not _MODEL_NAME.match(name):
        raise ServiceError(
            400,
            ErrorKind.INVALID_INPUT.value,
            f"invalid model name {model[:80]!r}",
            f"模型名无效：{model[:80]!r}",
        )
    return name


async def generate(
    request: Request, generation_request: GenerationRequest, *, source: str
) -> GenerationResult:
    """Run one generation for a gateway call; a failed one raises as the protocol's error."""
    state = get_state(request)
    principal = await resolve_principal(request)
    admission = await state.generation.admit(principal, generation_request)
    result = await state.generation.run(admission, source=source, files_base_url=files_base_url(request))
    if result.error is not None:
        raise ServiceError.from_generation_error(result.error)
    if not result.images:
        raise ServiceError(502, ErrorKind.NO_PARTS.value, "the model returned no image", "模型没有返回图片")
    return result


def data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
