"""The workflow plugin node (Coze, Dify, n8n, Feishu): the seed plugin's inputs and outputs over HTTP.

``POST /v1/plugin/generate`` takes ``cleantext, fileurls[], aspect_ratio, resolution`` (+ optional
``apikey``, ``model``) and answers ``analysis, url, error`` (+ ``error_kind, warnings, task_id,
status, urls``). It waits up to ``plugin_wait_s`` (workflow platforms cut calls at ~180 s); past
that it answers ``status: running`` and the generation goes on, to be read with
``GET /v1/tasks/{task_id}``, which answers the same shape.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ...errors import ErrorKind
from ...types import GenerationRequest, GenerationResult
from ..deps import files_base_url, get_state, resolve_principal
from ..generation import summary_of
from ..http_errors import CLIENT_ERROR_KINDS, ServiceError, not_found, status_for_kind

router = APIRouter(tags=["plugin"])

SUCCESS, FAILURE, RUNNING = "图片生成成功", "图片生成失败", "图片生成中"
_SPLIT_URLS = re.compile(r"[\s,，]+")


class PluginRequest(BaseModel):
    """The seed plugin's inputs, flat, so Coze and Dify map them to tool parameters one to one."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "example": {
                "cleantext": "一根香蕉放在大理石桌面上，棚拍光 / a banana on a marble desk, studio light",
                "fileurls": [],
                "aspect_ratio": "16:9",
                "resolution": "1K",
            }
        },
    )

    cleantext: str = Field(
        min_length=1,
        max_length=20000,
        description="提示词：要生成的画面，或如何修改参考图。"
        "Prompt: what to draw, or how to edit the reference images.",
    )
    fileurls: list[str] = Field(
        default_factory=list,
        max_length=14,
        description="参考图链接（http/https 或 data: URI），可为空；有参考图即为图生图。"
        "Reference image URLs (http(s) or data: URIs); empty = text-to-image, any = image edit.",
    )
    aspect_ratio: str = Field(
        "",
        max_length=16,
        description="宽高比，如 1:1、16:9、9:16、21:9；留空由模型决定。"
        "Aspect ratio such as 1:1, 16:9, 9:16; empty = model default.",
    )
    resolution: str = Field(
        "",
        max_length=16,
        description="分辨率：512、1K、2K 或 4K（视模型而定）；留空为 1K。"
        "Image size: 512, 1K, 2K or 4K (depends on the model); empty = 1K.",
    )
    apikey: str = Field(
        "",
        max_length=512,
        description="可选：你自己的上游 API 密钥，仅用于本次调用，不保存、不记录。"
        "Optional: your own upstream API key, used for this call only, never stored or logged.",
    )
    model: str = Field(
        "",
        max_length=200,
        description="可选：模型名，如 gemini-3-pro-image-preview；留空用服务默认模型。"
        "Optional model name, e.g. gemini-3-pro-image-preview; empty = the service default.",
    )

    @field_validator("cleantext", "aspect_ratio", "resolution", "apikey", "model", mode="before")
    @classmethod
    def _null_is_empty(cls, value: Any) -> Any:
        return "" if value is None else value

    @field_validator("fileurls", mode="before")
    @classmethod
    def _urls_from_text(cls, value: Any) -> Any:
        """Workflow nodes sometimes pass one string of URLs separated by newlines or commas."""
        if value is None:
            return []
        if isinstance(value, str):
            return [part for part in _SPLIT_URLS.split(value) if part]
        return value


class PluginResponse(BaseModel):
    """The seed plugin's outputs plus what a workflow needs to branch and to poll."""

    analysis: str = Field(
        description="结果：图片生成成功 / 图片生成失败 / 图片生成中。"
        "Outcome: success / failure / still running."
    )
    url: str = Field(description="第一张图片的链接，失败时为空。URL of the first image; empty on failure.")
    urls: list[str] = Field(description="全部图片链接。All image URLs.")
    error: str = Field(
        description="失败原因（中文 / English），成功时为空。"
        "Why it failed, in Chinese and English; empty on success."
    )
    error_kind: str = Field(
        description="稳定的错误类型，如 prompt_blocked、rate_limited。"
        "Stable error kind, e.g. prompt_blocked, rate_limited."
    )
    warnings: list[str] = Field(
        description="输出检查警告，如 size_mismatch。Output-check warnings, e.g. size_mismatch."
    )
    task_id: str = Field(description="任务 ID，用于查询结果。Task id, for GET /v1/tasks/{task_id}.")
    status: str = Field(description="done / failed / running")


def _answer(task_id: str, result: GenerationResult) -> dict[str, Any]:
    urls = [
        image.url for image in result.images if image.url and image.url.startswith(("http://", "https://"))
    ]
    if result.ok and urls:
        return {
            "analysis": SUCCESS,
            "url": urls[0],
            "urls": urls,
            "error": "",
            "error_kind": "",
            "warnings": list(result.warnings),
            "task_id": task_id,
            "status": "done",
        }
    if result.ok:
        message_zh, message, kind = (
            "图片已生成但无法保存，请稍后重试",
            "the image was made but could not be stored",
            "storage",
        )
    else:
        assert result.error is not None
        message_zh, message, kind = result.error.message_zh, result.error.message, result.error.kind.value
    return {
        "analysis": FAILURE,
        "url": "",
        "urls": [],
        "error": f"{message_zh} / {message}",
        "error_kind": kind,
        "warnings": list(result.warnings),
        "task_id": task_id,
        "status": "failed",
    }


