"""The child process :mod:`bananaline.batch.template` renders prompt templates in.

It is run by path, not as part of the package, so it imports only Jinja2 and starts fast. Before
anything else it bounds itself with the limits given on its command line (address space, CPU
seconds, no files, no core dumps, a lower priority than the service), compiles the template of
the first stdin line, then answers every further line (one row's cells, JSON) with one line:
``{"prompt": …}``, ``{"row_error": …}`` (this row's template error, as the sandbox reports it)
or ``{"limit": …}`` (a bound was crossed). stdin closing ends it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any


def _bound_self(memory_bytes: int, cpu_s: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.nice(10)


class OutputLimit(Exception):
    """Not a ``TemplateError``: a bound, which refuses the whole batch."""


def _environment(max_chars: int) -> Any:
    from jinja2 import StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    class BoundedEnvironment(SandboxedEnvironment):
        """Sequence repetition and powers are checked before they are computed (and so never
        folded at compile time either)."""

        intercepted_binops = frozenset({"*", "**"})

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            if operator == "*":
                for sequence, times in ((left, right), (right, left)):
                    if isinstance(sequence, str | list | tuple) and isinstance(times, int):
                        if len(sequence) * times > max_chars:
                            raise OutputLimit(
                                f"'*' would make {len(sequence) * times:,} items; "
                                f"a prompt is at most {max_chars:,} characters"
                            )
            elif operator == "**" and isinstance(right, int) and abs(right) > 1024:
                raise OutputLimit(f"'**' with an exponent of {right:,}")
            return super().call_binop(context, operator, left, right)

    return BoundedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)


def _render(template: Any, cells: dict[str, str], max_chars: int) -> str:
    variables = {key: value for key, value in cells.items() if key.isidentifier() and key != "row"}
    parts: list[str] = []
    size = 0
    for chunk in template.generate(**variables, row=dict(cells)):
        size += len(chunk)
        if size > max_chars:
            raise OutputLimit(f"the prompt is longer than {max_chars:,} characters")
        parts.append(chunk)
    return "".join(parts)


#: An answer held back while more rows wait is sent at the latest this much later: the parent
#: times each row by the answers it receives, so they may not sit in the buffer for long.
_HOLD_ANSWERS_S = 0.05


def _answer(stdout: Any, message: dict[str, str], *, flush: bool = True) -> None:
    stdout.write(json.dumps(message).encode("ascii") + b"\n")
    if flush:
        stdout.flush()


def _more_waiting(stdin: Any) -> bool:
    """Is another row already on its way? Then this answer can go with the next ones."""
    import select

    readable, _, _ = select.select([stdin], [], [], 0)
    return bool(readable)


def main() -> None:
    _bound_self(int(sys.argv[1]), int(sys.argv[2]))
    from jinja2 import TemplateError

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    header = json.loads(stdin.readline())
    max_chars = int(header["max_chars"])
    try:
        template = _environment(max_chars).from_string(header["template"])
    except TemplateError as exc:
        _answer(stdout, {"error": f"the prompt template does not compile: {exc}"})
        return
    except (MemoryError, RecursionError, OutputLimit) as exc:
        _answer(stdout, {"limit": f"the prompt template is too large to compile ({type(exc).__name__})"})
        return
    _answer(stdout, {"ready": "1"})
    flushed = time.monotonic()
    for line in stdin:
        cells = json.loads(line)
        try:
            answer = {"prompt": _render(template, cells, max_chars)}
        except OutputLimit as exc:
            answer = {"limit": str(exc)}
        except MemoryError:
            answer = {"limit": "the template needs more memory than a prompt may use"}
        except RecursionError:
            answer = {"limit": "the template recurses too deeply"}
        except TemplateError as exc:
            answer = {"row_error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - any other failure is this row's template error
            answer = {"row_error": f"{type(exc).__name__}: {exc}"}
        now = time.monotonic()
        flush = now - flushed >= _HOLD_ANSWERS_S or not _more_waiting(stdin)
        _answer(stdout, answer, flush=flush)
        if flush:
            flushed = now
    stdout.flush()


if __name__ == "__main__":
    main()
