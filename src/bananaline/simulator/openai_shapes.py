"""OpenAI-compatible ``chat.completion`` JSON as image relays send it, and OpenAI errors.

Relays deliver the image in one of four styles, all served here:

* ``markdown``: ``content`` is text with ``![image](data:image/png;base64,...)``;
* ``images``: ``content`` is text and ``message.images = [{"type": "image_url", ...}]``;
* ``parts``: ``content`` is a list of ``text`` / ``image_url`` parts;
* ``url``: markdown whose link is an http URL served by the simulator at ``/files/...``.

Gemini content faults map to what relays pass through: no choices, ``finish_reason``
``content_filter`` / ``length`` / the lower-cased native reason, with the native reason kept in
``native_finish_reason``, and ``prompt_feedback.block_reason`` for a blocked prompt.
"""

from __future__ import annotations

from typing import Any

from .outcome import IMAGE_PLACEHOLDER, Outcome, split_on_placeholder

_ERRORS: dict[int, tuple[str, str, str]] = {
    400: ("invalid_request_error", "invalid_request", "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    402: (
        "insufficient_quota",
        "insufficient_quota",
        "You exceeded your current quota, please check your plan.",
    ),
    403: ("permission_error", "forbidden", "You are not allowed to use this model."),
    404: (
        "invalid_request_error",
        "model_not_found",
        "The model does not exist or you do not have access to it.",
    ),
    413: ("invalid_request_error", "request_too_large", "Request entity too large."),
    422: ("invalid_request_error", "unprocessable_entity", "Unprocessable request."),
    429: (
        "rate_limit_error",
        "rate_limit_exceeded",
        "Rate limit reached for requests. Please try again later.",
    ),
    500: ("server_error", "server_error", "The server had an error while processing your request."),
    502: ("server_error", "bad_gateway", "Bad gateway: the upstream returned an invalid response."),
    503: ("server_error", "service_unavailable", "The upstream model is overloaded. Please try again later."),
}

_SAFETY_LIKE = ("SAFETY", "PROHIBITED", "RECITATION", "BLOCKLIST", "SPII")


def error_document(status: int, message: str | None = None) -> dict[str, Any]:
    default_type = "server_error" if status >= 500 else "invalid_request_error"
    error_type, code, text = _ERRORS.get(status, (default_type, f"http_{status}", "Request failed."))
    return {"error": {"message": message or text, "type": error_type, "param": None, "code": code}}


def quota_zero_document(message: str) -> dict[str, Any]:
    """A relay passing Google's zero-quota 429 through: only the message tells it from a rate limit."""
    error_type, code, _ = _ERRORS[429]
    return {"error": {"message": message, "type": error_type, "param": None, "code": code}}


def openai_finish_reason(gemini_reason: str) -> str:
    if gemini_reason == "STOP":
        return "stop"
    if gemini_reason == "MAX_TOKENS":
        return "length"
    if any(word in gemini_reason for word in _SAFETY_LIKE):
        return "content_filter"
    return gemini_reason.lower()


def _image_ref(outcome: Outcome, file_url: str | None) -> str | None:
    if outcome.image is None:
        return None
    if file_url is not None:
        return file_url
    mime = outcome.declared_mime or outcome.image.mime
    return f"data:{mime};base64,{IMAGE_PLACEHOLDER}"


def _message(outcome: Outcome, style: str, file_url: str | None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": None}
    if outcome.finish_reason != "STOP" or outcome.block_reason is not None:
        return message
    if outcome.empty_parts:
        message["content"] = ""
        return message
    if outcome.thought_text:
        message["reasoning"] = outcome.thought_text
    text = outcome.text or ""
    ref = _image_ref(outcome, file_url)
    if ref is None:
        message["content"] = text
    elif style == "images":
        message["content"] = text
        message["images"] = [{"type": "image_url", "image_url": {"url": ref}}]
    elif style == "parts":
        parts: list[dict[str, Any]] = []
        if text:
            parts.append({"type": "text", "text": text})
        parts.append({"type": "image_url", "image_url": {"url": ref}})
        message["content"] = parts
    else:  # markdown, and url (whose ref is already an http URL)
        message["content"] = f"{text}\n\n![image]({ref})" if text else f"![image]({ref})"
    return message


def answer_document(
    outcome: Outcome, style: str, created: int, file_url: str | None = None
) -> dict[str, Any]:
    document: dict[str, Any] = {
        "id": f"chatcmpl-{outcome.response_id}",
        "object": "chat.completion",
        "created": created,
        "model": outcome.model,
    }
    if outcome.block_reason is not None:
        document["prompt_feedback"] = {"block_reason": outcome.block_reason}
    if not outcome.has_candidates:
        document["choices"] = []
    else:
        reason = "SAFETY" if outcome.block_reason is not None else outcome.finish_reason
        document["choices"] = [
            {
                "index": 0,
                "message": _message(outcome, style, file_url),
                "finish_reason": openai_finish_reason(reason),
                "native_finish_reason": reason,
            }
        ]
    usage: dict[str, Any] = {"prompt_tokens": outcome.prompt_tokens}
    completion_tokens = outcome.candidates_tokens + outcome.thoughts_tokens
    if completion_tokens or outcome.explicit_zero_output:
        usage["completion_tokens"] = completion_tokens
    usage["total_tokens"] = outcome.total_tokens
    if outcome.thoughts_tokens:
        usage["completion_tokens_details"] = {"reasoning_tokens": outcome.thoughts_tokens}
    document["usage"] = usage
    return document


def answer_chunks(outcome: Outcome, style: str, created: int, file_url: str | None = None) -> list[bytes]:
    document = answer_document(outcome, style, created, file_url)
    image_b64 = outcome.image.b64 if outcome.image is not None and file_url is None else None
    return split_on_placeholder(document, image_b64)
