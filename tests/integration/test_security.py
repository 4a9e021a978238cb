"""Identity and access, against a real Mosquitto running the project's rendered
configuration with both listeners: the password listener (as on the session ``broker``) and
the TLS listener, where a client certificate made by broker/tls.py is the identity (its CN
is the username).

Under MQTT 3.1.1 Mosquitto acknowledges a denied publish and drops it, so every "cannot"
below is proved by a privileged subscriber that receives an allowed message from the same
client in the same test, and not the denied one."""

from __future__ import annotations

import asyncio
import gc
import socket
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np
import pytest

from broker.dev import DevBroker
from broker.process import free_port
from broker.tls import (
    Layout,
    create_ca,
    issue_client_certificate,
    issue_server_certificate,
    revoke_client_certificate,
)
from codec import decode_model, encode_update
from common.mqtt import client_options
from common.topics import Topics
from configs.broker import BrokerConnection, ClientTls, TlsListener
from configs.coordinator import CoordinatorSettings
from coordinator.service import Coordinator
from coordinator.strategies import GlobalModel
from tests.integration.conftest import Listener, credentials

TOPICS = Topics("fedmq", "sec")
EVERYTHING = TOPICS.every_filter


class TlsBroker(DevBroker):
    """The development broker plus the TLS listener that broker/config.py renders."""

    def __init__(self, directory: Path, pki: Layout) -> None:
        self.pki = pki
        self.tls_port = free_port()
        super().__init__(directory)

    def _write_files(self) -> None:
        tls = TlsListener(
            port=self.tls_port,
            bind_address="127.0.0.1",
            cafile=str(self.pki.ca_cert),
            certfile=str(self.pki.server_cert),
            keyfile=str(self.pki.server_key),
            crlfile=str(self.pki.crl),
        )
        self.settings = self.settings.model_copy(update={"tls": tls})
        super()._write_files()

    def _listening(self) -> bool:
        def accepts(port: int) -> bool:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return True
            except OSError:
                return False

        return accepts(self.port) and accepts(self.tls_port)

    def reload(self) -> None:
        """SIGHUP, as ``systemctl reload mosquitto``: rereads the CRL and the server key."""
        self._reload()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Layout:
    layout = create_ca(tmp_path_factory.mktemp("pki"))
    issue_server_certificate(layout.directory)
    for device in ("dev-a", "dev-b", "dev-r"):
        issue_client_certificate(layout.directory, device)
    issue_client_certificate(layout.directory, "coordinator", service=True)
    long_ago = datetime.now(timezone.utc) - timedelta(days=800)
    issue_client_certificate(layout.directory, "dev-old", days=730, now=long_ago)
    return layout


@pytest.fixture(scope="module")
def rogue(tmp_path_factory: pytest.TempPathFactory) -> Layout:
    """Another CA, issuing a certificate with a name the real one also issued."""
    layout = create_ca(tmp_path_factory.mktemp("rogue"), name="rogue CA")
    issue_client_certificate(layout.directory, "dev-a")
    return layout


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory, pki: Layout) -> Iterator[TlsBroker]:
    instance = TlsBroker(tmp_path_factory.mktemp("tls-broker"), pki)
    instance.start()
    yield instance
    instance.stop()


def device(
    broker: TlsBroker, ca: Layout, name: str | None, signer: Layout | None = None, **login: Any
) -> dict[str, Any]:
    """aiomqtt arguments for a TLS client, built the way fedmq's own clients build them:
    trusting ``ca``'s certificate, presenting ``name``'s certificate from ``signer``."""
    signer = signer or ca
    tls: dict[str, Any] = {"ca_file": ca.ca_cert}
    if name is not None:
        tls |= {"cert_file": signer.client_cert(name), "key_file": signer.client_key(name)}
    connection = BrokerConnection(
        port=broker.tls_port, tls=ClientTls.model_validate(tls), connect_timeout=5, **login
    )
    return {**client_options(connection), "timeout": connection.connect_timeout}


def plain(broker: TlsBroker, **login: Any) -> dict[str, Any]:
    return {"hostname": "127.0.0.1", "port": broker.port, "timeout": 5, **login}


async def connects(options: dict[str, Any]) -> None:
    async with aiomqtt.Client(**options):  # CONNACK: the broker accepted the client
        pass


async def publish_all(options: dict[str, Any], messages: list[tuple[str, bytes]]) -> None:
    async with aiomqtt.Client(**options) as client:
        for topic, payload in messages:
            await client.publish(topic, payload, qos=1)


