"""The workflow plugin node (Coze, Dify, n8n, Feishu): the seed plugin's inputs and outputs over HTTP.

``POST /v1/plugin/generate`` takes ``cleantext, fileurls[], aspect_ratio, resolution`` (+ optional
``apikey``, ``model``, ``wait_s``) and answers ``analysis, url, error`` (+ ``error_kind, warnings,
task_id, status, urls``). It waits up to ``wait_s`` (at most ``plugin_wait_s``; workflow platforms
cut calls at 60-180 s); past that it answers ``status: running`` and the generation goes on, to be
read with ``GET /v1/tasks/{task_id}``, which answers the same shape.

:class:`PluginResponse` is the one builder of that answer: the HTTP routes, the task registry's
interrupted answer and the MCP tools all make it through its constructors, so every door answers
the same thing for the same task. :func:`start_plugin_task` and :func:`find_task` are the plugin
flow itself (admit, run as a task, wait; read back), shared by the HTTP routes and the MCP door.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from fastapi import APIRouter, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ...errors import ErrorKind, GenerationError
from ...types import GenerationRequest, GenerationResult
from ..auth import Principal
from ..deps import AppState, StateDep, files_base_url, optional_principal, resolve_principal
from ..generation import build_request, summary_of
from ..http_errors import CLIENT_ERROR_KINDS, ServiceError, not_found, status_for_kind

if TYPE_CHECKING:
    from ..tasks import TaskRecord

router = APIRouter(tags=["plugin"])

SUCCESS, FAILURE = "图片生成成功", "图片生成失败"
#: Every ``running`` answer starts with this, then says what to do next.
RUNNING = "图片生成中"
RUNNING_NEXT = (
    f"{RUNNING}：尚未完成，请用本次返回的 task_id 调用 get_task 获取结果（约每 10 秒一次，"
    "直到 status 为 done 或 failed）。Still running: call get_task with this task_id to get the image "
    "(every ~10 s, until status is done or failed)."
)
TASK_KIND = "plugin"
_SPLIT_URLS = re.compile(r"[\s,，]+")
_ABSOLUTE_URL = ("http://", "https://", "file://")


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
        description="留空即可。可选：你自己的上游 API 密钥，仅用于本次调用，不保存、不记录。"
        "Leave empty. Optional: your own upstream API key, used for this call only, never stored or logged.",
    )
    model: str = Field(
        "",
        max_length=200,
        description="可选：模型名，如 gemini-3-pro-image-preview；留空用服务默认模型。"
        "Optional model name, e.g. gemini-3-pro-image-preview; empty = the service default.",
    )
    wait_s: float | None = Field(
        None,
        ge=0,
        le=3600,
        description="可选：最多等待秒数，超时返回 status=running 与 task_id；"
        "留空或 0 为服务上限 plugin_wait_s。Dify 建议 50，Coze 留空。"
        "Optional: seconds to wait before answering status=running with a task_id; "
        "empty or 0 = the service's limit (plugin_wait_s), never more. Dify: 50, Coze: empty.",
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


# Built only through its constructors (from_result, failed, from_error, running, interrupted,
# from_task), whichever door asks. The docstring is the schema's public description.
class PluginResponse(BaseModel):
    """The seed plugin's outputs plus what a workflow needs to branch and to poll."""

    analysis: str = Field(
        description="结果：图片生成成功 / 图片生成失败 / 图片生成中（并说明下一步）。"
        "Outcome: success / failure / still running (and what to do next)."
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
    task_id: str = Field(description="任务 ID，用于 get_task 查询结果。Task id, for get_task.")
    status: Literal["done", "failed", "running"] = Field(
        description="done（完成）/ failed（失败）/ running（进行中，稍后用 get_task 查询）。"
        "done / failed / running (call get_task later)."
    )

    # ---- constructors ----------------------------------------------------------------------------

    @classmethod
    def from_result(cls, task_id: str, result: GenerationResult) -> PluginResponse:
        """The answer for a finished generation: its absolute links, or why there is no image."""
        urls = [image.url for image in result.images if image.url and image.url.startswith(_ABSOLUTE_URL)]
        if result.ok and urls:
            return cls(
                analysis=SUCCESS,
                url=urls[0],
                urls=urls,
                error="",
                error_kind="",
                warnings=list(result.warnings),
                task_id=task_id,
                status="done",
            )
        if result.ok:
            kind = ErrorKind.STORAGE.value
            message = "the image was made but could not be stored"
            message_zh = "图片已生成但无法保存，请稍后重试"
        else:
            assert result.error is not None
            kind, message, message_zh = result.error.kind.value, result.error.message, result.error.message_zh
        return cls.failed(kind, message, message_zh, task_id=task_id, warnings=result.warnings)

    @classmethod
    def failed(
        cls,
        kind: str,
        message: str,
        message_zh: str | None = None,
        *,
        task_id: str = "",
        warnings: Sequence[str] = (),
    ) -> PluginResponse:
        error = f"{message_zh} / {message}" if message_zh and message_zh != message else message
        return cls(
            analysis=FAILURE,
            url="",
            urls=[],
            error=error,
            error_kind=kind,
            warnings=list(warnings),
            task_id=task_id,
            status="failed",
        )

    @classmethod
    def from_error(cls, error: GenerationError | ServiceError, *, task_id: str = "") -> PluginResponse:
        """A refusal before anything ran (admission, validation, authentication, unknown task)."""
        kind = error.kind.value if isinstance(error, GenerationError) else error.kind
        return cls.failed(kind, error.message, error.message_zh, task_id=task_id)

    @classmethod
    def running(cls, task_id: str) -> PluginResponse:
        return cls(
            analysis=RUNNING_NEXT,
            url="",
            urls=[],
            error="",
            error_kind="",
            warnings=[],
            task_id=task_id,
            status="running",
        )

    @classmethod
    def interrupted(cls, detail: str, *, task_id: str = "") -> PluginResponse:
        """A task that cannot finish: ``internal`` (the service failed, not the request nor the
        upstream) with the reason in the message, so a workflow can simply retry."""
        message_zh, message = _INTERRUPTIONS.get(detail, _INTERRUPTED_OTHERWISE)
        return cls.failed(ErrorKind.INTERNAL.value, f"{message} ({detail})", message_zh, task_id=task_id)

    @classmethod
    def from_task(cls, record: TaskRecord) -> PluginResponse:
        """What ``get_task`` answers for a stored task, on every door."""
        if record.status == "running" or record.response is None:
            return cls.running(record.id)
        stored = {**record.response, "task_id": record.id}
        try:
            return cls.model_validate(stored)
        except ValidationError:  # a row written by an older version or another task kind
            kind = str(stored.get("error_kind") or ErrorKind.INTERNAL.value)
            detail = str(stored.get("error") or stored.get("error_detail") or "task ended without an answer")
            return cls.failed(kind, detail, task_id=record.id)

    # ---- uses ------------------------------------------------------------------------------------

    def stored(self) -> dict[str, Any]:
        """The JSON a task row keeps (``get_task`` reads it back with :meth:`from_task`)."""
        return self.model_dump(mode="json")

    @property
    def http_status(self) -> int:
        """200, except the refusals a caller must fix (bad input, budget, rate): their 4xx."""
        if self.status == "failed" and self.error_kind in {kind.value for kind in CLIENT_ERROR_KINDS}:
            return status_for_kind(self.error_kind)
        return 200


_INTERRUPTED_OTHERWISE = (
    "内部错误，图片生成已中断，请重试",
    "an internal error stopped the generation; please retry",
)
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
    """What a plugin task records when it cannot finish (registered with the task registry)."""
    return PluginResponse.interrupted(detail).stored()


# ---- the plugin flow, shared by the HTTP routes and the MCP door -------------------------------------


def wait_for(state: AppState, wait_s: float | None) -> float:
    """How long a call waits before answering ``running``: what it asked, at most ``plugin_wait_s``.

    Empty or 0 means the service's limit: Coze Studio's workflow plugin node fills every input left
    empty with its type's zero (``field_fill.go``, ``inputValueFiller``), so 0 must not mean "do not wait".
    """
    limit = state.settings.plugin_wait_s
    return limit if not wait_s or wait_s <= 0 else min(wait_s, limit)


#: Sees each finished result before it is answered (the MCP door keeps the image bytes).
ResultHook = Callable[[GenerationResult], Awaitable[None]]


async def start_plugin_task(
    state: AppState,
    principal: Principal,
    request: GenerationRequest,
    *,
    files_base: str | None,
    wait_s: float,
    source: str,
    remote: bool = True,
    on_result: ResultHook | None = None,
) -> PluginResponse:
    """Admit (raises the refusal), run as a task that outlives the call, wait up to ``wait_s``."""
    admission = await state.generation.admit(principal, request, remote=remote)

    async def work(task_id: str) -> dict[str, Any]:
        result = await state.generation.run(
            admission, source=source, files_base_url=files_base, task_id=task_id
        )
        if on_result is not None:
            await on_result(result)
        return PluginResponse.from_result(task_id, result).stored()

    try:
        task_id = await state.tasks.submit(
            owner=principal.owner, kind=TASK_KIND, request_summary=summary_of(request), work=work
        )
    except BaseException:
        await state.generation.abandon(admission)
        raise
    answer = await state.tasks.wait(task_id, wait_s)
    return PluginResponse.running(task_id) if answer is None else PluginResponse.model_validate(answer)


async def find_task(state: AppState, task_id: str, principal: Principal | None) -> TaskRecord:
    """The task if ``principal`` may read it. Unknown and another caller's answer the same 404; a task
    made with only an own key has no owner and is readable by its unguessable id."""
    record = await state.tasks.get(task_id)
    if record is None:
        raise not_found("task")
    if record.owner is not None and (principal is None or principal.owner != record.owner):
        raise not_found("task")
    return record


# ---- routes -------------------------------------------------------------------------------------------

GENERATE_SUMMARY = (
    "生成或编辑图片：cleantext 写提示词，fileurls 给参考图链接即为改图；成功时 url 为图片链接。"
    "若 status=running，用返回的 task_id 调用 get_task 取结果，直到 status 为 done 或 failed。"
    "Generate or edit an image: cleantext is the prompt; reference image URLs in fileurls make it an edit; "
    "url is the image link. If status=running, call get_task with the returned task_id until status is "
    "done or failed."
)
GET_TASK_SUMMARY = (
    "查询 generate_image 的结果：传入它返回的 task_id；status=running 表示仍在生成，约 10 秒后再查。"
    "Get the result of generate_image by the task_id it returned; status=running means it is still "
    "being made, ask again in about 10 s."
)

_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": PluginResponse, "description": "no service token and no apikey / 未认证"},
    402: {"model": PluginResponse, "description": "budget exhausted / 预算已用尽"},
    422: {"model": PluginResponse, "description": "invalid input / 参数无效"},
    429: {"model": PluginResponse, "description": "caller rate limit / 调用频率超限"},
}


