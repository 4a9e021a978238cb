"""The example configs in configs/examples load into their settings, commented-out variants
included, so that they cannot rot; and they say what their comments claim."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from codec import get_codec
from common.messages import Mode
from configs.agent import AgentSettings
from configs.coordinator import (
    CoordinatorSettings,
    FedAsyncSettings,
    FedAvgSettings,
    FedBuffSettings,
)
from configs.loading import load_settings
from configs.local import LocalRunSettings
from configs.task import DigitsData, NpzData

EXAMPLES = Path(__file__).resolve().parents[2] / "configs" / "examples"
KINDS: dict[str, type[BaseModel]] = {
    "coordinator.yaml": CoordinatorSettings,
    "agent.yaml": AgentSettings,
    "local.yaml": LocalRunSettings,
}


def commented_block(name: str, key: str, marker: str) -> Any:
    """The value of a commented-out ``# <key>:`` block of an example: the nearest one at or
    before the comment line holding ``marker``, up to the first line that is no comment."""
    lines = (EXAMPLES / name).read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.lstrip().startswith("#") and marker in line)
    start = max(i for i in range(at + 1) if lines[i].strip() == f"# {key}:")
    end = start
    while end < len(lines) and lines[end].lstrip().startswith("#"):
        end += 1
    text = "\n".join(line.replace("# ", "", 1) for line in lines[start:end])
    return yaml.safe_load(textwrap.dedent(text))[key]


def with_block(tmp_path: Path, name: str, where: tuple[str, ...], value: Any) -> Path:
    """The example with the section at ``where`` replaced by ``value``, as a new file."""
    data = yaml.safe_load((EXAMPLES / name).read_text())
    node = data
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = value
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(("name", "kind"), KINDS.items(), ids=KINDS.keys())
def test_example_loads_and_sets_only_known_fields(name, kind):
    loaded = yaml.safe_load((EXAMPLES / name).read_text())
    assert isinstance(loaded, dict)
    assert set(loaded) <= set(kind.model_fields)
    assert isinstance(load_settings(kind, EXAMPLES / name), kind)


def test_coordinator_example():
    settings = load_settings(CoordinatorSettings, EXAMPLES / "coordinator.yaml")
    assert settings.job == "digits"
    assert settings.topic_prefix == "fedmq"
    assert settings.broker.host == "broker.example.lan"
    assert settings.broker.port == 1883
    assert settings.broker.username == "coordinator"
    assert settings.broker.password is not None
    assert settings.broker.password.get_secret_value() == "CHANGE-ME"
    assert settings.task.model == "mlp"
    assert settings.task.input_shape == (64,)
    assert isinstance(settings.task.data, DigitsData)
    assert settings.task.data.num_agents == 8
    assert isinstance(settings.strategy, FedBuffSettings)
    assert settings.strategy.buffer_size == 4
    assert settings.effective_mode is Mode.ASYNC
    assert settings.training.codec == get_codec("int8").get_config()
    assert settings.training.error_feedback is True
    assert settings.training.lazy_upload.enabled is False
    assert settings.training.lazy_upload.history == 10
    assert settings.training.lazy_upload.max_skips == 100
    assert settings.stop.target_accuracy == 0.95
    assert settings.stop.max_versions == 500
    assert settings.clip_norm is None


@pytest.mark.parametrize(
    ("name", "prefix", "kind"),
    [
        ("coordinator.yaml", "FEDMQ_COORDINATOR", CoordinatorSettings),
        ("agent.yaml", "FEDMQ_AGENT", AgentSettings),
    ],
)
def test_the_placeholder_password_is_overridden_from_the_environment(name, prefix, kind):
    settings = load_settings(
        kind,
        EXAMPLES / name,
        env_prefix=prefix,
        environ={f"{prefix}__BROKER__PASSWORD": "s3cret"},
    )
    assert settings.broker.password is not None
    assert settings.broker.password.get_secret_value() == "s3cret"


@pytest.mark.parametrize(
    ("marker", "kind", "mode"),
    [
        ("name: fedasync", FedAsyncSettings, Mode.ASYNC),
        ("name: fedavg", FedAvgSettings, Mode.SYNC),
    ],
    ids=["fedasync", "fedavg"],
)
def test_coordinator_example_commented_strategies_are_valid(tmp_path, marker, kind, mode):
    block = commented_block("coordinator.yaml", "strategy", marker)
    # every parameter of the strategy is shown
    assert set(block) == set(kind.model_fields)
    path = with_block(tmp_path, "coordinator.yaml", ("strategy",), block)
    settings = load_settings(CoordinatorSettings, path)
    assert isinstance(settings.strategy, kind)
    assert settings.effective_mode is mode


def test_coordinator_example_shows_every_fedbuff_parameter():
    block = yaml.safe_load((EXAMPLES / "coordinator.yaml").read_text())["strategy"]
    assert set(block) == set(FedBuffSettings.model_fields)


@pytest.mark.parametrize("name", ["coordinator.yaml", "agent.yaml"])
def test_commented_npz_data_is_valid(tmp_path, name):
    block = commented_block(name, "data", "kind: npz")
    path = with_block(tmp_path, name, ("task", "data"), block)
    settings = load_settings(KINDS[name], path)
    data = settings.task.data  # type: ignore[attr-defined]
    assert isinstance(data, NpzData)
    assert data.path == Path("/srv/fedmq/data.npz")


def test_coordinator_example_sets_every_training_setting():
    training = yaml.safe_load((EXAMPLES / "coordinator.yaml").read_text())["training"]
    settings = load_settings(CoordinatorSettings, EXAMPLES / "coordinator.yaml")
    assert set(training) == set(type(settings.training).model_fields)
    assert set(training["lazy_upload"]) == set(type(settings.training.lazy_upload).model_fields)


def test_agent_example():
    settings = load_settings(AgentSettings, EXAMPLES / "agent.yaml")
    assert settings.agent_id == "jetson-07"
    assert settings.broker.username is None  # the agent_id is the username (the ACL's %u)
    assert settings.broker.host == "broker.example.lan"
    assert settings.job == "digits"
    assert isinstance(settings.task.data, DigitsData)
    assert settings.task.data.shard == 6
    assert settings.task.data.shard < settings.task.data.num_agents
    assert settings.slowdown == 1.0
    assert settings.heartbeat_seconds == 5.0
    assert settings.threads == 2
    assert settings.seed is None


def test_agent_and_coordinator_examples_describe_the_same_task():
    agent = load_settings(AgentSettings, EXAMPLES / "agent.yaml")
    coordinator = load_settings(CoordinatorSettings, EXAMPLES / "coordinator.yaml")
    assert agent.job == coordinator.job
    assert agent.topic_prefix == coordinator.topic_prefix
    assert agent.task.model == coordinator.task.model
    assert agent.task.input_shape == coordinator.task.input_shape
    assert agent.task.num_classes == coordinator.task.num_classes
    shared = {"num_agents", "alpha", "seed", "test_fraction"}
    assert agent.task.data.model_dump(include=shared) == coordinator.task.data.model_dump(
        include=shared
    )


def test_local_example():
    settings = load_settings(LocalRunSettings, EXAMPLES / "local.yaml")
    assert settings.agents == 8
    assert settings.stragglers == 2
    assert settings.slowdown == 5.0
    assert settings.dropouts == 1
    assert isinstance(settings.strategy, FedBuffSettings)
    assert settings.training.codec == get_codec("int8").get_config()
    assert settings.training.error_feedback is True
    assert settings.stop.target_accuracy == 0.95
    assert settings.stop.max_seconds == 240
    assert settings.output == Path("results/local")


@pytest.mark.parametrize(
    ("strategy", "kind"),
    [("fedbuff", FedBuffSettings), ("fedasync", FedAsyncSettings), ("fedavg", FedAvgSettings)],
)
def test_local_example_takes_the_command_line_overrides(strategy, kind):
    """What ``fedmq-coordinator local --config ... --strategy X --codec sign --agents 4``
    passes to load_settings."""
    overrides = {
        "agents": 4,
        "strategy": {"name": strategy},
        "training": {"codec": get_codec("sign").get_config()},
        "stop": {"max_seconds": 60.0},
    }
    settings = load_settings(LocalRunSettings, EXAMPLES / "local.yaml", overrides=overrides)
    assert settings.agents == 4
    assert isinstance(settings.strategy, kind)
    assert settings.training.codec == get_codec("sign").get_config()
    assert settings.training.error_feedback is True  # the file's value survives the merge
    assert settings.stop.max_seconds == 60.0
    assert settings.stop.target_accuracy == 0.95
