"""The agent's optional Prometheus endpoint (``metrics_port``).

Counters and device readings come from the agent's own status at scrape time: the status is
an immutable message the agent replaces as a whole, so the endpoint's thread reads a
consistent one, and nothing is counted twice. Only training time is observed directly. Device
gauges (temperature, GPU load, power) appear only where the device measures them.
A private registry, as on the coordinator. docs/metrics.md lists every metric.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Histogram,
    disable_created_metrics,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from common.messages import AgentStatus
from edge_agent.errors import AgentError

# The text format would repeat every counter and histogram as a "_created" gauge: noise here.
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus_client

log = logging.getLogger("fedmq.agent.metrics")

# a round on a Jetson: a fraction of a second (a small model) to minutes
TRAINING_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
STOP_SECONDS = 5.0


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


class AgentMetrics:
    def __init__(self, agent: str, job: str, status: Callable[[], AgentStatus]) -> None:
        self.registry = CollectorRegistry(target_info={"fedmq_job": job, "agent": agent})
        self.training_seconds = Histogram(
            "fedmq_agent_training_seconds",
            "local training of one round (the simulated slowdown excluded)",
            buckets=TRAINING_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(StatusCollector(status))
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def trained(self, seconds: float) -> None:
        self.training_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def start_http(self, host: str, port: int | None) -> int | None:
        """Serve ``/metrics`` (port 0: a free one); None does nothing. The bound port."""
        if port is None:
            return None
        if self._server is not None:
            raise AgentError("the metrics endpoint is already running")
        try:
            self._server, self._thread = start_http_server(port, host, registry=self.registry)
        except OSError as error:
            raise AgentError(
                f"metrics endpoint: cannot listen on {host}:{port} ({error.strerror or error})"
            ) from error
        bound = int(self._server.server_port)
        log.info("metrics on http://%s:%d/metrics", host, bound)
        return bound

    def stop_http(self) -> None:
        """Stop serving and release the port (idempotent)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(STOP_SECONDS)
