"""compose.yaml, checked without a container engine: every file it names exists, every
config loads with the project's settings, the services run the local federation's commands,
the broker's config is the rendered one, and every account and password lines up."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from broker.config import MONITOR, render_acl, render_mosquitto_conf
from configs.agent import AgentSettings
from configs.broker import MosquittoSettings
from configs.coordinator import CoordinatorSettings
from configs.loading import load_settings
from coordinator.local import process_command

ROOT = Path(__file__).resolve().parents[1]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
IMAGE = "fedmq:local"
# role -> (module run by the local federation, settings, environment prefix of the CLI)
ROLES: dict[str, tuple[str, type[BaseModel], str]] = {
    "coordinator.yaml": ("coordinator", CoordinatorSettings, "FEDMQ_COORDINATOR"),
    "agent.yaml": ("edge_agent", AgentSettings, "FEDMQ_AGENT"),
}
VARIABLE = re.compile(r"\$\{(\w+)(?::?[-?][^}]*)?\}")


def config_file(name: str) -> Path:
    return ROOT / COMPOSE["configs"][name]["file"]


def mounted(service: dict[str, Any]) -> dict[str, Path]:
    """Target path in the container -> file in this repository, for its compose configs."""
    return {entry["target"]: config_file(entry["source"]) for entry in service.get("configs", [])}


def fedmq_services() -> dict[str, tuple[str, Path]]:
    """name -> (role file name, config file) for the coordinator and the agents."""
    found = {}
    for name, service in SERVICES.items():
        for target, path in mounted(service).items():
            if Path(target).name in ROLES:
                found[name] = (Path(target).name, path)
    return found


def environment(service: dict[str, Any]) -> dict[str, str]:
    """The service's environment as the container sees it, a placeholder for each ${VAR}."""
    return {
        key: VARIABLE.sub("from-dot-env", value) for key, value in service["environment"].items()
    }


def load(name: str) -> BaseModel:
    role, path = fedmq_services()[name]
    _, kind, prefix = ROLES[role]
    return load_settings(kind, path, env_prefix=prefix, environ=environment(SERVICES[name]))


def broker_settings() -> MosquittoSettings:
    return load_settings(MosquittoSettings, ROOT / "configs" / "compose" / "broker.yaml")


def volume_targets(service: dict[str, Any]) -> dict[str, str]:
    return {v.split(":")[1]: v.split(":")[0] for v in service.get("volumes", [])}


def test_every_file_and_volume_compose_names_exists():
    for name in COMPOSE["configs"]:
        assert config_file(name).is_file(), name
    for name, service in SERVICES.items():
        if "build" in service:
            assert (ROOT / service["build"] / "Dockerfile").is_file(), name
        for entry in service.get("env_file", []):
            assert (ROOT / entry).is_file(), (name, entry)
        for entry in service.get("configs", []):
            assert entry["source"] in COMPOSE["configs"], (name, entry)
        for source in volume_targets(service).values():
            if source.startswith((".", "/")):  # a bind mount
                assert (ROOT / source).exists(), (name, source)
            else:
                assert source in COMPOSE["volumes"], (name, source)
        for dependency in service.get("depends_on", {}):
            assert dependency in SERVICES, (name, dependency)


def test_there_is_a_coordinator_and_three_agents():
    roles = sorted(role for role, _ in fedmq_services().values())
    assert roles == ["agent.yaml"] * 3 + ["coordinator.yaml"]
    assert all(SERVICES[name]["image"] == IMAGE for name in fedmq_services())


@pytest.mark.parametrize("name", sorted(fedmq_services()))
def test_service_runs_the_local_federations_command(name: str):
    role, _ = fedmq_services()[name]
    module = ROLES[role][0]
    target = next(t for t in mounted(SERVICES[name]) if Path(t).name == role)
    # the image's interpreter is `python` on PATH; the local run uses sys.executable
    assert SERVICES[name]["command"] == process_command(module, target, python="python")


@pytest.mark.parametrize("name", sorted(fedmq_services()))
def test_service_config_loads_and_gets_its_password_from_the_environment(name: str):
    settings = load(name)
    assert isinstance(settings, CoordinatorSettings | AgentSettings)
    assert settings.broker.password is not None
    assert settings.broker.password.get_secret_value() == "from-dot-env"
    assert settings.broker.host == "broker" and "broker" in SERVICES
    assert settings.broker.port == broker_settings().port


