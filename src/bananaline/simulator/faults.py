"""Faults on demand: their names, the ``[sim ...]`` prompt directive, and the queued faults.

A fault is asked for in one of two ways:

* a directive anywhere in the prompt, ``[sim fault=http_429 times=2 retry_after=1 latency=0.5
  style=images case=snake]`` (every field optional). With ``times=N`` only the first N requests
  carrying this exact prompt with this key fail; later ones succeed, so a test can watch a
  retry clear the fault;
* ``POST /_sim/faults`` with ``{"fault", "times", "match", "retry_after", "latency",
  "protocol"}``: queued faults are consumed by the next requests whose prompt contains
  ``match`` (any prompt when ``match`` is null).
"""

from __future__ import annotations

import re
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

HTTP_FAULTS = tuple(f"http_{code}" for code in (400, 401, 402, 403, 404, 413, 422, 429, 500, 502, 503))
#: HTTP errors with a body of their own: ``quota_zero`` is Google's 429 ``RESOURCE_EXHAUSTED`` for a
#: key whose tier has no quota for the model at all (``QuotaFailure``, ``limit: 0``), passed
#: through verbatim in the message by OpenAI-compatible relays.
BODY_FAULTS = ("quota_zero",)
TRANSPORT_FAULTS = ("reset_mid_body", "truncated_json", "not_json", "hang")
FINISH_REASONS = (
    "SAFETY",
    "PROHIBITED_CONTENT",
    "RECITATION",
    "MAX_TOKENS",
    "IMAGE_SAFETY",
    "IMAGE_PROHIBITED_CONTENT",
    "IMAGE_RECITATION",
    "IMAGE_OTHER",
    "NO_IMAGE",
    "OTHER",
    "WEIRD_NEW",
)
TEXT_LABELS = ("watermark", "face_swap", "nsfw", "knowledge_cutoff", "general")
CONTENT_FAULTS = (
    "prompt_blocked",
    "zero_candidates_token",
    "no_candidates",
    *(f"finish_{reason}" for reason in FINISH_REASONS),
    "no_parts",
    "inline_data_empty",
    *(f"text_{label}_{lang}" for label in TEXT_LABELS for lang in ("en", "zh")),
    "invalid_image",
)
#: Faults where the HTTP exchange succeeds with an image that output checks should catch.
IMAGE_FAULTS = ("jpeg_as_png", "wrong_size", "wrong_aspect", "black_image")

#: Every named fault with a generic shape. ``http_NNN`` for any 4xx/5xx code, ``finish_<ANY_UPPERCASE>``
#: and the :data:`BODY_FAULTS` also work.
FAULTS: tuple[str, ...] = HTTP_FAULTS + TRANSPORT_FAULTS + CONTENT_FAULTS + IMAGE_FAULTS

_HTTP_RE = re.compile(r"^http_([45]\d\d)$")
_FINISH_RE = re.compile(r"^finish_([A-Z][A-Z0-9_]*)$")
_TEXT_RE = re.compile(r"^text_([a-z_]+)_(en|zh)$")
_DIRECTIVE_RE = re.compile(r"\[sim\b([^\]]*)\]", re.IGNORECASE)
_PAIR_RE = re.compile(r"([a-z_]+)\s*=\s*([^\s\]]+)", re.IGNORECASE)


def is_known_fault(name: str) -> bool:
    if name in FAULTS or name in BODY_FAULTS or _HTTP_RE.match(name) or _FINISH_RE.match(name):
        return True
    match = _TEXT_RE.match(name)
    return bool(match and match.group(1) in TEXT_LABELS)


def http_status(name: str) -> int | None:
    match = _HTTP_RE.match(name)
    return int(match.group(1)) if match else None


def finish_reason(name: str) -> str | None:
    match = _FINISH_RE.match(name)
    return match.group(1) if match else None


class DirectiveError(ValueError):
    """The prompt's ``[sim ...]`` directive names an unknown fault or has a bad value."""


@dataclass(frozen=True)
class Directive:
    fault: str | None = None
    times: int | None = None
    retry_after_s: float | None = None
    latency_s: float | None = None
    style: str | None = None
    snake_case: bool = False


