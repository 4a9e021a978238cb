"""The shipped Mosquitto files are the rendered ones: one home for the broker's rules."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from broker.config import render_acl, render_mosquitto_conf
from configs.broker import MosquittoSettings, TlsListener
from configs.errors import ConfigError
from configs.loading import load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_mosquitto_conf_is_the_rendered_default():
    assert (ROOT / "broker" / "mosquitto.conf").read_text() == render_mosquitto_conf(
        MosquittoSettings()
    )


def test_shipped_acl_is_the_rendered_default():
    assert (ROOT / "broker" / "acl").read_text() == render_acl("fedmq")


def test_the_broker_example_loads_and_renders():
    settings = load_settings(MosquittoSettings, ROOT / "configs" / "examples" / "broker.yaml")
    text = render_mosquitto_conf(settings)
    assert "allow_anonymous false" in text
    assert f"max_queued_bytes {settings.max_queued_bytes}" in text
    assert "persistence true" in text


def test_production_config_refuses_anonymous_and_sets_limits():
    text = render_mosquitto_conf(MosquittoSettings())
    for line in (
        "allow_anonymous false",
        "max_packet_size",
        "max_queued_bytes",
        "persistence true",
    ):
        assert line in text


def tls_listener_block(text: str) -> list[str]:
    """The lines of the rendered config from the second ``listener`` line to the next blank."""
    lines = text.splitlines()
    start = [i for i, line in enumerate(lines) if line.startswith("listener ")][1]
    end = lines.index("", start)
    return lines[start:end]


def test_the_broker_example_adds_a_tls_listener_with_certificate_identity():
    settings = load_settings(MosquittoSettings, ROOT / "configs" / "examples" / "broker.yaml")
    assert settings.tls is not None
    assert settings.bind_address == "127.0.0.1"  # passwords stay on the broker's host
    assert tls_listener_block(render_mosquitto_conf(settings)) == [
        "listener 8883",
        "cafile /etc/mosquitto/fedmq/tls/ca.crt",
        "certfile /etc/mosquitto/fedmq/tls/server.crt",
        "keyfile /etc/mosquitto/fedmq/tls/server.key",
        "tls_version tlsv1.2",
        "require_certificate true",
        "use_identity_as_username true",
        "crlfile /etc/mosquitto/fedmq/tls/crl.pem",
    ]


def test_tls_listener_options_follow_its_own_listener_line():
    """Mosquitto gives the options after a listener line to that listener: the password
    listener must have none of them, and the global ones must stay global."""
    text = render_mosquitto_conf(
        MosquittoSettings(tls=TlsListener(port=8884, bind_address="10.0.0.1", crlfile=None))
    )
    lines = text.splitlines()
    plain = lines.index("listener 1883")
    assert lines[plain + 1] == ""
    block = tls_listener_block(text)
    assert block[0] == "listener 8884 10.0.0.1"
    assert not any(line.startswith("crlfile") for line in lines)
    for option in ("allow_anonymous", "password_file", "acl_file", "per_listener_settings"):
        assert lines.index(next(x for x in lines if x.startswith(option))) < plain


def test_no_tls_listener_by_default():
    text = render_mosquitto_conf(MosquittoSettings())
    assert [line for line in text.splitlines() if line.startswith("listener")] == ["listener 1883"]
    assert "cafile" not in text


@pytest.mark.parametrize(
    ("environ", "problem"),
    [
        (
            {"FEDMQ_BROKER__TLS__REQUIRE_CERTIFICATE": "false"},
            "use_identity_as_username needs require_certificate",
        ),
        (
            {
                "FEDMQ_BROKER__TLS__REQUIRE_CERTIFICATE": "false",
                "FEDMQ_BROKER__TLS__USE_IDENTITY_AS_USERNAME": "false",
            },
            "crlfile applies to client certificates",
        ),
        ({"FEDMQ_BROKER__TLS__PORT": "1883"}, "tls.port and port are both 1883"),
        ({"FEDMQ_BROKER__TLS__TLS_VERSION": "tlsv1.1"}, "tls.tls_version"),
    ],
    ids=["identity-without-certificate", "crl-without-certificate", "same-port", "old-tls"],
)
def test_inconsistent_tls_settings_are_refused_naming_the_problem(environ, problem):
    with pytest.raises(ConfigError, match=re.escape(problem)):
        load_settings(
            MosquittoSettings,
            ROOT / "configs" / "examples" / "broker.yaml",
            env_prefix="FEDMQ_BROKER",
            environ=environ,
        )


def test_password_only_tls_listener_is_allowed():
    """TLS for encryption, passwords for identity: a lab without per-device certificates."""
    tls = TlsListener(require_certificate=False, use_identity_as_username=False, crlfile=None)
    block = tls_listener_block(render_mosquitto_conf(MosquittoSettings(tls=tls)))
    assert "require_certificate false" in block
    assert "use_identity_as_username false" in block
