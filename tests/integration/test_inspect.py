"""docs/inspect.md, run as written: every ``mosquitto_sub`` and ``fedmq-coordinator`` line of
the page against a real federation (Mosquitto, a coordinator and two agents as processes),
and what they print parses as the page says. The page cannot drift from the code either:
every topic has a recipe, every message field is explained, the exit codes are the CLI's."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from broker.dev import DevBroker
from codec import decode_model
from common.messages import (
    AgentStatus,
    Control,
    CoordinatorStatus,
    Event,
    LazyUpload,
    Message,
    TrainingSettings,
    parse,
)
from common.topics import Topics
from configs.errors import ConfigError
from coordinator.cli import EXIT_BROKER, EXIT_NO_STATUS
from tests.integration.conftest import ROOT, environment, start_coordinator, stop
from tests.integration.test_agent import start_agent

DOC = ROOT / "docs" / "inspect.md"
JOB = "inspect"
TOPICS = Topics("fedmq", JOB)
AGENTS = ("agent-a", "agent-b")
VERSIONS = 3
PLACEHOLDER = re.compile(r"\b(HOST|PORT|MONITOR_PASSWORD|COORDINATOR_PASSWORD|JOB)\b")
EXIT_TIMED_OUT = 27  # mosquitto_sub -W


def shell_lines(program: str) -> list[str]:
    """The lines of the page's ``sh`` blocks that run ``program``."""
    blocks = re.findall(r"```sh\n(.*?)```", DOC.read_text(), re.DOTALL)
    return [line for block in blocks for line in block.splitlines() if line.startswith(program)]


@dataclass
class Recipe:
    line: str
    argv: list[str]
    redirect: str | None

    @classmethod
    def parse(cls, line: str, values: dict[str, str]) -> Recipe:
        words = shlex.split(PLACEHOLDER.sub(lambda m: values[m.group(1)], line))
        if ">" in words:
            at = words.index(">")
            return cls(line, words[:at], words[at + 1])
        return cls(line, words, None)

    @property
    def filters(self) -> list[str]:
        return [self.argv[i + 1] for i, word in enumerate(self.argv) if word == "-t"]

    def option(self, name: str) -> str | None:
        return self.argv[self.argv.index(name) + 1] if name in self.argv else None

    @property
    def bounded(self) -> bool:
        """Ends by itself (a count, a timeout, retained messages only)."""
        return any(flag in self.argv for flag in ("-C", "-W", "--retained-only"))


def recipes(values: dict[str, str] | None = None) -> list[Recipe]:
    defaults = {"HOST": "h", "PORT": "1", "JOB": JOB}
    values = values or {**defaults, "MONITOR_PASSWORD": "m", "COORDINATOR_PASSWORD": "c"}
    return [Recipe.parse(line, values) for line in shell_lines("mosquitto_sub")]


def matches(pattern: str, topic: str) -> bool:
    """MQTT topic filter matching, ``+`` only (the page uses no ``#``)."""
    want, have = pattern.split("/"), topic.split("/")
    return len(want) == len(have) and all(w in ("+", h) for w, h in zip(want, have, strict=True))


def kind_of(topic: str) -> type[Message]:
    if topic == TOPICS.coordinator_status:
        return CoordinatorStatus
    if topic == TOPICS.events:
        return Event
    if topic == TOPICS.control:
        return Control
    assert TOPICS.agent_of_status(topic) is not None, topic
    return AgentStatus


BINARY = (TOPICS.model, TOPICS.all_updates)


# --- the page against the code (no processes) ---------------------------------------------


def test_every_topic_of_the_tree_has_a_recipe():
    tree = {
        TOPICS.coordinator_status,
        TOPICS.events,
        TOPICS.all_agent_statuses,
        TOPICS.control,
        TOPICS.model,
        TOPICS.all_updates,
    }
    covered = {f for recipe in recipes() for f in recipe.filters}
    assert tree <= covered, tree - covered


def test_json_topics_print_with_v_and_binary_ones_as_time_topic_length():
    for recipe in recipes():
        binary = [f for f in recipe.filters if f in BINARY]
        if binary:
            assert binary == recipe.filters, recipe.line  # never mixed with JSON
            assert recipe.option("-F") == "%I %t %l" or "-N" in recipe.argv, recipe.line
        else:
            assert "-v" in recipe.argv and "-F" not in recipe.argv, recipe.line
        # updates need the coordinator's account; everything else the read-only monitor
        expected = "coordinator" if TOPICS.all_updates in recipe.filters else "monitor"
        assert recipe.option("-u") == expected, recipe.line


