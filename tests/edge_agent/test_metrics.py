"""The agent's metrics read its current status at scrape time; device gauges appear only
where the device measures them."""

from __future__ import annotations

import urllib.request

import pytest

from common.messages import AgentState, AgentStatus
from edge_agent.errors import AgentError
from edge_agent.metrics import AgentMetrics


class Holder:
    """Stands for the agent: a status replaced as a whole."""

    def __init__(self) -> None:
        self.status = AgentStatus(agent="jetson-07", state=AgentState.ONLINE)

    def update(self, **changes: object) -> None:
        self.status = self.status.model_copy(update=changes)


def test_counters_follow_the_status_and_training_time_is_observed():
    agent = Holder()
    metrics = AgentMetrics("jetson-07", "digits", lambda: agent.status)
    sample = metrics.registry.get_sample_value
    assert sample("fedmq_agent_updates_sent_total") == 0
    agent.update(updates_sent=3, uplink_bytes=4096, uploads_skipped=2)
    metrics.trained(1.5)
    metrics.trained(40)
    assert sample("fedmq_agent_updates_sent_total") == 3
    assert sample("fedmq_agent_sent_bytes_total") == 4096
    assert sample("fedmq_agent_uploads_skipped_total") == 2
    assert sample("fedmq_agent_training_seconds_count") == 2
    assert sample("fedmq_agent_training_seconds_bucket", {"le": "2.5"}) == 1
    assert sample("target_info", {"fedmq_job": "digits", "agent": "jetson-07"}) == 1


def test_device_gauges_appear_only_when_measured():
    agent = Holder()
    metrics = AgentMetrics("pc", "digits", lambda: agent.status)
    text = metrics.render().decode()
    for name in ("temperature", "gpu_load", "power"):
        assert f"fedmq_agent_{name}" not in text
    agent.update(
        temperature_c=71.5,
        gpu_load=0.25,
        power_mw=11400,
        power_rails_mw={"VDD_IN": 11400, "VDD_CPU_CV": 2000},
    )
    sample = metrics.registry.get_sample_value
    assert sample("fedmq_agent_temperature_celsius") == 71.5
    assert sample("fedmq_agent_gpu_load_ratio") == 0.25
    assert sample("fedmq_agent_power_watts") == 11.4
    assert sample("fedmq_agent_rail_power_watts", {"rail": "VDD_CPU_CV"}) == 2.0


def test_endpoint_is_off_without_a_port_and_serves_with_one():
    agent = Holder()
    metrics = AgentMetrics("jetson-07", "digits", lambda: agent.status)
    assert metrics.start_http("127.0.0.1", None) is None
    port = metrics.start_http("127.0.0.1", 0)
    assert port is not None
    try:
        with pytest.raises(AgentError, match="already running"):
            metrics.start_http("127.0.0.1", 0)
        agent.update(updates_sent=1)
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            assert b"fedmq_agent_updates_sent_total 1.0" in response.read()
    finally:
        metrics.stop_http()
