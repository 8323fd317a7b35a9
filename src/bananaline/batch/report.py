"""The end of a run: figures (rows by status, errors by kind, latency, throughput, money) and a
self-contained HTML report. Every cell is hostile, so the template autoescapes everything and
only ``http``/``https``/``file`` links are ever rendered as links."""

from __future__ import annotations

import base64
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from jinja2 import Environment

from .models import JobRecord
from .results import RowResult

TOP_MESSAGES = 3


@dataclass
class ErrorGroup:
    count: int
    top_messages: list[tuple[str, int]]


@dataclass
class BatchSummary:
    batch_id: str
    rows_total: int
    rows_by_status: dict[str, int]
    errors_by_kind: dict[str, ErrorGroup]
    latency_p50_s: float | None
    latency_p95_s: float | None
    images_total: int
    cost_total_usd: float
    cost_by_caller: dict[str, float]
    #: This run only: wall time, jobs finished, images made.
    run_elapsed_s: float = 0.0
    run_jobs_finished: int = 0
    run_images: int = 0
    interrupted: bool = False
    generated_at: float = field(default_factory=time.time)

    @property
    def images_per_minute(self) -> float | None:
        if self.run_elapsed_s <= 0 or not self.run_images:
            return None
        return self.run_images * 60.0 / self.run_elapsed_s

    @property
    def all_terminal(self) -> bool:
        return not (self.rows_by_status.get("queued") or self.rows_by_status.get("running"))

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "images_per_minute": self.images_per_minute,
            "all_terminal": self.all_terminal,
        }


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile; ``None`` for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def summarize(
    batch_id: str,
    rows: list[RowResult],
    jobs: list[JobRecord],
    *,
    run_elapsed_s: float = 0.0,
    run_jobs_finished: int = 0,
    run_images: int = 0,
    interrupted: bool = False,
) -> BatchSummary:
    by_status = Counter(row.status for row in rows)
    groups: dict[str, Counter[str]] = {}
    for row in rows:
        if row.error_kind:
            groups.setdefault(row.error_kind, Counter())[row.error or row.error_kind] += 1
    latencies = [job.latency_s for job in jobs if job.status == "done" and job.latency_s is not None]
    cost_by_caller: dict[str, float] = {}
    for job in jobs:
        if job.cost_usd:
            name = job.caller or "(default)"
            cost_by_caller[name] = cost_by_caller.get(name, 0.0) + job.cost_usd
    return BatchSummary(
        batch_id=batch_id,
        rows_total=len(rows),
        rows_by_status=dict(by_status),
        errors_by_kind={
            kind: ErrorGroup(sum(c.values()), c.most_common(TOP_MESSAGES))
            for kind, c in sorted(groups.items(), key=lambda item: -sum(item[1].values()))
        },
        latency_p50_s=percentile(latencies, 0.50),
        latency_p95_s=percentile(latencies, 0.95),
        images_total=sum(len(row.images) for row in rows),
        cost_total_usd=round(sum(cost_by_caller.values()), 6),
        cost_by_caller={k: round(v, 6) for k, v in sorted(cost_by_caller.items())},
        run_elapsed_s=run_elapsed_s,
        run_jobs_finished=run_jobs_finished,
        run_images=run_images,
        interrupted=interrupted,
    )


def summary_lines(summary: BatchSummary) -> list[str]:
    """Plain text lines for the terminal (the CLI adds colour)."""
    lines = [f"batch {summary.batch_id}: {summary.rows_total} rows"]
    lines.append(
        "  rows: "
        + ", ".join(f"{status} {count}" for status, count in sorted(summary.rows_by_status.items()))
    )
    for kind, group in summary.errors_by_kind.items():
        lines.append(f"  {kind}: {group.count}")
        for message, count in group.top_messages:
            lines.append(f"      {count} × {message}")
    if summary.latency_p50_s is not None:
        lines.append(f"  latency p50 {summary.latency_p50_s:.2f}s, p95 {summary.latency_p95_s:.2f}s")
    rate = summary.images_per_minute
    lines.append(
        f"  this run: {summary.run_images} images in {summary.run_elapsed_s:.1f}s"
        + (f" ({rate:.1f} images/min)" if rate else "")
    )
    costs = ", ".join(f"{caller} ${cost:.3f}" for caller, cost in summary.cost_by_caller.items())
    lines.append(f"  cost ${summary.cost_total_usd:.3f}" + (f" ({costs})" if costs else ""))
    if summary.interrupted:
        lines.append("  interrupted: run the same command again to resume")
    return lines


