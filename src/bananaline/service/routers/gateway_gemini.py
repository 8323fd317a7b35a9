"""Gemini-native gateway: ``POST /v1beta/models/{model}:generateContent`` with Google's own shapes,
so google-genai (``http_options=HttpOptions(base_url=…)``) works unchanged with a service token
in place of the Google key (it sends ``x-goog-api-key``)."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from ...types import GenerationResult
from ..generation import build_request
from .gateway_common import check_model_name, generate

router = APIRouter(tags=["gateway"])

GEMINI_API_VERSIONS = ("v1beta", "v1")


class _Camel(BaseModel):
    """Google's JSON is camelCase; its REST docs and some clients use snake_case. Accept both."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")


class InlineData(_Camel):
    mime_type: str = Field("image/png", max_length=100)
    data: str = Field(description="base64 image bytes")


class FileData(_Camel):
    mime_type: str | None = Field(None, max_length=100)
    file_uri: str = Field(max_length=4096, description="http(s) URL of a reference image")


class Part(_Camel):
    text: str | None = None
    inline_data: InlineData | None = None
    file_data: FileData | None = None
    thought: bool | None = None


class Content(_Camel):
    role: str | None = Field(None, max_length=20)
    parts: list[Part] = Field(default_factory=list, max_length=64)


class ImageConfig(_Camel):
    aspect_ratio: str | None = Field(None, max_length=16)
    image_size: str | None = Field(None, max_length=16)


class GenerationConfig(_Camel):
    response_modalities: list[str] | None = None
    image_config: ImageConfig | None = None


class GenerateContentRequest(_Camel):
    contents: list[Content] = Field(min_length=1, max_length=64)
    generation_config: GenerationConfig | None = None
    system_instruction: Content | None = None


class ResponseInlineData(BaseModel):
    mimeType: str
    data: str


class ResponsePart(BaseModel):
    text: str | None = None
    inlineData: ResponseInlineData | None = None


class ResponseContent(BaseModel):
    role: str
    parts: list[ResponsePart]


class Candidate(BaseModel):
    content: ResponseContent
    finishReason: str
    index: int


class UsageMetadata(BaseModel):
    promptTokenCount: int | None = None
    candidatesTokenCount: int | None = None
    totalTokenCount: int | None = None


class GenerateContentResponse(BaseModel):
    candidates: list[Candidate]
    usageMetadata: UsageMetadata
    modelVersion: str
    responseId: str


def _to_generation_request(model: str, body: GenerateContentRequest) -> Any:
    texts: list[str] = []
    references: list[str] = []
    for content in body.contents:
        for part in content.parts:
            if part.thought:
                continue
            if part.text and (content.role or "user") != "model":
                texts.append(part.text)
            if part.inline_data is not None:
                references.append(f"data:{part.inline_data.mime_type};base64,{part.inline_data.data}")
            if part.file_data is not None:
                references.append(part.file_data.file_uri)
    image_config = body.generation_config.image_config if body.generation_config else None
    return build_request(
        prompt="\n".join(texts),
        references=references,
        model=check_model_name(model),
        aspect_ratio=image_config.aspect_ratio if image_config else None,
        image_size=image_config.image_size if image_config else None,
        status=400,
    )


def _response(result: GenerationResult) -> dict[str, Any]:
    parts: list[dict[str, Any]] = []
    if result.text:
        parts.append({"text": result.text})
    for image in result.images:
        parts.append(
            {"inlineData": {"mimeType": image.mime, "data": base64.b64encode(image.data).decode("ascii")}}
        )
    usage = result.usage
    return {
        "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {
            "promptTokenCount": usage.prompt_tokens,
            "candidatesTokenCount": usage.candidates_tokens,
            "totalTokenCount": usage.total_tokens,
        },
        "modelVersion": result.request.model,
        "responseId": uuid.uuid4().hex,
    }


def _headers(result: GenerationResult) -> dict[str, str]:
    urls = [
        image.url for image in result.images if image.url and image.url.startswith(("http://", "https://"))
    ]
    headers = {
        "X-Bananaline-Attempts": str(result.attempts),
        "X-Bananaline-Elapsed-S": f"{result.elapsed_s:.3f}",
    }
    if urls:
        headers["X-Bananaline-Image-Url"] = urls[0]
    if result.warnings:
        headers["X-Bananaline-Warnings"] = ",".join(result.warnings)
    return headers


_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"description": "Google-style error; details[0].reason is the bananaline error kind"}
    for code in (400, 401, 402, 422, 429, 502, 504)
}


async def generate_content(model: str, body: GenerateContentRequest, request: Request) -> JSONResponse:
    result = await generate(request, _to_generation_request(model, body), source="gateway_gemini")
    return JSONResponse(_response(result), headers=_headers(result))


async def stream_generate_content(
    model: str, body: GenerateContentRequest, request: Request
) -> StreamingResponse:
    result = await generate(request, _to_generation_request(model, body), source="gateway_gemini")
    payload = json.dumps(_response(result))
    sse = request.query_params.get("alt") == "sse"

    async def chunks() -> Any:
        yield f"data: {payload}\r\n\r\n" if sse else f"[{payload}]"

    media_type = "text/event-stream" if sse else "application/json"
    return StreamingResponse(chunks(), media_type=media_type, headers=_headers(result))


# google-genai 1.x calls /v1beta, 3.x defaults to /v1: serve both with the same handlers.
for _version in GEMINI_API_VERSIONS:
    _suffix = "" if _version == "v1beta" else f"_{_version}"
    router.add_api_route(
        f"/{_version}/models/{{model}}:generateContent",
        generate_content,
        methods=["POST"],
        operation_id=f"gemini_generate_content{_suffix}",
        summary=f"Gemini generateContent ({_version}, gateway)",
        description="Google's request and response shapes. Auth: x-goog-api-key or Bearer = service token.",
        response_model=GenerateContentResponse,
        responses=_RESPONSES,
    )
    router.add_api_route(
        f"/{_version}/models/{{model}}:streamGenerateContent",
        stream_generate_content,
        methods=["POST"],
        operation_id=f"gemini_stream_generate_content{_suffix}",
        summary=f"Gemini streamGenerateContent ({_version}, gateway, one chunk)",
        description="Server-sent events (alt=sse) with the whole answer in one chunk.",
        response_model=GenerateContentResponse,
        responses=_RESPONSES,
    )
