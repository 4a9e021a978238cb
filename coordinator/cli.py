"""``fedmq-coordinator``: run the coordinator, or a whole local federation."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from common.cli import run_app
from configs.coordinator import CoordinatorSettings
from configs.errors import ConfigError
from configs.loading import exit_on_config_error, load_settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
ENV_PREFIX = "FEDMQ_COORDINATOR"


@app.callback()
def _commands() -> None:
    """fedmq coordinator: run the service, or a local federation."""


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )


@app.command()
def run(
    config: Annotated[Path | None, typer.Option(help="YAML settings")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the coordinator service until its stop rule or SIGTERM."""
    _logging(verbose)
    try:
        settings = load_settings(CoordinatorSettings, config, env_prefix=ENV_PREFIX)
    except ConfigError as error:
        exit_on_config_error(error)
    from common.errors import TaskError
    from coordinator.main import run as serve

    try:
        code = serve(settings)
    except TaskError as error:  # a model or data set the settings name cannot be built
        exit_on_config_error(ConfigError(f"task: {error}"))
    raise typer.Exit(code)


@app.command()
def local(
    config: Annotated[Path | None, typer.Option(help="YAML settings of the run")] = None,
    agents: Annotated[int | None, typer.Option(help="number of agents")] = None,
    stragglers: Annotated[int | None, typer.Option(help="how many agents are slower")] = None,
    slowdown: Annotated[float | None, typer.Option(help="how much slower")] = None,
    dropouts: Annotated[int | None, typer.Option(help="agents stopped for a while")] = None,
    strategy: Annotated[str | None, typer.Option(help="fedbuff, fedasync or fedavg")] = None,
    codec: Annotated[str | None, typer.Option(help="codec preset: int8, int4, sign...")] = None,
    target_accuracy: Annotated[float | None, typer.Option(help="stop when reached")] = None,
    max_seconds: Annotated[float | None, typer.Option(help="stop after this long")] = None,
    output: Annotated[Path | None, typer.Option(help="results directory")] = None,
    live: Annotated[bool, typer.Option(help="live progress table")] = True,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run a complete local federation: broker, coordinator and agents as processes."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING)
    from codec import PRESETS, get_codec
    from configs.local import LocalRunSettings

    given = {
        "agents": agents,
        "stragglers": stragglers,
        "slowdown": slowdown,
        "dropouts": dropouts,
        "output": output,
    }
    overrides: dict[str, object] = {k: v for k, v in given.items() if v is not None}
    stop = {"target_accuracy": target_accuracy, "max_seconds": max_seconds}
    if any(v is not None for v in stop.values()):
        overrides["stop"] = {k: v for k, v in stop.items() if v is not None}
    if codec is not None and codec not in PRESETS:
        exit_on_config_error(ConfigError(f"--codec: unknown preset {codec!r}"))
    try:
        settings = load_settings(
            LocalRunSettings, config, env_prefix="FEDMQ_LOCAL", overrides=overrides
        )
        # --strategy and --codec replace their whole section: another strategy's or
        # codec's parameters from the file would not fit it
        if strategy is not None and strategy != settings.strategy.name:
            settings = LocalRunSettings.model_validate(
                {**settings.model_dump(), "strategy": {"name": strategy}}
            )
        if codec is not None:
            training = settings.training.model_copy(update={"codec": get_codec(codec).get_config()})
            settings = settings.model_copy(update={"training": training})
    except ConfigError as error:
        exit_on_config_error(error)
    except ValueError as error:  # pydantic's ValidationError on the replaced section
        exit_on_config_error(ConfigError(f"--strategy/--codec: {error}"))

    from coordinator.local import run_local

    results = run_local(settings, live=live)
    raise typer.Exit(0 if results["final_version"] is not None else 1)


# --- read-only views -------------------------------------------------------------------

EXIT_NO_STATUS = 3  # nothing retained for this job: no coordinator has run it
EXIT_BROKER = 4  # the broker could not be reached, or refused the credentials

HostOption = Annotated[str, typer.Option(help="broker host")]
PortOption = Annotated[int, typer.Option(help="broker port")]
UserOption = Annotated[str, typer.Option(help="account (read-only monitor by default)")]
PasswordOption = Annotated[
    str | None, typer.Option(envvar="FEDMQ_PASSWORD", help="password (or FEDMQ_PASSWORD)")
]
JobOption = Annotated[str, typer.Option(help="job id")]
PrefixOption = Annotated[str, typer.Option(help="topic prefix")]
FormatOption = Annotated[str, typer.Option("--format", help="table or json")]


def _snapshot(
    host: str, port: int, username: str, password: str | None, job: str, prefix: str
) -> Any:
    from common.errors import ProtocolError
    from common.topics import Topics
    from configs.broker import BrokerConnection
    from coordinator.inspect import InspectError, read_snapshot

    try:
        topics = Topics(prefix, job)
    except ProtocolError as error:
        exit_on_config_error(ConfigError(str(error)))
    connection = BrokerConnection(host=host, port=port, username=username, password=password)
    try:
        return read_snapshot(connection, topics)
    except InspectError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(EXIT_BROKER) from error


def _show(data: object, rows: list[dict[str, Any]], title: str, output: str) -> None:
    """``--format json`` prints ``data``; a table (rich) prints ``rows``."""
    if output == "json":
        typer.echo(json.dumps(data))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in rows[0]:
        table.add_column(
            column, justify="left" if column in ("agent", "state", "field") else "right"
        )
    for row in rows:
        table.add_row(*("-" if v is None else str(v) for v in row.values()))
    Console().print(table)


@app.command()
def status(
    host: HostOption = "127.0.0.1",
    port: PortOption = 1883,
    username: UserOption = "monitor",
    password: PasswordOption = None,
    job: JobOption = "digits",
    prefix: PrefixOption = "fedmq",
    output: FormatOption = "table",
) -> None:
    """The coordinator's retained status. Exit 0; 3 if the job has none; 4 broker error."""
    snapshot = _snapshot(host, port, username, password, job, prefix)
    if snapshot.coordinator is None:
        typer.echo(f"no coordinator status for job {job!r}", err=True)
        raise typer.Exit(EXIT_NO_STATUS)
    data = snapshot.coordinator.model_dump(mode="json", exclude_none=True)
    rows = [{"field": key, "value": value} for key, value in data.items()]
    _show(data, rows, f"fedmq job {job}", output)


@app.command()
def agents(
    host: HostOption = "127.0.0.1",
    port: PortOption = 1883,
    username: UserOption = "monitor",
    password: PasswordOption = None,
    job: JobOption = "digits",
    prefix: PrefixOption = "fedmq",
    output: FormatOption = "table",
) -> None:
    """Every agent's retained status: state, base version, staleness, uplink, temperature.
    Exit 0; 3 if no agent has reported; 4 broker error."""
    snapshot = _snapshot(host, port, username, password, job, prefix)
    if not snapshot.agents:
        typer.echo(f"no agent status for job {job!r}", err=True)
        raise typer.Exit(EXIT_NO_STATUS)
    version = snapshot.coordinator.version if snapshot.coordinator else None
    rows = []
    for name, agent in sorted(snapshot.agents.items()):
        staleness = None
        if version is not None and agent.base_version is not None:
            staleness = version - agent.base_version
        rows.append(
            {
                "agent": name,
                "state": agent.state.value,
                "base_version": agent.base_version,
                "last_update_age_s": None
                if agent.last_update_at is None
                else round(time.time() - agent.last_update_at, 1),
                "staleness": staleness,
                "uplink_bytes": agent.uplink_bytes,
                "temperature_c": agent.temperature_c,
            }
        )
    _show(rows, rows, f"fedmq job {job}: agents", output)


def main() -> int:

    return run_app(app)
