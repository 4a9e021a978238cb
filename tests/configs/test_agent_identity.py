"""An agent's identity must be the name the broker knows it by, or every update is dropped
by the ACL without a word: refused at load time instead."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from broker import tls
from configs.agent import AgentSettings


def test_a_username_other_than_the_agent_id_is_refused():
    with pytest.raises(ValidationError, match="differs from agent_id 'jetson-07'"):
        AgentSettings.model_validate({"agent_id": "jetson-07", "broker": {"username": "jetson-7"}})
    assert (
        AgentSettings.model_validate(
            {"agent_id": "jetson-07", "broker": {"username": "jetson-07"}}
        ).broker.username
        == "jetson-07"
    )


def test_a_certificate_for_another_device_is_refused(tmp_path: Path):
    layout = tls.create_ca(tmp_path)
    tls.issue_client_certificate(tmp_path, "jetson-07")
    settings = {
        "broker": {
            "tls": {
                "ca_file": str(layout.ca_cert),
                "cert_file": str(layout.client_cert("jetson-07")),
                "key_file": str(layout.client_key("jetson-07")),
            }
        }
    }
    assert AgentSettings.model_validate({"agent_id": "jetson-07", **settings})
    with pytest.raises(
        ValidationError, match="certificate is for 'jetson-07', not agent_id 'jetson-08'"
    ):
        AgentSettings.model_validate({"agent_id": "jetson-08", **settings})
