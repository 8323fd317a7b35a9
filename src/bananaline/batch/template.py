"""Prompt templates with real bounds: a batch's rows render in a short-lived child process.

Jinja2's sandbox keeps a template from reaching into Python, not from spending:
``{% for a in range(99999) %}{% for b in range(99999) %}{% endfor %}{% endfor %}`` is pure CPU
and passes no hook the sandbox has, and ``{{ 'x' * 50000000 }}`` is 50 MB per row before any
check could see the result. No in-process check bounds CPU, so the rows of a batch are rendered
by a child process (``_template_child.py``, one per batch, rows streamed one at a time):

* output: at most :attr:`TemplateBounds.max_prompt_chars` per row, counted chunk by chunk as
  the row renders (``*`` and ``**`` are checked before they compute), and at most
  :attr:`~TemplateBounds.max_batch_chars` for the whole batch;
* time: :attr:`~TemplateBounds.row_timeout_s` per row and
  :attr:`~TemplateBounds.batch_timeout_s` per batch on the wall clock, after which the child is
  killed; its own ``RLIMIT_CPU`` stops it even if this process dies first;
* memory: the child's ``RLIMIT_AS`` (:attr:`~TemplateBounds.child_memory_bytes`);
* everyone else: the child runs niced, and in the service the work that renders runs through
  :func:`in_render_pool` (:data:`MAX_CONCURRENT_RENDERS` threads of its own), never on the event
  loop or the default thread pool the token checks use.

A batch renders in one pass (:func:`render_all`, what ``RowPlanner.prerender`` uses): every
distinct row pipelined through one child.

This process only *parses* the template (syntax errors and unknown filters are reported at
once): compiling would fold constant expressions, i.e. compute them, here.

A crossed bound refuses the whole batch with :class:`TemplateRejected` (``invalid_input``:
HTTP 422, CLI exit 2); an ordinary template error in one row (a missing column) stays that
row's :class:`TemplateRowError`.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import math
import os
import select
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from jinja2 import TemplateError, nodes
from jinja2.sandbox import SandboxedEnvironment

from ..errors import ErrorKind, GenerationError

#: The longest prompt any door accepts (the OpenAI images gateway's ``prompt``).
MAX_PROMPT_CHARS = 32_000
T = TypeVar("T")
#: Batches rendering at once in one process (the service); the others wait without a thread.
MAX_CONCURRENT_RENDERS = 2
_CHILD = Path(__file__).with_name("_template_child.py")
_STARTUP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class TemplateBounds:
    """What one batch's render may spend. A simple template renders a row in well under a
    millisecond, so the time bounds only ever stop a template that loops."""

    max_prompt_chars: int = MAX_PROMPT_CHARS
    #: 20,000 rows of 2,000 characters.
    max_batch_chars: int = 40_000_000
    row_timeout_s: float = 1.0
    batch_timeout_s: float = 20.0
    child_memory_bytes: int = 256 * 1024 * 1024


DEFAULT_BOUNDS = TemplateBounds()


class TemplateRejected(GenerationError):
    """The template crossed a bound (or does not compile): the whole batch is refused."""

    def __init__(self, message: str) -> None:
        super().__init__(
            ErrorKind.INVALID_INPUT,
            detail="template",
            message=message,
            message_zh=f"提示词模板被拒绝：{message}",
            request_sent=False,
        )


class TemplateRowError(Exception):
    """This row's template error (a missing column, a sandbox refusal): only the row fails."""


class BoundedTemplate:
    """A parsed template; rows render in a child process started at the first row and stopped
    by :meth:`close` (or when this object is collected). Raises ``ValueError`` for a template
    that does not parse."""

    def __init__(self, source: str, bounds: TemplateBounds = DEFAULT_BOUNDS) -> None:
        _check_syntax(source)
        self.source = source
        self.bounds = bounds
        self._session: _Session | None = None
        self._lock = threading.Lock()

    def render(self, cells: dict[str, str]) -> str:
        [outcome] = self.render_many([cells])
        return outcome.prompt()

    def render_many(self, rows: Iterable[dict[str, str]]) -> list[_Outcome]:
        """Every row's outcome, the rows pipelined through one child."""
        with self._lock:
            if self._session is None:
                self._session = _Session(self.source, self.bounds)
                weakref.finalize(self, self._session.close)
            return list(self._session.render_many(rows))

    def close(self) -> None:
        with self._lock:
            if self._session is not None:
                self._session.close()
                self._session = None