Make = Callable[[TlsBroker, Layout, Layout], dict[str, Any]]
REFUSED = [
    pytest.param(lambda b, pki, rogue: plain(b), "Not authorized", id="plain-anonymous"),
    pytest.param(
        lambda b, pki, rogue: plain(b, username="coordinator", password="wrong"),
        "Not authorized",
        id="plain-wrong-password",
    ),
    pytest.param(
        lambda b, pki, rogue: device(b, pki, None), "CERTIFICATE_REQUIRED", id="tls-anonymous"
    ),
    pytest.param(  # passwords do not open the certificate listener, not even the coordinator's
        lambda b, pki, rogue: device(
            b, pki, None, username="coordinator", password=b.provision("coordinator")
        ),
        "CERTIFICATE_REQUIRED",
        id="tls-password-without-certificate",
    ),
    pytest.param(
        lambda b, pki, rogue: device(b, pki, "dev-a", rogue),
        "UNKNOWN_CA",
        id="tls-certificate-from-another-ca",
    ),
    pytest.param(
        lambda b, pki, rogue: device(b, pki, "dev-old"),
        "CERTIFICATE_EXPIRED",
        id="tls-expired-certificate",
    ),
    pytest.param(  # the device refuses a broker its CA did not certify (a rogue broker)
        lambda b, pki, rogue: device(b, rogue, "dev-a", pki),
        "CERTIFICATE_VERIFY_FAILED",
        id="tls-broker-not-signed-by-trusted-ca",
        # paho leaves the socket of a failed handshake to the garbage collector
        marks=pytest.mark.filterwarnings("ignore:unclosed <ssl.SSLSocket:ResourceWarning"),
    ),
]


@pytest.mark.parametrize(("make", "reason"), REFUSED)
def test_connection_is_refused(
    tls_broker: TlsBroker,
    pki: Layout,
    rogue: Layout,
    make: Make,
    reason: str,
    caplog: pytest.LogCaptureFixture,
):
    """Refused for the reason given. Under TLS 1.3 the broker checks the client's
    certificate after the client's handshake is done: aiomqtt then reports a timeout, and the
    broker's alert is in paho's log (as it is in the services' logs)."""

    async def scenario() -> str:
        await connects(device(tls_broker, pki, "dev-a"))  # control: the listener works
        await connects(plain(tls_broker, **credentials(tls_broker, "monitor")))
        with pytest.raises(aiomqtt.MqttError) as refused:
            await connects({**make(tls_broker, pki, rogue), "timeout": 2})
        return str(refused.value)

    error = asyncio.run(scenario())
    gc.collect()
    assert reason in error + caplog.text


def test_certificate_is_the_identity_whatever_username_the_client_sends(
    tls_broker: TlsBroker, pki: Layout
):
    """dev-a's certificate with the coordinator's username and real password is still dev-a:
    its own topics go through (CN = username for the %u ACL patterns), nothing else does."""
    forbidden = [
        (TOPICS.update("dev-b"), b"forged update"),
        (TOPICS.agent_status("dev-b"), b"forged status"),
        (TOPICS.update("coordinator"), b"forged update"),
        (TOPICS.model, b"forged model"),
        (TOPICS.control, b"forged control"),
        (TOPICS.coordinator_status, b"forged status"),
        (TOPICS.events, b"forged event"),
    ]
    allowed = [(TOPICS.update("dev-a"), b"own update"), (TOPICS.agent_status("dev-a"), b"own")]
    spoofing = device(
        tls_broker,
        pki,
        "dev-a",
        username="coordinator",
        password=tls_broker.provision("coordinator"),
    )

    async def scenario() -> list[tuple[str, bytes]]:
        async with Listener(tls_broker, "coordinator", *EVERYTHING) as seen:
            await publish_all(spoofing, forbidden + allowed)
            # one client's QoS 1 messages arrive in order: once its last is in, all are
            await seen.wait_for(lambda: (TOPICS.agent_status("dev-a"), b"own") in seen.messages, 10)
            return [(t, p) for t, p in seen.messages if p]

    assert set(asyncio.run(scenario())) == set(allowed)


