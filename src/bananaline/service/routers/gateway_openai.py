"""OpenAI-compatible gateway: ``POST /v1/chat/completions`` and ``POST /v1/images/generations``.

The openai SDK works unchanged (``OpenAI(base_url=…/v1, api_key=<service token>)``). Chat answers
carry the image as a markdown data URI in ``message.content`` (what relays do) and in
``message.images[]``; image generations answer ``b64_json`` or a stored ``url``. Aspect ratio and
size come from ``size`` (``1024x1024``, ``1K``, ``16:9``) or the extra fields ``aspect_ratio`` /
``image_size`` / ``image_config``. Errors are OpenAI-shaped with ``code`` = the bananaline kind.
With ``n > 1`` the images made are answered even if others failed (headers
``X-Bananaline-Images-Failed`` / ``X-Bananaline-Error-Kind`` say so); the error only when none was.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import re
import time
import uuid
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ... import catalog
from ...errors import ErrorKind, GenerationError
from ...logs import get_logger
from ...types import GenerationResult
from ..deps import get_state
from ..generation import build_request
from ..http_errors import ServiceError
from .gateway_common import check_model_name, data_uri, generate

router = APIRouter(tags=["gateway"])
log = get_logger("bananaline.service.gateway")

_SCALE = {"512": 0.5, "1K": 1.0, "2K": 2.0, "4K": 4.0}
_PIXELS = re.compile(r"^\s*(\d{2,5})\s*[xX×]\s*(\d{2,5})\s*$")


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ImageUrl(_Open):
    url: str = Field(max_length=60_000_000)


class ContentPart(_Open):
    type: str = Field(max_length=40)
    text: str | None = None
    image_url: ImageUrl | None = None


class ChatMessage(_Open):
    role: str = Field(max_length=20)
    content: str | list[ContentPart] | None = None


class ImageOptions(_Open):
    aspect_ratio: str | None = Field(None, max_length=16)
    image_size: str | None = Field(None, max_length=16)


class ChatCompletionRequest(_Open):
    model: str = Field(max_length=128)
    messages: list[ChatMessage] = Field(min_length=1, max_length=64)
    stream: bool | None = False
    aspect_ratio: str | None = Field(None, max_length=16, description="bananaline extra: e.g. 16:9")
    image_size: str | None = Field(None, max_length=16, description="bananaline extra: 512, 1K, 2K, 4K")
    image_config: ImageOptions | None = None


class ImageGenerationRequest(_Open):
    prompt: str = Field(min_length=1, max_length=32000)
    model: str | None = Field(None, max_length=128)
    n: int | None = Field(1, ge=1, le=4)
    size: str | None = Field(
        None, max_length=16, description="1024x1024, 1K/2K/4K, a ratio such as 16:9, or auto"
    )
    response_format: Literal["url", "b64_json"] | None = None
    aspect_ratio: str | None = Field(None, max_length=16)
    image_size: str | None = Field(None, max_length=16)


class ChatResponseMessage(BaseModel):
    role: str
    content: str
    images: list[dict[str, Any]]


class ChatChoice(BaseModel):
    index: int
    message: ChatResponseMessage
    finish_reason: str


class ChatUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: str
    created: int
    model: str
    choices: list[ChatChoice]
    usage: ChatUsage


class ImageDatum(BaseModel):
    url: str | None = None
    b64_json: str | None = None
    revised_prompt: str | None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageDatum]


_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"description": "OpenAI-style error; error.code is the bananaline error kind"}
    for code in (400, 401, 402, 422, 429, 502, 504)
}


def _messages_to_request(body: ChatCompletionRequest) -> tuple[str, list[str]]:
    texts: list[str] = []
    references: list[str] = []
    for message in body.messages:
        if message.role == "assistant" or message.content is None:
            continue
        if isinstance(message.content, str):
            texts.append(message.content)
            continue
        for part in message.content:
            if part.type == "text" and part.text:
                texts.append(part.text)
            elif part.type == "image_url" and part.image_url is not None:
                references.append(part.image_url.url)
    return "\n".join(texts), references


def _usage(result: GenerationResult) -> dict[str, int]:
    usage = result.usage
    prompt = usage.prompt_tokens or 0
    completion = usage.candidates_tokens or 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": usage.total_tokens or prompt + completion,
    }


@router.post(
    "/v1/chat/completions",
    operation_id="openai_chat_completions",
    summary="OpenAI chat completions (image gateway)",
    response_model=ChatCompletion,
    responses=_RESPONSES,
)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    prompt, references = _messages_to_request(body)
    options = body.image_config or ImageOptions()
    generation_request = build_request(
        prompt=prompt,
        references=references,
        model=check_model_name(body.model),
        aspect_ratio=body.aspect_ratio or options.aspect_ratio,
        image_size=body.image_size or options.image_size,
        status=400,
    )
    result = await generate(request, generation_request, source="gateway_openai")
    uris = [data_uri(image.mime, image.data) for image in result.images]
    content = "\n\n".join([*([result.text] if result.text else []), *(f"![image]({uri})" for uri in uris)])
    images = [{"type": "image_url", "image_url": {"url": uri}} for uri in uris]
    completion_id, created = "chatcmpl-" + uuid.uuid4().hex, int(time.time())
    if body.stream:
        return _stream(completion_id, created, generation_request.model, content, images)
    return JSONResponse(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": generation_request.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "images": images},
                    "finish_reason": "stop",
                }
            ],
            "usage": _usage(result),
        }
    )


def _stream(
    completion_id: str, created: int, model: str, content: str, images: list[dict[str, Any]]
) -> StreamingResponse:
    def chunk(delta: dict[str, Any], finish: str | None) -> str:
        payload = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return f"data: {json.dumps(payload)}\n\n"

    async def events() -> Any:
        yield chunk({"role": "assistant", "content": content, "images": images}, None)
        yield chunk({}, "stop")
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


def parse_size(size: str | None, model: str) -> tuple[str | None, str | None]:
    """OpenAI's ``size`` to (aspect ratio, image size) for ``model``: the nearest ratio, then the size
    class whose documented long edge is nearest to the requested one."""
    if not size or size.strip().lower() == "auto":
        return None, None
    spec = catalog.get_model(model)
    ratios = spec.ratios if spec else catalog.BASE_RATIOS
    sizes = spec.sizes if spec else catalog.SIZES_ORDER
    match = _PIXELS.match(size)
    if match:
        width, height = int(match.group(1)), int(match.group(2))
        if not width or not height:
            raise _bad_size(size)
        target = math.log(width / height)
        ratio = min(ratios, key=lambda r: abs(math.log(int(r.split(":")[0]) / int(r.split(":")[1])) - target))
        long_edge = max(width, height)

        def distance(size_class: str) -> float:
            pixels = spec.expected_pixels(ratio, size_class) if spec else None
            produced = max(pixels) if pixels else 1024 * _SCALE.get(size_class, 1.0)
            return abs(produced - long_edge)

        return ratio, min(sizes, key=distance)
    normalized = catalog.normalize_size(size)
    if normalized in catalog.SIZES_ORDER:
        return None, normalized
    if ":" in size or "：" in size:
        return catalog.normalize_ratio(size), None
    raise _bad_size(size)


def _bad_size(size: str) -> ServiceError:
    return ServiceError(
        400,
        ErrorKind.INVALID_INPUT.value,
        f"size {size[:40]!r} is not understood: "
        "use WIDTHxHEIGHT, 512/1K/2K/4K, a ratio such as 16:9, or auto",
        f"无法识别 size {size[:40]!r}：请用 宽x高、512/1K/2K/4K、如 16:9 的宽高比，或 auto",
    )


@router.post(
    "/v1/images/generations",
    operation_id="openai_images_generations",
    summary="OpenAI images generations (gateway)",
    response_model=ImagesResponse,
    responses=_RESPONSES,
)
async def images_generations(body: ImageGenerationRequest, request: Request) -> JSONResponse:
    model = check_model_name(body.model or get_state(request).settings.model)
    ratio, size_class = parse_size(body.size, model)
    generation_request = build_request(
        prompt=body.prompt,
        references=[],
        model=model,
        aspect_ratio=body.aspect_ratio or ratio,
        image_size=body.image_size or size_class,
        status=400,
    )
    count = body.n or 1
    results = await asyncio.gather(
        *(generate(request, generation_request, source="gateway_openai") for _ in range(count)),
        return_exceptions=True,
    )
    made = [result for result in results if isinstance(result, GenerationResult)]
    failures = [result for result in results if isinstance(result, BaseException)]
    if not made:
        raise failures[0]
    headers = _partial_failure_headers(failures, requested=count, made=len(made))
    data: list[dict[str, Any]] = []
    for result in made:
        for image in result.images:
            if body.response_format == "b64_json":
                data.append(
                    {"b64_json": base64.b64encode(image.data).decode("ascii"), "revised_prompt": None}
                )
                continue
            if not image.url or not image.url.startswith(("http://", "https://")):
                raise ServiceError(
                    503,
                    ErrorKind.STORAGE.value,
                    "the image was made but has no URL; ask for b64_json",
                    "图片已生成但没有可用链接，请改用 b64_json",
                )
            data.append({"url": image.url, "revised_prompt": None})
    return JSONResponse({"created": int(time.time()), "data": data}, headers=headers)


def _partial_failure_headers(failures: list[BaseException], *, requested: int, made: int) -> dict[str, str]:
    """With ``n > 1``, the images that were made are answered (they were paid for) even when
    others failed; OpenAI's shape has no room for the failures, so headers say what went wrong."""
    if not failures:
        return {}
    kinds = []
    for failure in failures:
        if isinstance(failure, ServiceError | GenerationError):
            kinds.append(str(failure.kind))
        else:  # a bug, not a generation outcome: keep its traceback, answer what was made
            log.error("images_generation_crashed", exc_info=failure)
            kinds.append(ErrorKind.INTERNAL.value)
    log.warning("images_partial", requested=requested, made=made, failed=len(failures), error_kinds=kinds)
    return {"X-Bananaline-Images-Failed": str(len(failures)), "X-Bananaline-Error-Kind": kinds[0]}
