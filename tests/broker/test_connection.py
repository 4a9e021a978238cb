"""How a client's settings become aiomqtt arguments (``common.mqtt.client_options``), the one
place the coordinator, the agents and the CLI build their connections from."""

from __future__ import annotations

from pathlib import Path

import aiomqtt
import pytest

from broker.tls import create_ca, issue_client_certificate
from common.mqtt import NO_DELAY, client_options
from configs.agent import AgentSettings
from configs.broker import BrokerConnection
from configs.errors import ConfigError
from configs.loading import load_settings


def test_password_connection():
    connection = BrokerConnection(host="broker.lan", username="coordinator", password="s3cret")
    assert client_options(connection) == {
        "hostname": "broker.lan",
        "port": 1883,
        "username": "coordinator",
        "password": "s3cret",
        "tls_params": None,
        "socket_options": NO_DELAY,  # small publishes are not held back by Nagle
    }


def test_username_falls_back_to_the_given_one():
    assert client_options(BrokerConnection(), username="jetson-07")["username"] == "jetson-07"
    named = BrokerConnection(username="jetson-08")
    assert client_options(named, username="jetson-07")["username"] == "jetson-08"


def test_tls_connection_with_a_client_certificate(tmp_path: Path):
    layout = create_ca(tmp_path)
    cert, key = issue_client_certificate(tmp_path, "jetson-07")
    connection = BrokerConnection.model_validate(
        {
            "host": "broker.lan",
            "tls": {"ca_file": str(layout.ca_cert), "cert_file": str(cert), "key_file": str(key)},
        }
    )
    options = client_options(connection, username="jetson-07")
    assert options["port"] == 8883  # the TLS port unless one is given
    assert options["password"] is None
    assert options["tls_params"] == aiomqtt.TLSParameters(
        ca_certs=str(layout.ca_cert), certfile=str(cert), keyfile=str(key)
    )
    explicit = BrokerConnection.model_validate(
        {"port": 18883, "tls": {"ca_file": str(layout.ca_cert)}}
    )
    assert client_options(explicit)["port"] == 18883
    assert client_options(explicit)["tls_params"] == aiomqtt.TLSParameters(
        ca_certs=str(layout.ca_cert)
    )


@pytest.mark.parametrize(
    ("tls", "problem"),
    [
        ({"ca_file": "/nonexistent/ca.crt"}, "broker.tls.ca_file: Path does not point to a file"),
        ({"ca_file": "{ca}", "cert_file": "{ca}"}, "cert_file and key_file go together"),
        ({"ca_file": "{ca}", "key_file": "{ca}"}, "cert_file and key_file go together"),
        ({"ca_file": "{ca}", "verify": False}, "broker.tls.verify: Extra inputs"),
    ],
    ids=["missing-file", "cert-without-key", "key-without-cert", "unknown-option"],
)
def test_bad_tls_settings_name_the_field(tmp_path: Path, tls: dict[str, object], problem: str):
    ca = create_ca(tmp_path).ca_cert
    filled = {k: v.format(ca=ca) if isinstance(v, str) else v for k, v in tls.items()}
    with pytest.raises(ConfigError, match=problem):
        load_settings(AgentSettings, overrides={"broker": {"tls": filled}})
