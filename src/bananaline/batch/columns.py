"""Which column holds what, and how one sheet row becomes one planned generation request.

Defaults are the English names ``prompt``, ``refs``, ``caller``, ``model``, ``aspect_ratio``,
``size`` and ``n``; any other name (Chinese included) is mapped with ``--col prompt=提示词``,
``--col refs=目标图,原图`` or a batch config file::

    # batch.toml
    template = "{{ product }} on {{ background }}"
    [columns]
    prompt = "提示词"
    refs = ["目标图", "原图"]
    caller = "调用人"

Cells are hostile: a template is rendered in Jinja2's sandbox with ``StrictUndefined`` so a
missing column is a clear per-row ``invalid_input`` error, never a silently empty prompt; and
templates are hostile too: they render in a bounded child process (:mod:`.template`), and one
that goes over a bound refuses the whole batch (:class:`~.template.TemplateRejected`).
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import ErrorKind, GenerationError
from .template import BoundedTemplate, PrerenderedPrompts, TemplateRejected, TemplateRowError, render_all

MAX_VARIANTS = 8

#: Where a reference cell splits: newlines, commas (ASCII and full-width), 、, spaces.
_DATA_URI = r"data:[^\s,，、;]*;base64,[A-Za-z0-9+/=_\-]+"
_REF_TOKEN = re.compile(rf"{_DATA_URI}|[^\s,，、]+")
_URL_LINE = re.compile(r"^(?:https?://\S+|data:image/[^\s]+)$", re.IGNORECASE)


class ColumnConfig(BaseModel):
    """Column names for each role, plus an optional prompt template. Part of the batch id."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt: str = "prompt"
    refs: tuple[str, ...] = ("refs",)
    caller: str = "caller"
    model: str = "model"
    aspect_ratio: str = "aspect_ratio"
    size: str = "size"
    n: str = "n"
    template: str | None = None
    #: Split a prompt cell whose last lines are bare URLs into prompt + references (the Bitable
    #: "merged prompt" formula). Only whole lines holding one URL each are taken.
    split_merged_prompt: bool = True
    #: Used when a row leaves the cell blank.
    default_model: str | None = None
    default_aspect_ratio: str | None = None
    default_size: str | None = None
    default_n: int = Field(1, ge=1, le=MAX_VARIANTS)

    @field_validator("refs", mode="before")
    @classmethod
    def _refs_tuple(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    def with_mappings(self, mappings: list[str]) -> ColumnConfig:
        """Apply ``role=column`` flags (``refs=目标图,原图`` names several columns)."""
        update: dict[str, Any] = {}
        for mapping in mappings:
            role, sep, column = mapping.partition("=")
            role = role.strip().replace("-", "_")
            if not sep or role not in ("prompt", "refs", "caller", "model", "aspect_ratio", "size", "n"):
                raise ValueError(
                    f"bad column mapping {mapping!r}: use ROLE=COLUMN with ROLE one of "
                    "prompt, refs, caller, model, aspect_ratio, size, n"
                )
            update[role] = column.strip() if role != "refs" else column
        return ColumnConfig.model_validate({**self.model_dump(), **update})

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_toml(cls, path: Path) -> ColumnConfig:
        """Read ``[columns]`` plus top-level ``template``/``default_*`` keys from a batch config."""
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        merged: dict[str, Any] = dict(data.get("columns", {}))
        for key, value in data.items():
            if key in cls.model_fields and key not in ("columns",):
                merged[key] = value
        return cls.model_validate(merged)


@dataclass(frozen=True)
class RowPlan:
    """What one row asks for: the request fields, or the reason it cannot be asked."""

    caller: str
    n: int
    prompt: str | None = None
    references: tuple[str, ...] = ()
    model: str | None = None
    aspect_ratio: str | None = None
    image_size: str | None = None
    error: GenerationError | None = field(default=None, compare=False)

    def request_fields(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "references": list(self.references),
            "model": self.model,
            "aspect_ratio": self.aspect_ratio,
            "image_size": self.image_size,
        }


def split_refs(cell: str | None) -> list[str]:
    """``"a.png, b.png\\nhttps://x/y.jpg"`` -> three references; data URIs keep their comma."""
    if not cell:
        return []
    return _REF_TOKEN.findall(cell.strip())


def split_merged_prompt(cell: str) -> tuple[str, list[str]]:
    """Prompt text followed by one reference URL per line -> (prompt, urls)."""
    lines = cell.strip().splitlines()
    refs: list[str] = []
    while lines and _URL_LINE.match(lines[-1].strip()):
        refs.insert(0, lines.pop().strip())
    return "\n".join(lines).strip(), refs


class RowPlanner:
    """Turns rows into :class:`RowPlan`; one planner per batch (the template is parsed once)."""

    def __init__(
        self,
        columns: ColumnConfig,
        *,
        default_model: str,
        base_dir: Path | None = None,
        allow_local_refs: bool = True,
    ) -> None:
        self.columns = columns
        self.default_model = columns.default_model or default_model
        self.base_dir = base_dir
        self.allow_local_refs = allow_local_refs
        #: ``row`` holds every column (for names that are not identifiers: ``{{ row["product name"] }}``).
        self.renderer = BoundedTemplate(columns.template) if columns.template else None
        self._prompts: PrerenderedPrompts | None = None

    def prerender(self, rows: Sequence[dict[str, str]]) -> None:
        """Render every row's prompt in one pass before planning (blocking: the service runs it
        through ``in_render_pool``). Raises :class:`TemplateRejected` over a bound."""
        if self.renderer is not None:
            self._prompts = render_all(self.renderer.source, rows, self.renderer.bounds)

    def _render(self, cells: dict[str, str]) -> str:
        assert self.renderer is not None
        found = self._prompts.outcome(cells) if self._prompts is not None else None
        return found.prompt() if found is not None else self.renderer.render(cells)

    def missing_columns(self, header: list[str]) -> list[str]:
        """Mapped columns absent from the sheet; the prompt column matters unless templated."""
        columns = self.columns
        wanted = list(columns.refs) if self._mapped_refs() else []
        if self.renderer is None:
            wanted.insert(0, columns.prompt)
        for role in ("caller", "model", "aspect_ratio", "size", "n"):
            name = getattr(columns, role)
            if name != role:
                wanted.append(name)
        return [name for name in wanted if name not in header]

    def _mapped_refs(self) -> bool:
        return self.columns.refs != ("refs",)

    def plan(self, cells: dict[str, str]) -> RowPlan:
        """Raises :class:`TemplateRejected` when the template goes over a bound (the batch is
        refused); every other problem is the row's :attr:`RowPlan.error`."""
        columns = self.columns
        caller = (cells.get(columns.caller) or "").strip()
        try:
            n = self._variants(cells.get(columns.n))
            prompt, refs = self._prompt_and_refs(cells)
        except TemplateRejected:
            raise
        except GenerationError as error:
            return RowPlan(caller=caller, n=1, error=error)
        return RowPlan(
            caller=caller,
            n=n,
            prompt=prompt,
            references=tuple(refs),
            model=(cells.get(columns.model) or "").strip() or self.default_model,
            aspect_ratio=(cells.get(columns.aspect_ratio) or "").strip() or columns.default_aspect_ratio,
            image_size=(cells.get(columns.size) or "").strip() or columns.default_size,
        )

    def _variants(self, cell: str | None) -> int:
        text = (cell or "").strip()
        if not text:
            return self.columns.default_n
        try:
            n = int(float(text))
        except ValueError:
            n = 0
        if not 1 <= n <= MAX_VARIANTS or str(n) != text.removesuffix(".0"):
            raise _invalid(
                f"n must be a whole number from 1 to {MAX_VARIANTS}, got {text!r}",
                f"n 必须是 1 到 {MAX_VARIANTS} 的整数，实际为 {text!r}",
                "n",
            )
        return n

    def _prompt_and_refs(self, cells: dict[str, str]) -> tuple[str, list[str]]:
        columns = self.columns
        refs: list[str] = []
        if self.renderer is not None:
            try:
                prompt = self._render(cells)
            except TemplateRowError as exc:
                raise _invalid(
                    f"the prompt template failed for this row: {exc}",
                    f"提示词模板渲染失败：{exc}",
                    "template",
                ) from exc
        else:
            prompt = cells.get(columns.prompt) or ""
        if columns.split_merged_prompt:
            prompt, merged_refs = split_merged_prompt(prompt)
            refs.extend(merged_refs)
        for column in columns.refs:
            refs.extend(split_refs(cells.get(column)))
        if not prompt.strip():
            raise _invalid("the prompt is empty", "提示词为空", "prompt")
        return prompt.strip(), [self._resolve_ref(ref) for ref in refs]

    def _resolve_ref(self, ref: str) -> str:
        lowered = ref.lower()
        if lowered.startswith(("http://", "https://", "data:")):
            return ref
        if not self.allow_local_refs:
            raise _invalid(
                "local file references are not allowed here; use a URL or upload the image",
                "此处不允许引用本地文件；请使用 URL 或上传图片",
                "reference",
            )
        path = Path(ref).expanduser()
        if not path.is_absolute() and self.base_dir is not None:
            path = self.base_dir / path
        return str(path)


def _invalid(message: str, message_zh: str, detail: str) -> GenerationError:
    return GenerationError(
        ErrorKind.INVALID_INPUT, detail=detail, message=message, message_zh=message_zh, request_sent=False
    )