_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>bananaline batch {{ s.batch_id }}</title>
<style>
body{font:14px/1.45 system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}
.gallery{display:flex;flex-wrap:wrap;gap:12px}.card{width:180px;font-size:12px}
.card img{max-width:180px;max-height:180px;display:block;background:#eee}
.prompt{white-space:pre-wrap;word-break:break-word}.failed{color:#a00}
</style></head><body>
<h1>Batch {{ s.batch_id }}</h1>
<p>{{ s.rows_total }} rows ·
{% for status, count in s.rows_by_status|dictsort %}{{ status }} {{ count }}{{ ", " if not loop.last }}
{% endfor %}</p>
<table>
<tr><th>latency p50</th><td>{{ fmt_s(s.latency_p50_s) }}</td></tr>
<tr><th>latency p95</th><td>{{ fmt_s(s.latency_p95_s) }}</td></tr>
<tr><th>images (all runs)</th><td>{{ s.images_total }}</td></tr>
<tr><th>this run</th><td>{{ s.run_images }} images in {{ "%.1f"|format(s.run_elapsed_s) }} s
{% if s.images_per_minute %} ({{ "%.1f"|format(s.images_per_minute) }} images/min){% endif %}</td></tr>
<tr><th>cost total</th><td>${{ "%.3f"|format(s.cost_total_usd) }}</td></tr>
{% for caller, cost in s.cost_by_caller.items() %}
<tr><th>cost · {{ caller }}</th><td>${{ "%.3f"|format(cost) }}</td></tr>
{% endfor %}
</table>
{% if s.errors_by_kind %}<h2>Errors by kind</h2>
<table><tr><th>kind</th><th>rows</th><th>top messages</th></tr>
{% for kind, group in s.errors_by_kind.items() %}
<tr><td>{{ kind }}</td><td>{{ group.count }}</td>
<td>{% for message, count in group.top_messages %}{{ count }} × {{ message }}<br>{% endfor %}</td></tr>
{% endfor %}
</table>{% endif %}
{% if failed %}<h2>Failed rows</h2>
<table><tr><th>row</th><th>caller</th><th>prompt</th><th>error</th></tr>
{% for row in failed %}
<tr><td>{{ row.row_index + 2 }}</td><td>{{ row.caller }}</td><td class="prompt">{{ row.prompt or "" }}</td>
<td class="failed"><b>{{ row.error_kind }}</b> {{ row.error or "" }}
{% if row.error_zh %}<br>{{ row.error_zh }}{% endif %}</td></tr>
{% endfor %}
</table>{% endif %}
<h2>Gallery</h2><div class="gallery">
{% for row in done %}<div class="card">
{% for image in row.images %}{% set preview = previews.get((row.row_index, loop.index0)) %}
{% set link = safe_link(image.url) %}{% set alt = "row %d"|format(row.row_index + 2) %}
{% if link %}<a href="{{ image.url }}">{% endif %}
{% if preview %}<img src="{{ preview }}" alt="{{ alt }}">
{% elif safe_link(image.thumbnail_url) %}<img src="{{ image.thumbnail_url }}" alt="{{ alt }}">
{% else %}image {{ loop.index }}{% endif %}
{% if link %}</a>{% endif %}
{% endfor %}
<div>row {{ row.row_index + 2 }} · {{ row.caller }}</div>
<div class="prompt">{{ (row.prompt or "")[:200] }}</div></div>
{% endfor %}
</div>
<p><small>generated by bananaline</small></p>
</body></html>
"""


def _fmt_s(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f} s"


def _safe_link(url: str | None) -> bool:
    return bool(url) and str(url).lower().startswith(("http://", "https://", "file://"))


def render_html(summary: BatchSummary, rows: list[RowResult]) -> str:
    """One HTML file with everything inline: previews as data URIs, hostile text escaped."""
    env = Environment(autoescape=True)
    template = env.from_string(_TEMPLATE)
    previews = {}
    for row in rows:
        for position, preview in enumerate(row.previews):
            previews[(row.row_index, position)] = (
                "data:image/jpeg;base64," + base64.b64encode(preview).decode()
            )
    return template.render(
        s=summary,
        failed=[row for row in rows if row.status in ("failed", "cancelled")],
        done=[row for row in rows if row.images],
        previews=previews,
        fmt_s=_fmt_s,
        safe_link=_safe_link,
    )
