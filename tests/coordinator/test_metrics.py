"""The coordinator's metrics move with what the service reports, render in the Prometheus
text format, and are served over HTTP on a port that is released at shutdown."""

from __future__ import annotations

import socket
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from coordinator.errors import CoordinatorError
from coordinator.metrics import CoordinatorMetrics
from coordinator.validation import REASONS


def value(metrics: CoordinatorMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_counters_and_gauges_follow_the_service():
    metrics = CoordinatorMetrics("digits", "fedbuff")
    metrics.received(1000)
    metrics.received(24)
    with metrics.decoding():
        pass
    with metrics.aggregating():
        pass
    metrics.accepted(staleness=3, buffered=2)
    metrics.rejected("stale")
    metrics.rejected("stale")
    metrics.rejected("malformed")
    metrics.published(7, accuracy=0.91, buffered=0)
    metrics.agents_online(5)

    assert value(metrics, "fedmq_update_received_bytes_total") == 1024
    assert value(metrics, "fedmq_update_decode_seconds_count") == 1
    assert value(metrics, "fedmq_aggregation_seconds_count") == 1
    assert value(metrics, "fedmq_updates_accepted_total") == 1
    assert value(metrics, "fedmq_updates_rejected_total", reason="stale") == 2
    assert value(metrics, "fedmq_updates_rejected_total", reason="malformed") == 1
    assert value(metrics, "fedmq_versions_published_total") == 1
    assert value(metrics, "fedmq_model_version") == 7
    assert value(metrics, "fedmq_last_accuracy") == 0.91
    assert value(metrics, "fedmq_buffered_updates") == 0
    assert value(metrics, "fedmq_agents_online") == 5


def test_staleness_lands_in_its_bucket():
    metrics = CoordinatorMetrics("digits", "fedasync")
    for staleness in (0, 0, 3, 70):
        metrics.accepted(staleness, buffered=0)
    bucket = "fedmq_update_staleness_bucket"
    assert value(metrics, bucket, le="0.0") == 2
    assert value(metrics, bucket, le="2.0") == 2
    assert value(metrics, bucket, le="4.0") == 3
    assert value(metrics, bucket, le="64.0") == 3
    assert value(metrics, bucket, le="+Inf") == 4
    assert value(metrics, "fedmq_update_staleness_sum") == 73


def test_every_rejection_reason_is_exported_before_it_happens():
    metrics = CoordinatorMetrics("digits", "fedbuff")
    for reason in REASONS:
        assert value(metrics, "fedmq_updates_rejected_total", reason=reason) == 0


def test_accuracy_is_absent_until_a_version_was_evaluated():
    metrics = CoordinatorMetrics("digits", "fedbuff")
    metrics.published(0, accuracy=None, buffered=0)
    assert value(metrics, "fedmq_last_accuracy") is None
    assert b"fedmq_last_accuracy" not in metrics.render()
    metrics.published(1, accuracy=0.5, buffered=0)
    metrics.published(2, accuracy=0.75, buffered=0)
    assert value(metrics, "fedmq_last_accuracy") == 0.75


def test_coordinators_in_one_process_keep_their_own_figures():
    first, second = CoordinatorMetrics("a", "fedbuff"), CoordinatorMetrics("b", "fedavg")
    first.accepted(0, buffered=1)
    assert value(first, "fedmq_updates_accepted_total") == 1
    assert value(second, "fedmq_updates_accepted_total") == 0


def test_rendered_text_is_the_prometheus_format():
    metrics = CoordinatorMetrics("digits", "fedbuff")
    metrics.rejected("duplicate")
    text = metrics.render().decode()
    assert "# TYPE fedmq_updates_rejected_total counter" in text
    assert "# TYPE fedmq_update_staleness histogram" in text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    info = families["target_info"].samples[0]
    assert info.labels == {"fedmq_job": "digits", "strategy": "fedbuff"}
    samples = {
        s.labels.get("reason"): s.value
        for s in families["fedmq_updates_rejected"].samples
        if s.name.endswith("_total")
    }
    assert samples["duplicate"] == 1 and samples["stale"] == 0


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        return str(response.read().decode())


def test_endpoint_serves_on_a_free_port_and_releases_it():
    metrics = CoordinatorMetrics("digits", "fedbuff")
    assert metrics.start_http("127.0.0.1", None) is None  # off
    port = metrics.start_http("127.0.0.1", 0)
    assert port is not None
    try:
        metrics.received(5)
        assert "fedmq_update_received_bytes_total 5.0" in scrape(port)
        metrics.received(5)
        assert "fedmq_update_received_bytes_total 10.0" in scrape(port)
    finally:
        metrics.stop_http()
    metrics.stop_http()  # twice is harmless
    with pytest.raises(ConnectionRefusedError):  # the listening socket is closed
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_a_port_in_use_is_a_clear_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(CoordinatorError, match=f"cannot listen on 127.0.0.1:{port}"):
            CoordinatorMetrics("digits", "fedbuff").start_http("127.0.0.1", port)
