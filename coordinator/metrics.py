"""The coordinator's Prometheus metrics, and the HTTP endpoint that serves them.

Every instance owns a private registry (never prometheus_client's global one): tests run
several coordinators in one process. The service calls one
method per fact; the endpoint runs in prometheus_client's own daemon thread, so a scrape
never waits for the event loop. docs/metrics.md lists every metric.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)

from common.metrics_http import ServedMetrics
from coordinator.errors import CoordinatorError
from coordinator.validation import REASONS

log = logging.getLogger("fedmq.coordinator.metrics")

STALENESS_BUCKETS = (0, 1, 2, 4, 8, 16, 32, 64)
# decoding a large update, or aggregating it, takes milliseconds to seconds
SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class CoordinatorMetrics(ServedMetrics):
    error = CoordinatorError

    def __init__(self, job: str, strategy: str) -> None:
        super().__init__(CollectorRegistry(target_info={"fedmq_job": job, "strategy": strategy}))
        r = self.registry
        self.versions = Counter(
            "fedmq_versions_published",
            "model versions published (the first one included)",
            registry=r,
        )
        self.version = Gauge("fedmq_model_version", "the last version published", registry=r)
        self.updates_accepted = Counter(
            "fedmq_updates_accepted", "updates accepted by the strategy", registry=r
        )
        self.updates_rejected = Counter(
            "fedmq_updates_rejected", "updates refused, by reason", ["reason"], registry=r
        )
        for reason in REASONS:  # every series exists from the start: rate() sees the first one
            self.updates_rejected.labels(reason)
        self.staleness = Histogram(
            "fedmq_update_staleness",
            "staleness of accepted updates (versions behind)",
            buckets=STALENESS_BUCKETS,
            registry=r,
        )
        self.received_bytes = Counter(
            "fedmq_update_received_bytes", "update payload bytes received", registry=r
        )
        self.decode_seconds = Histogram(
            "fedmq_update_decode_seconds",
            "decoding one update payload",
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.aggregation_seconds = Histogram(
            "fedmq_aggregation_seconds",
            "the strategy applying one update (a new version included)",
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.agents = Gauge(
            "fedmq_agents_online", "agents whose last status is not offline", registry=r
        )
        self.buffered = Gauge(
            "fedmq_buffered_updates", "updates waiting for the next version", registry=r
        )
        # registered at the first evaluation: absent (not 0) while nothing was measured
        self.accuracy = Gauge(
            "fedmq_last_accuracy", "test accuracy of the last evaluated version", registry=None
        )
        self._accuracy_registered = False

    # --- what the service reports (one call each) ----------------------------------------

    def received(self, size: int) -> None:
        self.received_bytes.inc(size)

    def decoding(self) -> AbstractContextManager[Any]:
        return self.decode_seconds.time()

    def aggregating(self) -> AbstractContextManager[Any]:
        return self.aggregation_seconds.time()

    def accepted(self, staleness: int, buffered: int) -> None:
        self.updates_accepted.inc()
        self.staleness.observe(staleness)
        self.buffered.set(buffered)

    def rejected(self, reason: str) -> None:
        self.updates_rejected.labels(reason).inc()

    def published(self, version: int, accuracy: float | None, buffered: int) -> None:
        self.versions.inc()
        self.version.set(version)
        self.buffered.set(buffered)
        if accuracy is not None:
            if not self._accuracy_registered:
                self.registry.register(self.accuracy)
                self._accuracy_registered = True
            self.accuracy.set(accuracy)

    def agents_online(self, count: int) -> None:
        self.agents.set(count)