def documented_fields(kind: type[BaseModel]) -> set[str]:
    """First-column names of the table that follows the line naming ``kind``."""
    lines = DOC.read_text().splitlines()
    at = next(
        i
        for i, line in enumerate(lines)
        if f"`{kind.__name__}`" in line and not line.startswith("|") and "field" not in line
    )
    rows = []
    for line in lines[at + 1 :]:
        if line.startswith("|"):
            rows.append(line)
        elif rows:
            break
    names = [row.split("|")[1].strip().strip("`") for row in rows[2:]]
    return set(names)


@pytest.mark.parametrize(
    "kind", [CoordinatorStatus, Event, AgentStatus, Control, TrainingSettings, LazyUpload]
)
def test_every_field_of_every_message_is_explained(kind: type[BaseModel]):
    assert documented_fields(kind) == set(kind.model_fields)


def test_documented_exit_codes_are_the_clis():
    section = DOC.read_text().split("| exit code | meaning |")[1]
    codes = {int(m) for m in re.findall(r"^\| (\d+) \|", section, re.MULTILINE)}
    assert codes == {0, ConfigError.EXIT_CODE, EXIT_NO_STATUS, EXIT_BROKER}


# --- the page against a running federation ------------------------------------------------


def always_written(kind: type[Message]) -> set[str]:
    """Fields with a non-null default or none: writers always include them."""
    return {
        name
        for name, field in kind.model_fields.items()
        if field.is_required() or field.default is not None or field.default_factory is not None
    }


def json_lines(recipe: Recipe, text: str) -> list[tuple[str, dict[str, Any]]]:
    """``topic payload`` lines: each topic one the recipe asked for, each payload a valid
    message carrying its always-written fields."""
    seen = []
    for line in text.splitlines():
        topic, _, payload = line.partition(" ")
        assert any(matches(f, topic) for f in recipe.filters), (recipe.line, line)
        kind = kind_of(topic)
        parse(kind, payload)
        raw = json.loads(payload)
        assert always_written(kind) <= raw.keys(), (kind.__name__, raw)
        seen.append((topic, raw))
    return seen


def format_lines(recipe: Recipe, text: str) -> list[tuple[str, int]]:
    """``time topic length`` lines."""
    seen = []
    for line in text.splitlines():
        stamp, topic, length = line.split(" ")
        datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S%z")
        assert any(matches(f, topic) for f in recipe.filters), (recipe.line, line)
        assert int(length) > 0, line
        seen.append((topic, int(length)))
    return seen


@dataclass
class Live:
    recipe: Recipe
    process: subprocess.Popen[bytes]
    output: Path


def start_live(recipe: Recipe, directory: Path, index: int) -> Live:
    output = directory / f"live-{index}.out"
    with open(output, "wb") as handle:  # the child keeps its own copy
        process = subprocess.Popen(recipe.argv, stdout=handle, stderr=subprocess.DEVNULL)
    return Live(recipe, process, output)


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[bytes]:
    """Output as bytes: the saved model is binary."""
    return subprocess.run(argv, capture_output=True, timeout=60, cwd=cwd, env=environment())


def by_filter(results: list[tuple[Recipe, str]], topic: str) -> list[tuple[Recipe, str]]:
    return [(r, out) for r, out in results if topic in r.filters and len(r.filters) == 1]


def test_recipes_show_a_running_federation(broker: DevBroker, tmp_path: Path):
    values = {
        "HOST": "127.0.0.1",
        "PORT": str(broker.port),
        "MONITOR_PASSWORD": broker.provision("monitor"),
        "COORDINATOR_PASSWORD": broker.provision("coordinator"),
        "JOB": JOB,
    }
    all_recipes = recipes(values)
    live = [start_live(r, tmp_path, i) for i, r in enumerate(all_recipes) if not r.bounded]
    processes = []
    try:
        # events are not retained: the subscribers must be in place before the first one
        # (the coordinator's first publish follows its TensorFlow import, seconds away)
        time.sleep(1.0)
        assert all(item.process.poll() is None for item in live)
        coordinator = start_coordinator(
            broker,
            tmp_path,
            job=JOB,
            strategy={"name": "fedbuff", "buffer_size": 1},
            stop={"max_versions": VERSIONS},
        )
        processes.append(coordinator)
        for shard, name in enumerate(AGENTS):
            processes.append(
                start_agent(broker, tmp_path, name, job=JOB, task={"data": {"shard": shard}})
            )
        assert coordinator.wait(180) == 0, (tmp_path / "coordinator.log").read_text()[-3000:]
        for agent, name in zip(processes[1:], AGENTS, strict=True):  # told to stop: they leave
            assert agent.wait(60) == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
        bounded = {r.line: run(r.argv, tmp_path) for r in all_recipes if r.bounded}
        for recipe in all_recipes:
            if recipe.redirect is not None:
                (tmp_path / recipe.redirect).write_bytes(bounded[recipe.line].stdout)
        time.sleep(0.5)  # the last messages reach the live subscribers
    finally:
        for process in processes:
            stop(process)
        for item in live:
            stop(item.process, timeout=5)

    results = [(item.recipe, item.output.read_text()) for item in live]
    check_live(results)
    check_bounded(all_recipes, bounded, tmp_path, values)