def test_device_reads_the_model_but_not_other_devices_updates(tls_broker: TlsBroker, pki: Layout):
    """Even subscribed to everything (``#``), a device gets the model and control, never
    another device's update (which the coordinator does get)."""

    async def scenario() -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
        received: list[tuple[str, bytes]] = []
        ready = asyncio.Event()

        async def spy() -> None:
            async with aiomqtt.Client(**device(tls_broker, pki, "dev-a")) as client:
                for topic in ("#", TOPICS.all_updates, TOPICS.model):
                    await client.subscribe(topic, qos=1)
                ready.set()
                async for message in client.messages:
                    payload = message.payload
                    received.append((str(message.topic), bytes(payload)))

        task = asyncio.create_task(spy())
        try:
            await asyncio.wait_for(ready.wait(), 10)
            async with Listener(tls_broker, "coordinator", TOPICS.all_updates) as coordinator:
                await publish_all(
                    device(tls_broker, pki, "dev-b"), [(TOPICS.update("dev-b"), b"private")]
                )
                await publish_all(
                    plain(tls_broker, **credentials(tls_broker, "coordinator")),
                    [(TOPICS.model, b"model")],
                )
                await coordinator.wait_for(lambda: coordinator.messages, 10)
                deadline = time.monotonic() + 10
                while (TOPICS.model, b"model") not in received and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.3)  # the update was published first; give it its chance
                return received, coordinator.messages
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    spied, delivered = asyncio.run(scenario())
    assert delivered == [(TOPICS.update("dev-b"), b"private")]
    assert (TOPICS.model, b"model") in spied
    assert not [m for m in spied if "/update/" in m[0]]


def test_revoked_certificate_is_refused_after_a_reload(
    tls_broker: TlsBroker, pki: Layout, caplog: pytest.LogCaptureFixture
):
    async def scenario() -> aiomqtt.MqttError | None:
        await connects(device(tls_broker, pki, "dev-r"))
        revoke_client_certificate(pki.directory, "dev-r")
        tls_broker.reload()
        for _ in range(50):  # the broker handles SIGHUP in its own time
            try:
                await connects({**device(tls_broker, pki, "dev-r"), "timeout": 2})
            except aiomqtt.MqttError as error:
                return error
            await asyncio.sleep(0.1)
        return None

    assert asyncio.run(scenario()) is not None
    assert "CERTIFICATE_REVOKED" in caplog.text
    asyncio.run(connects(device(tls_broker, pki, "dev-b")))  # the others still get in


def test_coordinator_over_tls_checks_the_sender_against_the_topic(
    tls_broker: TlsBroker, pki: Layout, tmp_path: Path
):
    """The whole chain on certificates: the coordinator service (in this process: a small
    model, no TensorFlow) reaches the broker with its service certificate and publishes its
    model; dev-a's update is accepted, and an envelope dev-a signs as dev-b, which the ACL
    lets through on dev-a's own topic, is refused as sender_mismatch."""
    settings = CoordinatorSettings.model_validate(
        {
            "job": TOPICS.job,
            "broker": {
                "host": "127.0.0.1",
                "port": tls_broker.tls_port,
                "tls": {
                    "ca_file": pki.ca_cert,
                    "cert_file": pki.client_cert("coordinator"),
                    "key_file": pki.client_key("coordinator"),
                },
            },
            "state_dir": tmp_path / "state",
            "heartbeat_seconds": 0.5,
            "strategy": {"name": "fedbuff", "buffer_size": 1, "max_staleness": 5},
            "evaluate_every": 0,
        }
    )
    assert settings.broker.password is None
    weights = {"dense/kernel": np.zeros((4, 3), np.float32)}

    async def scenario() -> list[dict[str, Any]]:
        stopping = asyncio.Event()
        coordinator = Coordinator(settings, GlobalModel(0, weights), stop_event=stopping)
        async with Listener(tls_broker, "monitor", TOPICS.events, TOPICS.model) as seen:
            service = asyncio.create_task(coordinator.run())
            try:
                await seen.wait_for(lambda: any(t == TOPICS.model for t, _ in seen.messages), 20)
                model = decode_model(next(p for t, p in seen.messages if t == TOPICS.model))

                def envelope(sender: str) -> bytes:
                    zeros = {t.name: np.zeros(t.shape, np.float32) for t in model.tensors}
                    return encode_update(
                        zeros,
                        codec="int8",
                        job_id=TOPICS.job,
                        sender_id=sender,
                        base_version=model.version,
                        num_samples=10,
                    )

                topic = TOPICS.update("dev-a")
                await publish_all(
                    device(tls_broker, pki, "dev-a"),
                    [(topic, envelope("dev-b")), (topic, envelope("dev-a"))],
                )

                def decided() -> list[dict[str, Any]]:
                    return [e for e in seen.json("/events") if e["type"].startswith("update_")]

                await seen.wait_for(lambda: len(decided()) >= 2, 20)
            finally:
                stopping.set()
                assert await asyncio.wait_for(service, 20) == 0
            return decided()

    decided = asyncio.run(scenario())
    assert [(e["agent"], e.get("reason", "accepted")) for e in decided] == [
        ("dev-a", "sender_mismatch"),
        ("dev-a", "accepted"),
    ]
