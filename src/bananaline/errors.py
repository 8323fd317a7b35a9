"""One error taxonomy, from the first validation to the last write-back.

Every failure is a :class:`GenerationError` carrying a stable snake_case :class:`ErrorKind`.
The kinds, by where they arise::

    GenerationError
    ├── before the call (nothing was sent upstream)
    │   ├── invalid_input        catalog rule broken, empty prompt, bad option
    │   ├── reference_error      detail: blocked_address | download_failed | too_large
    │   │                                | not_an_image | not_found
    │   └── no_api_key           no key for this caller
    ├── transport
    │   ├── auth                 401 / 403
    │   ├── quota                402
    │   ├── rate_limited         429                       (retryable, honours Retry-After)
    │   ├── bad_request          400 / 404 / 413 / 422
    │   ├── upstream_error       5xx                       (retryable)
    │   ├── timeout              connect/read/deadline     (retryable only when nothing was sent)
    │   ├── network              reset, refused, DNS       (retryable)
    │   └── malformed_response   not JSON, truncated, unexpected shape
    ├── content (HTTP 200, checked in this order)
    │   ├── prompt_blocked       promptFeedback.blockReason
    │   ├── zero_candidates_token usageMetadata.candidatesTokenCount == 0
    │   ├── no_candidates        (retryable)
    │   ├── finish_reason        detail = the finishReason; retryable for OTHER, IMAGE_OTHER, NO_IMAGE
    │   ├── no_parts             (retryable)
    │   ├── inline_data_empty    (retryable)
    │   ├── text_response        only text came back; label = watermark | face_swap | nsfw
    │   │                                | knowledge_cutoff | general
    │   └── invalid_image        bytes that do not decode as an image
    ├── after the call
    │   ├── output_check         a warning made fatal by ``strict_checks``
    │   └── storage              the image could not be stored anywhere
    ├── budget_exceeded          a caller's budget would be overspent
    └── at the service's door (HTTP only)
        ├── unauthorized         no or unknown service token (the upstream's refusal is ``auth``)
        ├── not_found            unknown id, or another caller's (the same answer for both)
        ├── payload_too_large    an upload or body over the configured limit
        └── internal             a bug: logged with its traceback, never shown

Messages come in English and Chinese. No error ever carries an API key: :func:`redact`
scrubs every message and detail on construction.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from enum import StrEnum
from typing import Any


class ErrorKind(StrEnum):
    INVALID_INPUT = "invalid_input"
    REFERENCE_ERROR = "reference_error"
    NO_API_KEY = "no_api_key"
    AUTH = "auth"
    QUOTA = "quota"
    RATE_LIMITED = "rate_limited"
    BAD_REQUEST = "bad_request"
    UPSTREAM_ERROR = "upstream_error"
    TIMEOUT = "timeout"
    NETWORK = "network"
    MALFORMED_RESPONSE = "malformed_response"
    PROMPT_BLOCKED = "prompt_blocked"
    ZERO_CANDIDATES_TOKEN = "zero_candidates_token"
    NO_CANDIDATES = "no_candidates"
    FINISH_REASON = "finish_reason"
    NO_PARTS = "no_parts"
    INLINE_DATA_EMPTY = "inline_data_empty"
    TEXT_RESPONSE = "text_response"
    INVALID_IMAGE = "invalid_image"
    OUTPUT_CHECK = "output_check"
    STORAGE = "storage"
    BUDGET_EXCEEDED = "budget_exceeded"
    UNAUTHORIZED = "unauthorized"
    NOT_FOUND = "not_found"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    INTERNAL = "internal"


#: Kinds that are worth another attempt regardless of detail.
RETRYABLE_KINDS = frozenset(
    {
        ErrorKind.RATE_LIMITED,
        ErrorKind.UPSTREAM_ERROR,
        ErrorKind.NETWORK,
        ErrorKind.TIMEOUT,
        ErrorKind.NO_CANDIDATES,
        ErrorKind.NO_PARTS,
        ErrorKind.INLINE_DATA_EMPTY,
    }
)

#: finishReason values that are transient hiccups rather than refusals.
RETRYABLE_FINISH_REASONS = frozenset({"OTHER", "IMAGE_OTHER", "NO_IMAGE"})

_MESSAGES: dict[ErrorKind, tuple[str, str]] = {
    ErrorKind.INVALID_INPUT: ("The request is invalid", "请求参数无效"),
    ErrorKind.REFERENCE_ERROR: ("A reference image could not be used", "参考图无法使用"),
    ErrorKind.NO_API_KEY: ("No API key is configured for this caller", "该调用方未配置 API 密钥"),
    ErrorKind.AUTH: ("The upstream rejected the API key", "上游拒绝了 API 密钥"),
    ErrorKind.QUOTA: ("The upstream account has no quota or balance left", "上游账户额度或余额不足"),
    ErrorKind.RATE_LIMITED: ("The upstream is rate limiting requests", "上游限流，请求过于频繁"),
    ErrorKind.BAD_REQUEST: ("The upstream refused the request as malformed", "上游认为请求格式有误"),
    ErrorKind.UPSTREAM_ERROR: ("The upstream failed with a server error", "上游服务器错误"),
    ErrorKind.TIMEOUT: ("The request timed out", "请求超时"),
    ErrorKind.NETWORK: ("A network error interrupted the request", "网络错误导致请求中断"),
    ErrorKind.MALFORMED_RESPONSE: ("The upstream answer could not be read", "上游返回内容无法解析"),
    ErrorKind.PROMPT_BLOCKED: ("The prompt was blocked by the safety filter", "提示词被安全策略拦截"),
    ErrorKind.ZERO_CANDIDATES_TOKEN: (
        "The model produced nothing (zero output tokens), usually a silent refusal",
        "模型未生成任何内容（输出 token 为 0），通常是静默拒绝",
    ),
    ErrorKind.NO_CANDIDATES: ("The model returned no candidates", "模型未返回候选结果"),
    ErrorKind.FINISH_REASON: ("The model stopped before producing an image", "模型在生成图片前终止"),
    ErrorKind.NO_PARTS: ("The model returned an empty answer", "模型返回了空内容"),
    ErrorKind.INLINE_DATA_EMPTY: ("The model returned an empty image", "模型返回的图片数据为空"),
    ErrorKind.TEXT_RESPONSE: (
        "The model answered with text instead of an image",
        "模型只返回了文字，没有图片",
    ),
    ErrorKind.INVALID_IMAGE: ("The returned bytes are not a valid image", "返回的数据不是有效图片"),
    ErrorKind.OUTPUT_CHECK: ("The image failed an output check", "图片未通过输出检查"),
    ErrorKind.STORAGE: ("The image could not be stored", "图片无法保存"),
    ErrorKind.BUDGET_EXCEEDED: ("The caller's budget is exhausted", "调用方预算已用尽"),
    ErrorKind.UNAUTHORIZED: ("Authentication required", "需要认证"),
    ErrorKind.NOT_FOUND: ("Not found", "未找到"),
    ErrorKind.PAYLOAD_TOO_LARGE: ("The request body is too large", "请求体过大"),
    ErrorKind.INTERNAL: ("Internal error", "内部错误"),
}

_LABEL_MESSAGES: dict[str, tuple[str, str]] = {
    "watermark": ("refused: removing watermarks is not allowed", "拒绝：不允许去除水印"),
    "face_swap": ("refused: face swapping of real people is not allowed", "拒绝：不允许替换真人面部"),
    "nsfw": ("refused: sexual or explicit content", "拒绝：涉及色情或露骨内容"),
    "knowledge_cutoff": ("refused: the model does not know this subject", "拒绝：超出模型知识范围"),
    "general": ("the model declined and explained in text", "模型以文字说明拒绝生成"),
}

_SECRET_PATTERNS = [
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._\-]{8,}"),
    re.compile(
        r"(?i)((?:api[_-]?key|key|token|apikey|x-goog-api-key)[\"']?\s*[=:]\s*[\"']?)[A-Za-z0-9._\-]{8,}"
    ),
    re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}"),
    re.compile(r"\bAIza[0-9A-Za-z_\-]{20,}"),
    re.compile(r"\bbl_[A-Za-z0-9_\-]{16,}"),
]

#: Secrets shorter than this are not remembered (they would redact ordinary words).
MIN_SECRET_CHARS = 6
#: Request-scoped secrets (own upstream keys sent with one request) kept at most, least recently
#: used evicted first. Configured secrets are pinned and never evicted.
MAX_REQUEST_SECRETS = 4096
#: Up to this many known secrets, :func:`redact` searches for each; beyond, it looks up every
#: position of the text in a prefix index, so its cost no longer grows with the registry.
_LINEAR_SEARCH_MAX = 128

_request_scoped: ContextVar[bool] = ContextVar("bananaline_request_scoped_secrets", default=False)


class _SecretRegistry:
    """Pinned secrets (configuration: upstream keys, store credentials, key files) plus a bounded
    LRU of request-scoped ones, indexed by their last :data:`MIN_SECRET_CHARS` characters (keys
    share prefixes such as ``AIzaSy`` or ``sk-``, rarely suffixes)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._pinned: set[str] = set()
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._by_suffix: dict[str, dict[str, None]] = {}

    def __len__(self) -> int:
        return len(self._pinned) + len(self._recent)

    def add(self, value: str, *, transient: bool) -> None:
        with self._lock:
            if value in self._pinned:
                return
            if value in self._recent:
                if transient:
                    self._recent.move_to_end(value)
                else:
                    del self._recent[value]
                    self._pinned.add(value)
                return
            self._by_suffix.setdefault(value[-MIN_SECRET_CHARS:], {})[value] = None
            if not transient:
                self._pinned.add(value)
                return
            self._recent[value] = None
            while len(self._recent) > self.capacity:
                evicted, _ = self._recent.popitem(last=False)
                group = self._by_suffix[evicted[-MIN_SECRET_CHARS:]]
                del group[evicted]
                if not group:
                    del self._by_suffix[evicted[-MIN_SECRET_CHARS:]]

    def found_in(self, text: str) -> set[str]:
        """The known secrets that occur in ``text``."""
        if len(text) < MIN_SECRET_CHARS:
            return set()
        if len(self) <= _LINEAR_SEARCH_MAX:
            known = [*self._pinned, *self._recent]
            return {secret for secret in known if secret in text}
        by_suffix = self._by_suffix
        found: set[str] = set()
        for end in range(MIN_SECRET_CHARS, len(text) + 1):
            group = by_suffix.get(text[end - MIN_SECRET_CHARS : end])
            if group:
                found.update(secret for secret in tuple(group) if text.startswith(secret, end - len(secret)))
        return found