def _check_syntax(source: str) -> None:
    env = SandboxedEnvironment()
    try:
        tree = env.parse(source)
    except TemplateError as exc:
        raise ValueError(f"the prompt template does not parse: {exc}") from None
    except RecursionError:
        raise ValueError("the prompt template is nested too deeply") from None
    for node in tree.find_all(nodes.Filter):
        if node.name not in env.filters:
            raise ValueError(f"the prompt template uses an unknown filter {node.name!r}")
    for test in tree.find_all(nodes.Test):
        if test.name not in env.tests:
            raise ValueError(f"the prompt template uses an unknown test {test.name!r}")


class _Stopped(Exception):
    pass


#: Rows encoded ahead of the child: enough to keep it busy, never the whole batch at once.
_WRITE_AHEAD_BYTES = 256 * 1024


class _Session:
    """One child process rendering one batch; rows are pipelined (the child renders the next
    while this reads the last answer), and the time and output spent so far are kept."""

    def __init__(self, source: str, bounds: TemplateBounds) -> None:
        self.bounds = bounds
        self.spent_s = 0.0
        self.output_chars = 0
        #: Why the session was stopped; once set, the pipes are closed and never touched again.
        self.rejection: str | None = None
        self._pending = bytearray()
        self._received = bytearray()
        #: JSON escapes a character in at most 12 bytes (a surrogate pair).
        self._max_line_bytes = 12 * bounds.max_prompt_chars + 4096
        cpu_s = math.ceil(bounds.batch_timeout_s) + 1
        try:
            self._process = subprocess.Popen(
                [sys.executable, str(_CHILD), str(bounds.child_memory_bytes), str(cpu_s)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=_child_env(),
                close_fds=True,
            )
        except OSError as exc:
            raise TemplateRejected(f"the template renderer could not start ({exc})") from None
        assert self._process.stdin is not None and self._process.stdout is not None
        self._stdin_fd = self._process.stdin.fileno()
        self._stdout_fd = self._process.stdout.fileno()
        os.set_blocking(self._stdin_fd, False)
        header = {"template": source, "max_chars": bounds.max_prompt_chars}
        try:
            answer = next(self._exchange([header], answer_timeout_s=_STARTUP_TIMEOUT_S, counted=False))
        except _Stopped as exc:
            raise self._reject(f"the template renderer did not start ({exc})") from None
        if "ready" not in answer:
            raise self._reject(str(answer.get("error") or answer.get("limit")))

    def render_many(self, rows: Iterable[dict[str, str]]) -> Iterator[_Outcome]:
        """One outcome per row, in order; raises :class:`TemplateRejected` at a crossed bound
        (and again for every later call: a stopped session stays stopped)."""
        if self.rejection is not None:
            raise TemplateRejected(self.rejection)
        try:
            for answer in self._exchange(rows):
                yield self._accept(answer)
        except _Stopped as exc:
            raise self._reject(self._stopped_message(str(exc))) from None

    def _accept(self, answer: dict[str, Any]) -> _Outcome:
        if "limit" in answer:
            raise self._reject(f"the prompt template went over a bound: {answer['limit']}")
        if "row_error" in answer:
            return _Outcome(str(answer["row_error"]), failed=True)
        prompt = str(answer["prompt"])
        self.output_chars += len(prompt)
        if self.output_chars > self.bounds.max_batch_chars:
            raise self._reject(
                f"the prompts of this batch come to more than {self.bounds.max_batch_chars:,} characters"
            )
        return _Outcome(prompt, failed=False)

    def _reject(self, message: str) -> TemplateRejected:
        self.rejection = message
        self.close()
        return TemplateRejected(message)

    def _stopped_message(self, reason: str) -> str:
        bounds = self.bounds
        if reason == "row timeout":
            return f"the prompt template took more than {bounds.row_timeout_s:g} s for one row"
        if reason == "batch timeout":
            return f"the prompt template took more than {bounds.batch_timeout_s:g} s for this batch"
        return f"the prompt template was stopped: it went over its CPU or memory bound ({reason})"

    def _exchange(
        self,
        messages: Iterable[dict[str, Any]],
        *,
        answer_timeout_s: float | None = None,
        counted: bool = True,
    ) -> Iterator[dict[str, Any]]:
        """Send the messages and yield the answers, one per message, each within the row timeout
        of the one before (and all within what is left of the batch's time)."""
        bounds = self.bounds
        answer_timeout_s = answer_timeout_s or bounds.row_timeout_s
        source = iter(messages)
        exhausted, in_flight = False, 0
        last_answer = time.monotonic()
        while True:
            while not exhausted and len(self._pending) < _WRITE_AHEAD_BYTES:
                message = next(source, None)
                if message is None:
                    exhausted = True
                else:
                    self._pending += json.dumps(message, ensure_ascii=False).encode("utf-8") + b"\n"
                    in_flight += 1
            if exhausted and in_flight == 0:
                return
            started = time.monotonic()
            deadline, reason = last_answer + answer_timeout_s, "row timeout"
            if counted and started + (bounds.batch_timeout_s - self.spent_s) < deadline:
                deadline, reason = started + (bounds.batch_timeout_s - self.spent_s), "batch timeout"
            if deadline <= started:
                raise _Stopped(reason)
            writable = [self._stdin_fd] if self._pending else []
            readable, can_write, _ = select.select([self._stdout_fd], writable, [], deadline - started)
            if can_write:
                self._write_some()
            answers = self._read_some() if readable else []
            if counted:
                self.spent_s += time.monotonic() - started
            for answer in answers:
                in_flight -= 1
                last_answer = time.monotonic()
                yield answer

    def _write_some(self) -> None:
        try:
            written = os.write(self._stdin_fd, self._pending[:65536])
        except BlockingIOError:
            return
        except OSError:
            raise _Stopped(self._exit_reason()) from None
        del self._pending[:written]

    def _read_some(self) -> list[dict[str, Any]]:
        chunk = os.read(self._stdout_fd, 1 << 16)
        if not chunk:
            raise _Stopped(self._exit_reason())
        self._received += chunk
        answers: list[dict[str, Any]] = []
        while (newline := self._received.find(b"\n")) >= 0:
            answer = json.loads(bytes(self._received[:newline]))
            del self._received[: newline + 1]
            if not isinstance(answer, dict):
                raise _Stopped("an answer that is not an object")
            answers.append(answer)
        if len(self._received) > self._max_line_bytes:
            raise _Stopped("an answer longer than any prompt")
        return answers

    def _exit_reason(self) -> str:
        try:
            code = self._process.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            return "it stopped answering"
        return f"exit {code}"

    def close(self) -> None:
        if self.rejection is None:
            self.rejection = "the template renderer was closed"
        process = self._process
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        if process.poll() is None:
            try:
                process.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _child_env() -> dict[str, str]:
    """No secrets in the child: only what finds Python and its packages."""
    keep = ("PATH", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "LD_LIBRARY_PATH", "LANG", "LC_ALL")
    env = {name: os.environ[name] for name in keep if name in os.environ}
    env.update(PYTHONSAFEPATH="1", PYTHONDONTWRITEBYTECODE="1", PYTHONIOENCODING="utf-8")
    return env


# rendering a whole batch ahead, off the event loop and off the default thread pool -------------


@dataclass(frozen=True)
class _Outcome:
    text: str
    failed: bool

    def prompt(self) -> str:
        if self.failed:
            raise TemplateRowError(self.text)
        return self.text


@dataclass(frozen=True)
class PrerenderedPrompts:
    """Every row's prompt (or row error) for one template, by the row's content."""

    source: str
    by_row: dict[bytes, _Outcome] = field(default_factory=dict)

    def outcome(self, cells: dict[str, str]) -> _Outcome | None:
        return self.by_row.get(_row_key(cells))


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _row_key(cells: dict[str, str]) -> bytes:
    return hashlib.sha256(json.dumps(cells, sort_keys=True, ensure_ascii=False).encode("utf-8")).digest()


def render_all(
    source: str, rows: Sequence[dict[str, str]], bounds: TemplateBounds = DEFAULT_BOUNDS
) -> PrerenderedPrompts:
    """Every distinct row rendered in one child (then stopped): one pipelined pass instead of a
    round trip per row. Raises ``ValueError`` (syntax) or :class:`TemplateRejected` (a bound)."""
    template = BoundedTemplate(source, bounds)
    unique: dict[bytes, dict[str, str]] = {}
    for cells in rows:
        unique.setdefault(_row_key(cells), cells)
    try:
        outcomes = template.render_many(unique.values())
    finally:
        template.close()
    return PrerenderedPrompts(source, dict(zip(unique, outcomes, strict=True)))


async def in_render_pool(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run blocking work that renders a template on the renderers' own threads: a hostile
    template then holds one of these, never the event loop or the default pool that token
    checks and database calls share."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(MAX_CONCURRENT_RENDERS, thread_name_prefix="bananaline-template")
    return await asyncio.get_running_loop().run_in_executor(_pool, functools.partial(fn, *args, **kwargs))


__all__ = [
    "DEFAULT_BOUNDS",
    "MAX_CONCURRENT_RENDERS",
    "MAX_PROMPT_CHARS",
    "BoundedTemplate",
    "PrerenderedPrompts",
    "TemplateBounds",
    "TemplateRejected",
    "TemplateRowError",
    "in_render_pool",
    "render_all",
]