def test_coordinator_and_agents_describe_one_job():
    coordinator = load("coordinator")
    assert isinstance(coordinator, CoordinatorSettings)
    agents = [load(name) for name, (role, _) in fedmq_services().items() if role == "agent.yaml"]
    data = coordinator.task.data
    assert data.kind == "digits" and data.num_agents == len(agents)
    shards = set()
    for agent in agents:
        assert isinstance(agent, AgentSettings)
        assert (agent.job, agent.topic_prefix) == (coordinator.job, coordinator.topic_prefix)
        assert agent.task.model == coordinator.task.model
        assert agent.task.data.kind == "digits"
        assert agent.task.data.num_agents == data.num_agents
        assert agent.broker.username == agent.agent_id  # the ACL grants rights by username
        shards.add(agent.task.data.shard)
    assert shards == set(range(data.num_agents))
    assert coordinator.broker.username == "coordinator"


def test_broker_runs_the_rendered_config_with_the_projects_acl():
    broker = SERVICES["broker"]
    assert broker["image"].startswith("eclipse-mosquitto:2")
    files = mounted(broker)
    settings = broker_settings()
    conf = files["/mosquitto/config/mosquitto.conf"]
    assert conf.read_text() == render_mosquitto_conf(settings)
    assert files[settings.acl_file] == ROOT / "broker" / "acl"
    coordinator = load("coordinator")
    assert isinstance(coordinator, CoordinatorSettings)
    assert files[settings.acl_file].read_text() == render_acl(coordinator.topic_prefix)
    volumes = volume_targets(broker)
    assert str(Path(settings.password_file).parent) in volumes
    assert settings.persistence_location is not None
    assert settings.persistence_location.rstrip("/") in volumes
    assert f"{settings.port}:{settings.port}" in broker["ports"]


def provisioned() -> dict[str, str]:
    """account -> the environment variable its password comes from, in `provision`."""
    script = SERVICES["provision"]["command"][-1]
    lines = re.findall(r"fedmq-broker provision (\S+) .*--password \"\$\$(\w+)\"", script)
    return dict(lines)


def test_provision_writes_the_brokers_password_file_before_it_starts():
    provision = SERVICES["provision"]
    password_file = broker_settings().password_file
    assert f"f={password_file}" in provision["command"][-1]
    shared = volume_targets(provision)[str(Path(password_file).parent)]
    assert volume_targets(SERVICES["broker"])[str(Path(password_file).parent)] == shared
    condition = SERVICES["broker"]["depends_on"]["provision"]["condition"]
    assert condition == "service_completed_successfully"


def test_every_account_is_provisioned_with_the_password_its_service_uses():
    accounts = provisioned()
    provision_env = SERVICES["provision"]["environment"]
    users = {MONITOR}
    for name in fedmq_services():
        settings = load(name)
        assert isinstance(settings, CoordinatorSettings | AgentSettings)
        user = settings.broker.username
        assert user is not None
        users.add(user)
        (value,) = SERVICES[name]["environment"].values()
        match = VARIABLE.fullmatch(value)
        assert match is not None, value
        assert accounts[user] == match.group(1), (name, user)
        assert VARIABLE.fullmatch(provision_env[accounts[user]]).group(1) == accounts[user]  # type: ignore[union-attr]
    assert set(accounts) == users


def test_the_env_recipe_in_deploy_md_defines_every_variable(tmp_path: Path):
    text = (ROOT / "docs" / "deploy.md").read_text()
    recipe = next(b for b in re.findall(r"```sh\n(.*?)```", text, re.DOTALL) if "> .env" in b)
    subprocess.run(["bash", "-euo", "pipefail", "-c", recipe], cwd=tmp_path, check=True, timeout=30)
    written = dict(
        line.split("=", 1) for line in (tmp_path / ".env").read_text().splitlines() if line
    )
    needed = set(VARIABLE.findall((ROOT / "compose.yaml").read_text()))
    assert set(written) == needed
    assert all(len(value) >= 24 for value in written.values())
    assert len(set(written.values())) == len(written)  # one password per account


def dockerfile_copies() -> list[str]:
    sources = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            sources += line.split()[1:-1]
    return sources


def test_the_image_is_built_from_the_packages_the_wheel_needs():
    pyproject = (ROOT / "pyproject.toml").read_text()
    include = re.search(r"^include = \[(.*)\]", pyproject, re.MULTILINE)
    assert include is not None
    packages = {name.strip(' "*') for name in include.group(1).split(",")}
    copied = dockerfile_copies()
    assert packages <= set(copied)
    allowed = {
        line[1:]
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for source in copied:
        assert (ROOT / source).exists(), source
        assert source in allowed, f"{source} is not in the build context (.dockerignore)"
    assert "*" in (ROOT / ".dockerignore").read_text().splitlines()  # an allowlist