@router.post(
    "/v1/plugin/generate",
    operation_id="generate_image",
    summary=GENERATE_SUMMARY,
    description=GENERATE_SUMMARY
    + " 文生图（无参考图）或图生图（有参考图）；最多等待 wait_s 秒（不超过服务上限）。"
    "Text-to-image, or image edit when fileurls are given; waits up to wait_s seconds (capped by the "
    "service).",
    response_model=PluginResponse,
    responses=_ERROR_RESPONSES,
)
async def generate_image(
    body: PluginRequest, request: Request, response: Response, state: StateDep
) -> PluginResponse:
    principal = await resolve_principal(request, body.apikey or None)
    generation_request = build_request(
        prompt=body.cleantext,
        references=body.fileurls,
        model=body.model.strip() or state.settings.model,
        aspect_ratio=body.aspect_ratio,
        image_size=body.resolution,
    )
    answer = await start_plugin_task(
        state,
        principal,
        generation_request,
        files_base=files_base_url(request),
        wait_s=wait_for(state, body.wait_s),
        source="plugin",
    )
    response.status_code = answer.http_status
    return answer


@router.get(
    "/v1/tasks/{task_id}",
    operation_id="get_task",
    summary=GET_TASK_SUMMARY,
    description=GET_TASK_SUMMARY + " 返回与 generate_image 相同的结构。Same shape as generate_image.",
    response_model=PluginResponse,
    responses={
        404: {"model": PluginResponse, "description": "unknown task, or another caller's / 任务不存在"}
    },
)
async def get_task(
    request: Request,
    state: StateDep,
    task_id: str = Path(
        description="generate_image 返回的 task_id。The task_id that generate_image returned.",
    ),
) -> PluginResponse:
    # Who is calling first: an unknown bl_ token is a 401 for every id, existing or not.
    principal = await optional_principal(request)
    record = await find_task(state, task_id, principal)
    return PluginResponse.from_task(record)