def parse_directive(prompt: str) -> Directive:
    """Read the first ``[sim ...]`` bracket of a prompt; an empty Directive when there is none."""
    found = _DIRECTIVE_RE.search(prompt)
    if not found:
        return Directive()
    fields = {key.lower(): value for key, value in _PAIR_RE.findall(found.group(1))}
    fault = fields.get("fault")
    if fault is not None and not is_known_fault(fault):
        raise DirectiveError(f"unknown simulator fault {fault!r}")
    try:
        return Directive(
            fault=fault,
            times=int(fields["times"]) if "times" in fields else None,
            retry_after_s=float(fields["retry_after"]) if "retry_after" in fields else None,
            latency_s=float(fields["latency"]) if "latency" in fields else None,
            style=fields.get("style"),
            snake_case=fields.get("case", "").lower() == "snake",
        )
    except ValueError as exc:
        raise DirectiveError(f"bad simulator directive: {exc}") from exc


@dataclass
class QueuedFault:
    fault: str
    times: int | None = 1
    match: str | None = None
    retry_after_s: float | None = None
    latency_s: float | None = None
    protocol: str | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "fault": self.fault,
            "times": self.times,
            "match": self.match,
            "retry_after": self.retry_after_s,
            "latency": self.latency_s,
            "protocol": self.protocol,
        }


@dataclass(frozen=True)
class ChosenFault:
    """The fault (possibly none) this request gets, with its timing knobs."""

    name: str | None
    retry_after_s: float = 1.0
    latency_s: float | None = None


class FaultBook:
    """Decides which fault a request gets; thread-safe (the control API and tests share it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[QueuedFault] = []
        self._seen: dict[tuple[str, str], int] = {}

    def add(self, fault: QueuedFault) -> QueuedFault:
        if not is_known_fault(fault.fault):
            raise DirectiveError(f"unknown simulator fault {fault.fault!r}")
        with self._lock:
            self._queue.append(fault)
        return fault

    def queued(self) -> list[dict[str, Any]]:
        with self._lock:
            return [fault.as_dict() for fault in self._queue]

    def clear(self) -> None:
        with self._lock:
            self._queue.clear()
            self._seen.clear()

    def choose(self, directive: Directive, key: str, prompt: str, protocol: str) -> ChosenFault:
        """The directive wins while its ``times`` last; then the first matching queued fault."""
        prompt_key = (key, prompt)
        with self._lock:
            if directive.fault is not None:
                seen = self._seen.get(prompt_key, 0)
                self._seen[prompt_key] = seen + 1
                if directive.times is None or seen < directive.times:
                    return ChosenFault(directive.fault, directive.retry_after_s or 1.0, directive.latency_s)
            for index, queued in enumerate(self._queue):
                if queued.protocol not in (None, protocol):
                    continue
                if queued.match is not None and queued.match not in prompt:
                    continue
                if queued.times is not None:
                    queued.times -= 1
                    if queued.times <= 0:
                        del self._queue[index]
                return ChosenFault(queued.fault, queued.retry_after_s or 1.0, queued.latency_s)
        return ChosenFault(None, 1.0, directive.latency_s)


#: Refusals as the models word them, by label and language.
REFUSALS: dict[tuple[str, str], str] = {
    ("watermark", "en"): (
        "I can't remove watermarks from images. Watermarks protect the rights of the creator, "
        "so I'm unable to help edit them out. I can help with other edits to your image."
    ),
    ("watermark", "zh"): (
        "抱歉，我无法去除图片中的水印。水印用于保护创作者的权益，我可以帮你对图片做其他修改。"
    ),
    ("face_swap", "en"): (
        "I can't swap the faces of real people in images. Editing a real person's face onto "
        "another body can be used to mislead, so I'm not able to do that."
    ),
    ("face_swap", "zh"): "抱歉，我无法对真实人物进行换脸。将真人的面部替换到其他图片中可能被用于误导他人。",
    ("nsfw", "en"): (
        "I can't create sexually explicit content. I'm happy to help with a different image "
        "that follows the content guidelines."
    ),
    ("nsfw", "zh"): "抱歉，我无法生成色情或露骨的内容。我可以帮你生成符合内容规范的其他图片。",
    ("knowledge_cutoff", "en"): (
        "I don't have information about that event because it happened after my knowledge "
        "cutoff, so I can't create an accurate image of it."
    ),
    ("knowledge_cutoff", "zh"): (
        "抱歉，我没有关于该事件的信息，它发生在我的知识截止日期之后，因此无法准确生成相关图片。"
    ),
    ("general", "en"): "I'm unable to create that image. Please try rephrasing your request.",
    ("general", "zh"): "抱歉，我无法生成这张图片。请尝试换一种方式描述你的需求。",
}


def refusal_text(fault: str) -> str | None:
    match = _TEXT_RE.match(fault)
    if not match:
        return None
    return REFUSALS.get((match.group(1), match.group(2)))
