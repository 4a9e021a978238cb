"""Settings from YAML, then environment overrides, then explicit overrides; every failure a
ConfigError naming the file and the field, shown as one line with exit code 2."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from common.messages import Mode
from configs.agent import AgentSettings
from configs.coordinator import (
    CoordinatorSettings,
    FedAsyncSettings,
    FedAvgSettings,
    FedBuffSettings,
)
from configs.errors import ConfigError
from configs.loading import exit_on_config_error, load_settings
from configs.task import DigitsData

PREFIX = "FEDMQ_COORDINATOR"


# Settings are built with model_validate: mypy here runs without pydantic's plugin, so it
# takes every field with a default for a required constructor argument.
def coordinator_settings(**fields: Any) -> CoordinatorSettings:
    return CoordinatorSettings.model_validate(fields)


def fedbuff_settings(**fields: Any) -> FedBuffSettings:
    return FedBuffSettings.model_validate(fields)


def fedasync_settings(**fields: Any) -> FedAsyncSettings:
    return FedAsyncSettings.model_validate(fields)


def fedavg_settings(**fields: Any) -> FedAvgSettings:
    return FedAvgSettings.model_validate(fields)


def write(tmp_path: Path, text: str | bytes, name: str = "coordinator.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def load(path: Path | None = None, /, **environ: str) -> CoordinatorSettings:
    return load_settings(CoordinatorSettings, path, env_prefix=PREFIX, environ=environ)


# --- sources and precedence --------------------------------------------------------------


def test_no_file_no_environment_gives_the_defaults():
    settings = load()
    assert settings == coordinator_settings()
    assert isinstance(settings.strategy, FedBuffSettings)


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_empty_file_gives_the_defaults(tmp_path, text):
    assert load(write(tmp_path, text)) == coordinator_settings()


def test_yaml_file_sets_nested_fields(tmp_path):
    path = write(
        tmp_path,
        "job: mnist\n"
        "broker: {host: broker.local, port: 8883}\n"
        "strategy:\n  name: fedbuff\n  buffer_size: 8\n  server_learning_rate: 0.5\n"
        "task:\n  data: {kind: digits, alpha: 0.1}\n",
    )
    settings = load(path)
    assert settings.job == "mnist"
    assert (settings.broker.host, settings.broker.port) == ("broker.local", 8883)
    assert settings.strategy == fedbuff_settings(buffer_size=8, server_learning_rate=0.5)
    assert isinstance(settings.task.data, DigitsData)
    assert settings.task.data.alpha == 0.1
    assert settings.seed == 0  # untouched default


@pytest.mark.parametrize(
    ("key", "raw", "read", "expected"),
    [
        ("JOB", "mnist", lambda s: s.job, "mnist"),
        ("BROKER__PORT", "1884", lambda s: s.broker.port, 1884),
        ("CLIP_NORM", "0.5", lambda s: s.clip_norm, 0.5),
        ("TRAINING__ERROR_FEEDBACK", "false", lambda s: s.training.error_feedback, False),
        ("TRAINING__LAZY_UPLOAD__ENABLED", "true", lambda s: s.training.lazy_upload.enabled, True),
        ("TASK__INPUT_SHAPE", "[8, 8]", lambda s: s.task.input_shape, (8, 8)),
        ("TASK__NUM_CLASSES", "26", lambda s: s.task.num_classes, 26),
        ("MODE", "sync", lambda s: s.mode, Mode.SYNC),
        ("STOP__MAX_VERSIONS", "~", lambda s: s.stop.max_versions, None),
        ("STRATEGY", "{name: fedasync, mixing: 0.9}", lambda s: s.strategy.mixing, 0.9),
    ],
)
def test_environment_values_are_parsed_as_yaml_at_nested_keys(key, raw, read, expected):
    settings = load(**{f"{PREFIX}__{key}": raw})
    assert read(settings) == expected


def test_environment_overrides_merge_into_the_file(tmp_path):
    path = write(tmp_path, "broker: {host: broker.local, port: 8883}\njob: from-file\n")
    settings = load(path, FEDMQ_COORDINATOR__BROKER__PORT="1999")
    assert settings.broker.host == "broker.local"  # sibling from the file kept
    assert settings.broker.port == 1999  # environment wins
    assert settings.job == "from-file"


def test_later_source_wins(tmp_path):
    path = write(tmp_path, "job: file\nseed: 1\nheartbeat_seconds: 3\n")
    settings = load_settings(
        CoordinatorSettings,
        path,
        env_prefix=PREFIX,
        environ={f"{PREFIX}__JOB": "env", f"{PREFIX}__SEED": "2"},
        overrides={"job": "explicit"},
    )
    assert settings.job == "explicit"
    assert settings.seed == 2
    assert settings.heartbeat_seconds == 3.0


@pytest.mark.parametrize(
    "key",
    [
        "FEDMQ_COORDINATOR_JOB",  # one underscore: not the separator
        "FEDMQ_COORDINATORX__JOB",
        "FEDMQ_AGENT__JOB",
        "OTHER__FEDMQ_COORDINATOR__JOB",
        "FEDMQ_COORDINATOR__",  # nothing after the prefix
    ],
)
def test_environment_without_the_prefix_is_ignored(key):
    assert load(**{key: "ignored"}).job == "digits"


def test_environment_is_not_read_without_a_prefix(monkeypatch):
    monkeypatch.setenv(f"{PREFIX}__JOB", "from-env")
    assert load_settings(CoordinatorSettings).job == "digits"


def test_process_environment_is_read_when_no_mapping_is_given(monkeypatch):
    monkeypatch.setenv(f"{PREFIX}__STRATEGY__NAME", "fedasync")
    monkeypatch.setenv(f"{PREFIX}__STRATEGY__MIXING", "0.9")
    settings = load_settings(CoordinatorSettings, env_prefix=PREFIX)
    assert settings.strategy == fedasync_settings(mixing=0.9)


def test_other_settings_kinds_use_their_own_prefix():
    settings = load_settings(
        AgentSettings,
        env_prefix="FEDMQ_AGENT",
        environ={"FEDMQ_AGENT__AGENT_ID": "pi-7", "FEDMQ_COORDINATOR__JOB": "x"},
    )
    assert settings.agent_id == "pi-7"
    assert settings.job == "digits"


# --- the strategy union ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"NAME": "fedavg"}, fedavg_settings()),
        ({"NAME": "fedavg", "DEADLINE_SECONDS": "30"}, fedavg_settings(deadline_seconds=30)),
        (
            {"NAME": "fedasync", "STALENESS_FUNCTION": "hinge"},
            fedasync_settings(staleness_function="hinge"),
        ),
        ({"NAME": "fedbuff", "BUFFER_SIZE": "16"}, fedbuff_settings(buffer_size=16)),
    ],
)
def test_strategy_name_in_the_environment_switches_the_strategy(tmp_path, environ, expected):
    path = write(tmp_path, "strategy:\n  name: fedbuff\n")
    settings = load(path, **{f"{PREFIX}__STRATEGY__{k}": v for k, v in environ.items()})
    assert type(settings.strategy) is type(expected)
    assert settings.strategy == expected
    assert settings.effective_mode == (Mode.SYNC if expected.name == "fedavg" else Mode.ASYNC)


def test_switching_strategy_keeps_fields_that_then_do_not_fit(tmp_path):
    path = write(tmp_path, "strategy:\n  name: fedbuff\n  buffer_size: 8\n")
    with pytest.raises(ConfigError) as caught:
        load(path, FEDMQ_COORDINATOR__STRATEGY__NAME="fedavg")
    assert str(caught.value) == (
        f"{path}: strategy.fedavg.buffer_size: Extra inputs are not permitted"
    )


def test_documented_override_of_a_default_strategy_field():
    """loading.py's own example: FEDMQ_COORDINATOR__STRATEGY__BUFFER_SIZE=4, with the
    default strategy (fedbuff) and no name given."""
    settings = load(FEDMQ_COORDINATOR__STRATEGY__BUFFER_SIZE="4")
    assert settings.strategy == fedbuff_settings(buffer_size=4)


@pytest.mark.parametrize(
    ("text", "read", "expected"),
    [
        ("strategy:\n  buffer_size: 8\n", lambda s: s.strategy, fedbuff_settings(buffer_size=8)),
        ("task:\n  data: {alpha: 0.1}\n", lambda s: s.task.data.alpha, 0.1),
    ],
    ids=["strategy", "task.data"],
)
def test_union_section_without_its_tag_is_the_default_variant(tmp_path, text, read, expected):
    """The defaults are fedbuff and digits; a section that only tunes them needs no tag."""
    assert read(load(write(tmp_path, text))) == expected


@pytest.mark.parametrize(
    ("text", "environ"),
    [
        ("broker:\n  host: broker.example\n", {}),
        ("", {"BROKER__HOST": "broker.example"}),
        ("broker: {port: 8883, keepalive: 60}\n", {}),
    ],
    ids=["file-host", "env-host", "file-port"],
)
def test_partial_broker_section_keeps_the_coordinator_account(tmp_path, text, environ):
    """The default connection logs in as "coordinator" (the account broker.config's ACL
    grants); setting only the host or port must not drop it to anonymous."""
    settings = load(write(tmp_path, text), **{f"{PREFIX}__{k}": v for k, v in environ.items()})
    assert settings.broker.username == "coordinator"


def test_explicit_broker_username_is_kept(tmp_path):
    settings = load(write(tmp_path, "broker: {host: h, username: ops}\n"))
    assert settings.broker.username == "ops"


# --- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "where", "why"),
    [
        ("jobb: digits\n", "jobb", "Extra inputs"),
        ("broker: {hots: x}\n", "broker.hots", "Extra inputs"),
        ("strategy: {name: fedbuff, K: 4}\n", "strategy.fedbuff.K", "Extra inputs"),
        ("broker: {port: abc}\n", "broker.port", "valid integer"),
        ("seed: [1, 2]\n", "seed", "valid integer"),
        ("broker: {port: 70000}\n", "broker.port", "less than or equal to 65535"),
        (
            "strategy: {name: fedbuff, buffer_size: 0}\n",
            "strategy.fedbuff.buffer_size",
            "greater than or equal to 1",
        ),
        (
            "strategy: {name: fedasync, mixing: 1.5}\n",
            "strategy.fedasync.mixing",
            "less than or equal to 1",
        ),
        (
            "strategy: {name: fedavg, min_quorum: 0}\n",
            "strategy.fedavg.min_quorum",
            "greater than or equal to 1",
        ),
        ("task: {data: {kind: digits, alpha: 0}}\n", "task.data.digits.alpha", "greater than 0"),
        ("strategy: {name: fedsgd}\n", "strategy", "fedsgd"),
        ("mode: sometimes\n", "mode", "'async' or 'sync'"),
    ],
)
def test_invalid_field_in_the_file_names_file_and_field(tmp_path, text, where, why):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: {where}: "), message
    assert why in message


@pytest.mark.parametrize(
    ("environ", "where"),
    [
        ({"BROKER__PORT": "0"}, "broker.port"),
        ({"STRATEGY__NAME": "fedasync", "STRATEGY__MIXING": "3"}, "strategy.fedasync.mixing"),
        ({"STRATEGY__NAME": "fedavg", "STRATEGY__DEADLINE_SECONDS": "soon"}, "strategy.fedavg"),
        ({"UNKNOWN": "1"}, "unknown"),
    ],
)
def test_invalid_environment_override_names_the_field(tmp_path, environ, where):
    path = write(tmp_path, "job: digits\n")
    with pytest.raises(ConfigError) as caught:
        load(path, **{f"{PREFIX}__{k}": v for k, v in environ.items()})
    assert str(caught.value).startswith(f"{path}: {where}"), str(caught.value)


@pytest.mark.parametrize(
    "order",
    [["STRATEGY", "STRATEGY__NAME"], ["STRATEGY__NAME", "STRATEGY"]],
    ids=["scalar-first", "nested-first"],
)
def test_conflicting_environment_overrides_are_a_config_error(order):
    values = {"STRATEGY": "fedavg", "STRATEGY__NAME": "fedavg"}
    with pytest.raises(ConfigError, match=r"(?i)strategy"):
        load(**{f"{PREFIX}__{key}": values[key] for key in order})


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda tmp: tmp / "missing.yaml", "cannot read"),
        (lambda tmp: tmp, "cannot read"),  # a directory
    ],
    ids=["missing", "directory"],
)
def test_unreadable_file_is_a_config_error_naming_it(tmp_path, make, why):
    path = make(tmp_path)
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert str(caught.value).startswith(f"{path}: {why}")


def test_file_that_is_not_utf8_is_a_config_error_naming_it(tmp_path):
    path = write(tmp_path, b"job: \xff\xfe digits\n")
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert str(caught.value).startswith(f"{path}: ")


@pytest.mark.parametrize(
    "text",
    ["strategy: [unclosed\n", "job: digits\n  seed: 1\n  - x\n", "a: b: c\n", "key: @bad\n"],
)
def test_invalid_yaml_is_a_config_error_naming_the_file(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert str(caught.value).startswith(f"{path}: not valid YAML")


@pytest.mark.parametrize("text", ["- job\n- seed\n", "just a string\n", "42\n", "[1, 2]\n"])
def test_non_mapping_top_level_is_a_config_error(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert str(caught.value) == f"{path}: expected a mapping at the top level"


def test_config_error_exit_code_is_two():
    assert ConfigError.EXIT_CODE == 2


@pytest.mark.parametrize(
    "text",
    [
        "jobb: digits\n",
        "broker: {port: 70000}\n",
        "[1, 2]\n",
        "strategy: [unclosed\n",  # PyYAML's own messages span several lines
    ],
    ids=["unknown-field", "out-of-range", "not-a-mapping", "invalid-yaml"],
)
def test_exit_on_config_error_prints_one_line_and_exits_2(tmp_path, capsys, text):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load(path)
    with pytest.raises(SystemExit) as exited:
        exit_on_config_error(caught.value)
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("configuration error: ")
    assert str(path) in lines[0]


def test_exit_on_config_error_for_a_missing_file(tmp_path, capsys):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        load(path)
    with pytest.raises(SystemExit) as exited:
        exit_on_config_error(caught.value)
    assert exited.value.code == 2
    assert capsys.readouterr().err == f"configuration error: {path}: cannot read " + (
        "(No such file or directory)\n"
    )
