"""The agent speaks sd_notify to a real unix datagram socket, as systemd would listen:
READY once connected with a model, periodic WATCHDOG, STOPPING on SIGTERM."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import pytest

from broker.dev import DevBroker
from edge_agent.systemd import Notifier
from tests.integration.conftest import start_coordinator, stop
from tests.integration.test_agent import start_agent


def receive_until(sock: socket.socket, wanted: str, timeout: float) -> list[str]:
    """Datagrams received until one contains ``wanted`` (or the time is up)."""
    received: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            received.append(sock.recv(4096).decode())
        except TimeoutError:
            break
        if wanted in received[-1]:
            break
    return received


@pytest.fixture
def notify_socket(tmp_path: Path):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    yield path, sock
    sock.close()


def test_agent_notifies_ready_watchdog_and_stopping(
    broker: DevBroker, tmp_path: Path, notify_socket, monkeypatch
):
    path, sock = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")  # ping every 0.5 s
    coordinator = start_coordinator(broker, tmp_path, job="agenttest", evaluate_every=0)
    try:
        agent = start_agent(broker, tmp_path, "agent-sd")
        before_ready = receive_until(sock, "READY=1", 120)
        assert any("READY=1" in m for m in before_ready), before_ready
        pings = receive_until(sock, "never", 2.0)
        assert sum("WATCHDOG=1" in m for m in pings) >= 2
        assert any(m.startswith("STATUS=") for m in pings + before_ready)
        agent.send_signal(signal.SIGTERM)
        after = receive_until(sock, "STOPPING=1", 30)
        assert any("STOPPING=1" in m for m in after)
        assert agent.wait(30) == 0
    finally:
        stop(coordinator)


def test_notifier_is_silent_outside_systemd():
    notifier = Notifier(environ={})
    assert not notifier.enabled and notifier.watchdog_seconds is None
    assert notifier.ready("x") is False


def test_abstract_namespace_address():
    notifier = Notifier(environ={"NOTIFY_SOCKET": "@fedmq-test", "WATCHDOG_USEC": "30000000"})
    assert notifier.address == "\0fedmq-test"
    assert notifier.watchdog_seconds == 30.0