_secrets = _SecretRegistry(MAX_REQUEST_SECRETS)


def register_secret(value: str | None, *, transient: bool | None = None) -> None:
    """Remember a secret so that :func:`redact` removes it wherever it appears verbatim.

    ``transient=True`` (or, by default, any registration made inside :func:`request_scoped_secrets`,
    which the HTTP service opens around every request) keeps it in a bounded LRU of
    :data:`MAX_REQUEST_SECRETS`: an own key sent with one request is redacted while it is in use,
    and memory does not grow with the number of distinct keys ever seen. Everything else
    (configured keys, store credentials, key files) is pinned: never evicted, whatever the traffic.
    """
    if value and len(value) >= MIN_SECRET_CHARS:
        _secrets.add(value, transient=_request_scoped.get() if transient is None else transient)


@contextmanager
def request_scoped_secrets() -> Iterator[None]:
    """Secrets registered inside (and in tasks started inside) are request-scoped by default."""
    token = _request_scoped.set(True)
    try:
        yield
    finally:
        _request_scoped.reset(token)


def registered_secret_count() -> int:
    return len(_secrets)


def redact(text: str) -> str:
    """Remove anything that looks like or is known to be a credential."""
    for secret in sorted(_secrets.found_in(text), key=len, reverse=True):
        text = text.replace(secret, "***")
    for pattern in _SECRET_PATTERNS:
        if pattern.groups:
            text = pattern.sub(lambda m: m.group(1) + "***", text)
        else:
            text = pattern.sub("***", text)
    return text