def _running(task_id: str) -> dict[str, Any]:
    return {
        "analysis": RUNNING,
        "url": "",
        "urls": [],
        "error": "",
        "error_kind": "",
        "warnings": [],
        "task_id": task_id,
        "status": "running",
    }


_INTERRUPTIONS = {
    "service_stopped": (
        "服务在图片完成前停止，请重试",
        "the service stopped before the image was ready; please retry",
    ),
    "service_restarted": (
        "服务重启，图片生成已中断，请重试",
        "the service restarted while the image was being made; please retry",
    ),
}


def interrupted_answer(detail: str) -> dict[str, Any]:
    """What a plugin task records when it cannot finish: ``internal`` (the service failed, not the
    request nor the upstream) with the reason in the message, so a workflow can simply retry."""
    message_zh, message = _INTERRUPTIONS.get(
        detail, ("内部错误，图片生成已中断，请重试", "an internal error stopped the generation; please retry")
    )
    return {
        "analysis": FAILURE,
        "url": "",
        "urls": [],
        "error": f"{message_zh} / {message} ({detail})",
        "error_kind": ErrorKind.INTERNAL.value,
        "warnings": [],
        "status": "failed",
    }


def _http_status(answer: dict[str, Any]) -> int:
    kind = answer.get("error_kind") or ""
    if answer.get("status") == "failed" and kind in {k.value for k in CLIENT_ERROR_KINDS}:
        return status_for_kind(kind)
    return 200


_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": PluginResponse, "description": "no service token and no apikey / 未认证"},
    402: {"model": PluginResponse, "description": "budget exhausted / 预算已用尽"},
    422: {"model": PluginResponse, "description": "invalid input / 参数无效"},
    429: {"model": PluginResponse, "description": "caller rate limit / 调用频率超限"},
}


@router.post(
    "/v1/plugin/generate",
    operation_id="generate_image",
    summary="生成或编辑图片 / Generate or edit an image",
    description="文生图（无参考图）或图生图（有参考图）。最长等待 plugin_wait_s 秒，"
    "超时返回 task_id 与 status=running，"
    "之后用 GET /v1/tasks/{task_id} 查询。Text-to-image, or image edit when fileurls are given. Waits up to "
    "plugin_wait_s seconds, then answers status=running with a task_id to poll.",
    response_model=PluginResponse,
    responses=_ERROR_RESPONSES,
)
async def generate_image(body: PluginRequest, request: Request) -> JSONResponse:
    state = get_state(request)
    principal = await resolve_principal(request, body.apikey or None)
    assert principal is not None
    try:
        generation_request = GenerationRequest(
            prompt=body.cleantext,
            references=tuple(body.fileurls),
            model=body.model.strip() or state.settings.model,
            aspect_ratio=body.aspect_ratio or None,
            image_size=body.resolution or None,
        )
    except ValidationError as exc:
        problems = "; ".join(str(error["msg"]) for error in exc.errors())
        raise ServiceError(
            422, ErrorKind.INVALID_INPUT.value, f"invalid request: {problems}", f"请求参数无效：{problems}"
        ) from None
    admission = await state.generation.admit(principal, generation_request)
    base_url = files_base_url(request)

    async def work(task_id: str) -> dict[str, Any]:
        result = await state.generation.run(
            admission, source="plugin", files_base_url=base_url, task_id=task_id
        )
        return _answer(task_id, result)

    task_id = await state.tasks.submit(
        owner=principal.owner,
        kind="plugin",
        request_summary=summary_of(generation_request),
        work=work,
    )
    answer = await state.tasks.wait(task_id, state.settings.plugin_wait_s)
    if answer is None:
        return JSONResponse(_running(task_id))
    return JSONResponse(answer, status_code=_http_status(answer))


@router.get(
    "/v1/tasks/{task_id}",
    operation_id="get_task",
    summary="查询任务结果 / Get a generation task",
    description="返回与 generate_image 相同的结构；任务仍在进行时 status=running。"
    "Same shape as generate_image; status=running while the image is still being made.",
    response_model=PluginResponse,
    responses={
        404: {"model": PluginResponse, "description": "unknown task, or another caller's / 任务不存在"}
    },
)
async def get_task(task_id: str, request: Request) -> JSONResponse:
    state = get_state(request)
    record = await state.tasks.get(task_id)
    if record is None:
        raise not_found("task")
    if record.owner is not None:
        principal = await resolve_principal(request, required=False)
        if principal is None or principal.owner != record.owner:
            raise not_found("task")
    if record.status == "running" or record.response is None:
        return JSONResponse(_running(record.id))
    answer = dict(record.response)
    answer["task_id"] = record.id
    return JSONResponse(answer)
