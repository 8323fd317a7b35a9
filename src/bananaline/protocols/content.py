"""Content-level classification shared by both protocols.

Why did the model answer with text instead of an image? When a Nano Banana model declines,
it usually says why in a sentence (English or Chinese, depending on the prompt). The label
lets batch reports group refusals and lets users see at a glance that retrying is pointless.
Tables are data: add a phrasing, not a branch. The first table that matches wins, so more
specific reasons come first.

Also here: what an ``{"error": {...}}`` object inside an HTTP 200 body means, since relays
sometimes report failures that way.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import ErrorKind, GenerationError
from ..transport_errors import STATUS_KINDS, zero_quota, zero_quota_error

#: (label, patterns) in priority order; patterns are regexes matched against lowercased text.
REFUSAL_PATTERNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "watermark",
        (
            r"water\s*-?marks?",
            r"水印",
            r"logo\s+removal",
            r"remov(?:e|ing|al of)\s+(?:the\s+|a\s+|any\s+|all\s+)?(?:\w+\s+)?logos?",
            r"(?:去除|去掉|删除|移除|抹掉|擦除|去)\s*(?:图片中的|图中的|上的)?\s*(?:logo|标志|标识|商标)",
        ),
    ),
    (
        "face_swap",
        (
            r"face[\s-]?swap",
            r"swap(?:ping)?\s+(?:the\s+|their\s+|his\s+|her\s+)?faces?",
            r"replac(?:e|ing)\s+(?:the\s+|a\s+|someone'?s\s+|their\s+)?faces?",
            r"real\s+(?:person|people|individual)'?s?\s+faces?",
            r"faces?\s+of\s+(?:a\s+)?real\s+(?:person|people|individual)",
            r"换脸",
            r"(?:替换|更换|交换)\s*(?:人脸|面部|脸部)",
            r"人脸替换",
            r"真人(?:的)?(?:面部|脸|人脸|肖像)",
        ),
    ),
    (
        "nsfw",
        (
            r"\bnsfw\b",
            r"sexual",
            r"sexually",
            r"explicit",
            r"\bnud(?:e|ity)\b",
            r"\bnaked\b",
            r"pornograph",
            r"色情",
            r"裸露",
            r"裸体",
            r"性感暴露",
            r"露骨",
            r"成人内容",
        ),
    ),
    (
        "knowledge_cutoff",
        (
            r"knowledge\s+cut\s*-?off",
            r"training\s+data",
            r"(?:don't|do\s+not|doesn't|does\s+not)\s+have\s+(?:any\s+)?(?:specific\s+)?information\s+(?:about|on)",
            r"not\s+familiar\s+with",
            r"知识截止",
            r"训练数据",
            r"无法获取.{0,30}最新",
            r"没有(?:关于)?.{0,20}的(?:相关)?信息",
        ),
    ),
)

_COMPILED: tuple[tuple[str, tuple[re.Pattern[str], ...]], ...] = tuple(
    (label, tuple(re.compile(pattern) for pattern in patterns)) for label, patterns in REFUSAL_PATTERNS
)

GENERAL_LABEL = "general"
REFUSAL_LABELS: tuple[str, ...] = tuple(label for label, _ in REFUSAL_PATTERNS) + (GENERAL_LABEL,)


def classify_refusal_text(text: str) -> str:
    """Return ``watermark``, ``face_swap``, ``nsfw``, ``knowledge_cutoff`` or ``general``."""
    normalized = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    for label, patterns in _COMPILED:
        if any(pattern.search(normalized) for pattern in patterns):
            return label
    return GENERAL_LABEL


#: Error-object codes (HTTP-like numbers, Google status names, OpenAI codes) -> our kinds.
_ERROR_CODE_KINDS: dict[str, ErrorKind] = {
    **{str(status): kind for status, kind in STATUS_KINDS.items()},
    "invalid_argument": ErrorKind.BAD_REQUEST,
    "invalid_request_error": ErrorKind.BAD_REQUEST,
    "not_found": ErrorKind.BAD_REQUEST,
    "unauthenticated": ErrorKind.AUTH,
    "permission_denied": ErrorKind.AUTH,
    "invalid_api_key": ErrorKind.AUTH,
    "insufficient_quota": ErrorKind.QUOTA,
    "resource_exhausted": ErrorKind.RATE_LIMITED,
    "rate_limit_exceeded": ErrorKind.RATE_LIMITED,
    "content_policy_violation": ErrorKind.PROMPT_BLOCKED,
    "content_filter": ErrorKind.PROMPT_BLOCKED,
    "safety": ErrorKind.PROMPT_BLOCKED,
}

_ERROR_DETAIL_CHARS = 300


def error_from_body(code: object, status: str | None, message: str | None) -> GenerationError:
    """Classify an ``{"error": {"code", "status"|"type", "message"}}`` object found in a 200 body.

    Unknown codes and 5xx count as ``upstream_error``: the upstream failed, and that is retryable.
    A rate limit whose message says ``limit: 0`` is ``quota`` (see :func:`zero_quota`).
    """
    kind = ErrorKind.UPSTREAM_ERROR
    for key in (code, status):
        if key is None:
            continue
        mapped = _ERROR_CODE_KINDS.get(str(key).strip().lower())
        if mapped is not None:
            kind = mapped
            break
    label = next((str(key) for key in (code, status) if key not in (None, "")), "error")
    detail = f"{label}: {message}" if message else label
    zero = zero_quota({"message": message}) if kind is ErrorKind.RATE_LIMITED and message else None
    if zero is not None:
        return zero_quota_error(zero[0], f"{label}: {zero[1]}"[:_ERROR_DETAIL_CHARS])
    if kind is ErrorKind.PROMPT_BLOCKED:
        detail = label
    return GenerationError(kind, detail=detail[:_ERROR_DETAIL_CHARS])


def error_fields(
    fields: dict[str, Any] | None, path: tuple[str, ...], event: str, value: Any
) -> dict[str, Any] | None:
    """Accumulate an ``error`` member from JSON events; ``"error": null`` is no error."""
    if path == ("error",):
        if event == "start_map":
            return fields if fields is not None else {}
        if event == "string" and value:
            return {"message": value}
        return fields
    if fields is not None and len(path) == 2 and event in ("string", "number"):
        fields[path[1]] = value
    return fields


TEXT_DETAIL_CHARS = 300


def no_image_error(text: str | None, *, inline_empty: bool) -> GenerationError:
    """The answer carried no usable image: why, in the taxonomy's order (both protocols)."""
    if inline_empty:
        return GenerationError(ErrorKind.INLINE_DATA_EMPTY)
    if text is None:
        return GenerationError(ErrorKind.NO_PARTS)
    return GenerationError(
        ErrorKind.TEXT_RESPONSE,
        detail=text[:TEXT_DETAIL_CHARS],
        label=classify_refusal_text(text),
        model_text=text,
    )