class GenerationError(Exception):
    """A classified failure. ``kind`` is stable; ``detail`` is the upstream's own word for it."""

    def __init__(
        self,
        kind: ErrorKind | str,
        *,
        detail: str | None = None,
        label: str | None = None,
        message: str | None = None,
        message_zh: str | None = None,
        retryable: bool | None = None,
        http_status: int | None = None,
        retry_after_s: float | None = None,
        request_sent: bool = True,
        model_text: str | None = None,
    ) -> None:
        self.kind = ErrorKind(kind)
        self.detail = redact(detail) if detail else detail
        self.label = label
        base_en, base_zh = _MESSAGES[self.kind]
        if label and label in _LABEL_MESSAGES:
            label_en, label_zh = _LABEL_MESSAGES[label]
            base_en, base_zh = f"{base_en} ({label_en})", f"{base_zh}（{label_zh}）"
        if message is None:
            message = base_en + (f": {detail}" if detail else "")
        if message_zh is None:
            message_zh = base_zh + (f"：{detail}" if detail else "")
        self.message = redact(message)
        self.message_zh = redact(message_zh)
        self.http_status = http_status
        self.retry_after_s = retry_after_s
        self.request_sent = request_sent
        #: What the model said instead of an image (refusals), kept for the result's ``text``.
        self.model_text = model_text
        if retryable is None:
            retryable = default_retryable(self.kind, self.detail)
            if self.kind is ErrorKind.TIMEOUT:
                # A read timeout after the request went out may still be billed: not retried.
                retryable = not request_sent
        self.retryable = retryable
        super().__init__(self.message)

    def __repr__(self) -> str:
        return (
            f"GenerationError(kind={self.kind.value!r}, detail={self.detail!r}, retryable={self.retryable})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "detail": self.detail,
            "label": self.label,
            "retryable": self.retryable,
            "message": self.message,
            "message_zh": self.message_zh,
        }


def default_retryable(kind: ErrorKind, detail: str | None) -> bool:
    if kind is ErrorKind.FINISH_REASON:
        return (detail or "").upper() in RETRYABLE_FINISH_REASONS
    return kind in RETRYABLE_KINDS


def is_invalid_input(error: GenerationError) -> bool:
    """Errors raised before anything was sent upstream (CLI exit code 2)."""
    return error.kind in {ErrorKind.INVALID_INPUT, ErrorKind.REFERENCE_ERROR, ErrorKind.NO_API_KEY}
