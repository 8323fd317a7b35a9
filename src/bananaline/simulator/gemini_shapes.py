"""Google's Gemini ``generateContent`` JSON: answers and errors, camelCase or snake_case."""

from __future__ import annotations

import re
from typing import Any

from .outcome import IMAGE_PLACEHOLDER, Outcome, split_on_placeholder

_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    402: "FAILED_PRECONDITION",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    422: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

_MESSAGES = {
    400: "Request contains an invalid argument.",
    401: "API key not valid. Please pass a valid API key.",
    402: "Billing is not enabled for this project; the free tier quota does not cover this model.",
    403: "The caller does not have permission",
    404: "models/{model} is not found for API version v1beta, or is not supported for generateContent.",
    413: "Request payload size exceeds the limit: 20971520 bytes.",
    422: "Unprocessable request.",
    429: "Resource has been exhausted (e.g. check quota).",
    500: "An internal error has occurred. Please retry or report in "
    "https://developers.generativeai.google/guide/troubleshooting",
    502: "Bad gateway.",
    503: "The model is overloaded. Please try again later.",
}

_SAFETY_RATINGS = [
    {"category": "HARM_CATEGORY_SEXUALLY_EXPLICIT", "probability": "NEGLIGIBLE"},
    {"category": "HARM_CATEGORY_HATE_SPEECH", "probability": "NEGLIGIBLE"},
    {"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"},
    {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "MEDIUM", "blocked": True},
]


def status_name(status: int) -> str:
    return _STATUS_NAMES.get(status, "FAILED_PRECONDITION" if status < 500 else "INTERNAL")