def check_live(results: list[tuple[Recipe, str]]) -> None:
    for recipe, text in results:
        assert text, f"nothing printed by: {recipe.line}"
        if recipe.option("-F"):
            format_lines(recipe, text)
        else:
            json_lines(recipe, text)

    ((_, text),) = by_filter(results, TOPICS.events)
    events = [raw for _, raw in json_lines(by_filter(results, TOPICS.events)[0][0], text)]
    types = {e["type"] for e in events}
    assert {"version", "update_accepted", "agent_joined", "state"} <= types, types
    assert [e["version"] for e in events if e["type"] == "version"] == list(range(VERSIONS + 1))

    ((recipe, text),) = by_filter(results, TOPICS.coordinator_status)
    assert json_lines(recipe, text)[-1][1]["state"] == "done"
    ((recipe, text),) = by_filter(results, TOPICS.control)
    assert [raw["state"] for _, raw in json_lines(recipe, text)] == ["run", "stop"]
    ((recipe, text),) = by_filter(results, TOPICS.all_agent_statuses)
    agents = {raw["agent"]: raw["state"] for _, raw in json_lines(recipe, text)}
    assert agents == dict.fromkeys(AGENTS, "offline")  # their last word

    ((recipe, text),) = by_filter(results, TOPICS.model)
    models = format_lines(recipe, text)
    assert len(models) == VERSIONS + 1 and len({length for _, length in models}) == 1
    ((recipe, text),) = by_filter(results, TOPICS.all_updates)
    updates = format_lines(recipe, text)
    assert len(updates) >= VERSIONS
    assert {TOPICS.agent_of_update(topic) for topic, _ in updates} <= set(AGENTS)

    (everything,) = [(r, out) for r, out in results if len(r.filters) == 4]
    assert {kind_of(topic) for topic, _ in json_lines(*everything)} == {
        CoordinatorStatus,
        Event,
        AgentStatus,
        Control,
    }


def check_bounded(
    all_recipes: list[Recipe],
    bounded: dict[str, subprocess.CompletedProcess[bytes]],
    directory: Path,
    values: dict[str, str],
) -> None:
    for recipe in all_recipes:
        if not recipe.bounded:
            continue
        result = bounded[recipe.line]
        if "--retained-only" in recipe.argv:
            assert result.returncode == EXIT_TIMED_OUT, result.stderr
            retained = dict(json_lines(recipe, result.stdout.decode()))
            assert retained[TOPICS.coordinator_status]["state"] == "done"
            assert retained[TOPICS.control]["state"] == "stop"
            assert {TOPICS.agent_of_status(t) for t in retained} >= set(AGENTS)
        else:
            assert result.returncode == 0, result.stderr
    # the saved model, decoded by the page's own python line
    (saved,) = [r.redirect for r in all_recipes if r.redirect]
    assert decode_model((directory / saved).read_bytes()).version == VERSIONS
    (decode,) = shell_lines("python -c")
    printed = run([sys.executable, *shlex.split(decode)[1:]], directory)
    assert printed.returncode == 0 and printed.stdout.startswith(f"{VERSIONS} ".encode()), printed

    for line in shell_lines("fedmq-coordinator"):
        words = shlex.split(PLACEHOLDER.sub(lambda m: values[m.group(1)], line))
        result = run([sys.executable, "-m", "coordinator", *words[1:]], directory)
        assert result.returncode == 0, (line, result.stderr)
        if "--format" in words and words[1] == "agents":
            rows = {row["agent"]: row for row in json.loads(result.stdout)}
            assert set(rows) == set(AGENTS) and rows[AGENTS[0]]["state"] == "offline"
        else:
            assert b"done" in result.stdout
