"""The shipped Mosquitto files are the rendered ones: one home for the broker's rules."""

from __future__ import annotations

from pathlib import Path

from broker.config import render_acl, render_mosquitto_conf
from configs.broker import MosquittoSettings
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