def error_document(
    status: int, message: str | None = None, *, model: str = "", retry_after_s: float | None = None
) -> dict[str, Any]:
    """``{"error": {"code", "message", "status", "details"?}}`` as Google sends it."""
    text = message or _MESSAGES.get(status, "Request failed.").replace("{model}", model)
    error: dict[str, Any] = {"code": status, "message": text, "status": status_name(status)}
    if retry_after_s is not None:
        error["details"] = [
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{retry_after_s:g}s"}
        ]
    elif status == 400:
        error["details"] = [
            {"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [{"description": text}]}
        ]
    return {"error": error}


#: (metric, quotaId) of the free tier, as named in Google's QuotaFailure violations.
_FREE_TIER_QUOTAS = (
    ("generate_content_free_tier_requests", "GenerateRequestsPerDayPerProjectPerModel-FreeTier"),
    ("generate_content_free_tier_input_token_count", "GenerateContentInputTokensPerModelPerMinute-FreeTier"),
)
_QUOTA_METRIC_PREFIX = "generativelanguage.googleapis.com/"


def quota_zero_message(model: str, retry_after_s: float) -> str:
    """Google's wording for a key whose tier has no quota for the model (``limit: 0``)."""
    base = model.removeprefix("models/")
    lines = [
        "You exceeded your current quota, please check your plan and billing details. For more "
        "information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits. "
        "To monitor your current usage, head to: https://ai.dev/usage?tab=rate-limit. ",
        *(
            f"* Quota exceeded for metric: {_QUOTA_METRIC_PREFIX}{metric}, limit: 0, model: {base}"
            for metric, _ in _FREE_TIER_QUOTAS
        ),
        f"Please retry in {retry_after_s:g}s.",
    ]
    return "\n".join(lines)


def quota_zero_document(model: str, retry_after_s: float) -> dict[str, Any]:
    """429 ``RESOURCE_EXHAUSTED`` with ``QuotaFailure`` (limit 0), ``Help`` and ``RetryInfo``."""
    base = model.removeprefix("models/")
    violations = [
        {
            "quotaMetric": f"{_QUOTA_METRIC_PREFIX}{metric}",
            "quotaId": quota_id,
            "quotaDimensions": {"location": "global", "model": base},
            "quotaValue": "0",
        }
        for metric, quota_id in _FREE_TIER_QUOTAS
    ]
    help_link = {
        "description": "Learn more about Gemini API quotas",
        "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
    }
    return {
        "error": {
            "code": 429,
            "message": quota_zero_message(model, retry_after_s),
            "status": "RESOURCE_EXHAUSTED",
            "details": [
                {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": violations},
                {"@type": "type.googleapis.com/google.rpc.Help", "links": [help_link]},
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{retry_after_s:g}s"},
            ],
        }
    }


def _inline(mime: str, data: str) -> dict[str, Any]:
    return {"inlineData": {"mimeType": mime, "data": data}}


def _parts(outcome: Outcome) -> list[dict[str, Any]]:
    if outcome.empty_parts:
        return []
    parts: list[dict[str, Any]] = []
    if outcome.thought_text:
        parts.append({"text": outcome.thought_text, "thought": True})
    if outcome.thought_image is not None:
        thought = _inline(outcome.thought_image.mime, outcome.thought_image.b64.decode("ascii"))
        parts.append({**thought, "thought": True})
    if outcome.text:
        parts.append({"text": outcome.text})
    if outcome.image is not None:
        mime = outcome.declared_mime or outcome.image.mime
        image_part = _inline(mime, IMAGE_PLACEHOLDER)
        if outcome.thought_signature:
            image_part["thoughtSignature"] = outcome.thought_signature
        parts.append(image_part)
    return parts


def _usage(outcome: Outcome) -> dict[str, Any]:
    details = [{"modality": "TEXT", "tokenCount": outcome.prompt_text_tokens}]
    if outcome.prompt_image_tokens:
        details.append({"modality": "IMAGE", "tokenCount": outcome.prompt_image_tokens})
    usage: dict[str, Any] = {"promptTokenCount": outcome.prompt_tokens}
    if outcome.candidates_tokens or outcome.explicit_zero_output:
        usage["candidatesTokenCount"] = outcome.candidates_tokens
    usage["totalTokenCount"] = outcome.total_tokens
    usage["promptTokensDetails"] = details
    if outcome.candidates_tokens:
        modality = "IMAGE" if outcome.image is not None else "TEXT"
        usage["candidatesTokensDetails"] = [{"modality": modality, "tokenCount": outcome.candidates_tokens}]
    if outcome.thoughts_tokens:
        usage["thoughtsTokenCount"] = outcome.thoughts_tokens
    return usage


def answer_document(outcome: Outcome) -> dict[str, Any]:
    document: dict[str, Any] = {}
    if outcome.block_reason is not None:
        document["promptFeedback"] = {"blockReason": outcome.block_reason, "safetyRatings": _SAFETY_RATINGS}
    elif not outcome.has_candidates:
        document["candidates"] = []
    else:
        candidate: dict[str, Any] = {}
        if outcome.finish_reason == "STOP":
            candidate["content"] = {"role": "model", "parts": _parts(outcome)}
        candidate["finishReason"] = outcome.finish_reason
        if "SAFETY" in outcome.finish_reason:
            candidate["safetyRatings"] = _SAFETY_RATINGS
        candidate["index"] = 0
        document["candidates"] = [candidate]
    document["usageMetadata"] = _usage(outcome)
    document["modelVersion"] = outcome.model
    document["responseId"] = outcome.response_id
    return document


_CAMEL_RE = re.compile(r"(?<!^)(?=[A-Z])")


def to_snake_case(value: Any) -> Any:
    """Rename every camelCase key (``inlineData`` -> ``inline_data``); values are untouched."""
    if isinstance(value, dict):
        return {
            (key if key.startswith("@") else _CAMEL_RE.sub("_", key).lower()): to_snake_case(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [to_snake_case(item) for item in value]
    return value


def answer_chunks(outcome: Outcome, snake_case: bool = False) -> list[bytes]:
    """The response body as chunks: JSON head, the cached image base64, JSON tail."""
    document = answer_document(outcome)
    if snake_case:
        document = to_snake_case(document)
    image_b64 = outcome.image.b64 if outcome.image is not None else None
    return split_on_placeholder(document, image_b64)
