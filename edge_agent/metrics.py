"""The agent's optional Prometheus endpoint (``metrics_port``).

Counters and device readings come from the agent's own status at scrape time: the status is
an immutable message the agent replaces as a whole, so the endpoint's thread reads a
consistent one, and nothing is counted twice. Only training time is observed directly. Device
gauges (temperature, GPU load, power) appear only where the device measures them.
A private registry, as on the coordinator. docs/metrics.md lists every metric.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Histogram,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from common.messages import AgentStatus
from common.metrics_http import ServedMetrics
from edge_agent.errors import AgentError

log = logging.getLogger("fedmq.agent.metrics")

# a round on a Jetson: a fraction of a second (a small model) to minutes
TRAINING_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class StatusCollector(Collector):
    """The counters and device readings of the agent's current status."""

    def __init__(self, status: Callable[[], AgentStatus]) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        status = self._status()
        yield CounterMetricFamily(
            "fedmq_agent_updates_sent", "updates published", value=status.updates_sent
        )
        yield CounterMetricFamily(
            "fedmq_agent_sent_bytes", "update payload bytes published", value=status.uplink_bytes
        )
        yield CounterMetricFamily(
            "fedmq_agent_uploads_skipped",
            "rounds the lazy-upload rule (LAQ) did not upload",
            value=status.uploads_skipped,
        )
        if status.temperature_c is not None:
            yield GaugeMetricFamily(
                "fedmq_agent_temperature_celsius",
                "the hottest thermal zone",
                value=status.temperature_c,
            )
        if status.gpu_load is not None:
            yield GaugeMetricFamily(
                "fedmq_agent_gpu_load_ratio", "Jetson GPU load (0..1)", value=status.gpu_load
            )
        if status.power_mw is not None:
            yield GaugeMetricFamily(
                "fedmq_agent_power_watts", "module power", value=status.power_mw / 1000
            )
        if status.power_rails_mw:
            rails = GaugeMetricFamily(
                "fedmq_agent_rail_power_watts", "power of each measured rail", labels=["rail"]
            )
            for rail, milliwatts in sorted(status.power_rails_mw.items()):
                rails.add_metric([rail], milliwatts / 1000)
            yield rails


class AgentMetrics(ServedMetrics):
    error = AgentError

    def __init__(self, agent: str, job: str, status: Callable[[], AgentStatus]) -> None:
        super().__init__(CollectorRegistry(target_info={"fedmq_job": job, "agent": agent}))
        self.training_seconds = Histogram(
            "fedmq_agent_training_seconds",
            "local training of one round (the simulated slowdown excluded)",
            buckets=TRAINING_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(StatusCollector(status))

    def trained(self, seconds: float) -> None:
        self.training_seconds.observe(seconds)
