"""Prometheus metrics in a registry owned by one app, so two apps in one process never collide."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ..types import GenerationResult

_GENERATION_BUCKETS_S = (0.5, 1, 2, 5, 10, 20, 30, 60, 90, 120, 180, 300, 600, 1200)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.http_requests = Counter(
            "bananaline_http_requests",
            "HTTP requests served",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.http_latency = Histogram(
            "bananaline_http_request_duration_seconds",
            "HTTP request latency",
            ["route"],
            registry=self.registry,
        )
        self.generations = Counter(
            "bananaline_generations",
            "Generations by outcome",
            ["source", "model", "outcome"],
            registry=self.registry,
        )
        self.generation_latency = Histogram(
            "bananaline_generation_duration_seconds",
            "Generation latency including retries",
            ["model", "image_size"],
            buckets=_GENERATION_BUCKETS_S,
            registry=self.registry,
        )
        self.errors = Counter(
            "bananaline_generation_errors", "Failed generations by kind", ["kind"], registry=self.registry
        )
        self.images = Counter(
            "bananaline_images", "Images delivered per caller", ["caller"], registry=self.registry
        )
        self.cost = Counter(
            "bananaline_cost_usd", "Estimated cost per caller in USD", ["caller"], registry=self.registry
        )
        self.in_flight = Gauge(
            "bananaline_jobs_in_flight",
            "Generations and batch runs in flight",
            ["kind"],
            registry=self.registry,
        )

    def track_in_flight(self, kind: str, read: Callable[[], float]) -> None:
        self.in_flight.labels(kind=kind).set_function(read)

    def observe_generation(self, source: str, caller: str, result: GenerationResult) -> None:
        request = result.request
        model = request.model
        outcome = "ok" if result.ok else "error"
        self.generations.labels(source=source, model=model, outcome=outcome).inc()
        self.generation_latency.labels(model=model, image_size=request.image_size or "default").observe(
            result.elapsed_s
        )
        if result.error is not None:
            self.errors.labels(kind=result.error.kind.value).inc()
        if result.ok:
            self.images.labels(caller=caller).inc(len(result.images))
            self.cost.labels(caller=caller).inc(result.cost_usd or 0.0)

    def observe_refusal(self, kind: str) -> None:
        """A request refused before any upstream call (budget, rate, input)."""
        self.errors.labels(kind=kind).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
