"""``fedmq-coordinator``: run the coordinator, or a whole local federation."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from common.cli import run_app
from configs.coordinator import CoordinatorSettings
from configs.errors import ConfigError
from configs.loading import exit_on_config_error, load_settings

if TYPE_CHECKING:
    from common.topics import Topics
    from configs.broker import BrokerConnection
    from coordinator.inspect import Snapshot

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


# --- operators: views and commands from any machine with broker credentials -------------

EXIT_FAILED = 1  # an export that cannot be decoded or written
EXIT_USAGE = 2  # a bad option or config (ConfigError.EXIT_CODE), or an export in the way
EXIT_NO_STATUS = 3  # nothing retained for this job: no status, agents or model
EXIT_BROKER = 4  # the broker could not be reached, refused the credentials, or hung up
EXIT_NOT_CONFIRMED = 5  # no coordinator confirmed the command (or --count not reached) in time
EXIT_REFUSED = 6  # the coordinator answered the command with command_rejected


class Format(str, Enum):
    TABLE = "table"  # for people (rich)
    JSON = "json"  # for programs


BrokerFileOption = Annotated[
    Path | None,
    typer.Option(
        "--broker",
        help="YAML broker connection (host, port, username, password, tls); options override",
    ),
]
HostOption = Annotated[str | None, typer.Option(help="broker host (default 127.0.0.1)")]
PortOption = Annotated[int | None, typer.Option(help="broker port (default 1883; 8883 with tls)")]
UserOption = Annotated[
    str | None, typer.Option(help="account (default monitor; operator for pause, resume, stop)")
]
PasswordOption = Annotated[
    str | None, typer.Option(envvar="FEDMQ_PASSWORD", help="password (or FEDMQ_PASSWORD)")
]
JobOption = Annotated[str, typer.Option(help="job id")]
PrefixOption = Annotated[str, typer.Option(help="topic prefix")]
FormatOption = Annotated[Format, typer.Option("--format", help="table (people) or json")]
ReasonOption = Annotated[
    str | None, typer.Option(help="why, for the event and the coordinator's log")
]
ByOption = Annotated[str | None, typer.Option(help="who (default user@host)")]
WaitOption = Annotated[
    float, typer.Option("--timeout", min=0.1, help="seconds to wait for the confirmation")
]


def _fail(code: int, message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _connection(
    broker: Path | None,
    host: str | None,
    port: int | None,
    username: str | None,
    password: str | None,
    account: str,
) -> BrokerConnection:
    """The broker connection: the ``--broker`` file, overridden by the options; the
    command's own account when neither names one."""
    from configs.broker import BrokerConnection

    given = {"host": host, "port": port, "username": username, "password": password}
    overrides = {key: value for key, value in given.items() if value is not None}
    try:
        connection = load_settings(BrokerConnection, broker, overrides=overrides)
    except ConfigError as error:
        exit_on_config_error(ConfigError(f"broker connection: {error}"))
    if connection.username is None:
        connection = connection.model_copy(update={"username": account})
    return connection


def _topics(prefix: str, job: str) -> Topics:
    from common.errors import ProtocolError
    from common.topics import Topics

    try:
        return Topics(prefix, job)
    except ProtocolError as error:
        exit_on_config_error(ConfigError(str(error)))


def _snapshot(connection: BrokerConnection, topics: Topics) -> Snapshot:
    from coordinator.inspect import InspectError, read_snapshot

    try:
        return read_snapshot(connection, topics)
    except InspectError as error:
        _fail(EXIT_BROKER, str(error))


def _show(data: object, rows: list[dict[str, Any]], title: str, output: Format) -> None:
    """``--format json`` prints ``data``; a table (rich) prints ``rows``."""
    if output == Format.JSON:
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
    broker: BrokerFileOption = None,
    host: HostOption = None,
    port: PortOption = None,
    username: UserOption = None,
    password: PasswordOption = None,
    job: JobOption = "digits",
    prefix: PrefixOption = "fedmq",
    output: FormatOption = Format.TABLE,
) -> None:
    """The coordinator's retained status, with the control state (run, pause, stop).

    Exit 0; 3 if the job has no status; 4 broker error."""
    from broker.config import MONITOR

    connection = _connection(broker, host, port, username, password, MONITOR)
    snapshot = _snapshot(connection, _topics(prefix, job))
    if snapshot.coordinator is None:
        _fail(EXIT_NO_STATUS, f"no coordinator status for job {job!r}")
    data = snapshot.coordinator.model_dump(mode="json", exclude_none=True)
    if snapshot.control is not None:
        data["control"] = snapshot.control.state.value
    rows = [{"field": key, "value": value} for key, value in data.items()]
    _show(data, rows, f"fedmq job {job}", output)


@app.command()
def agents(
    broker: BrokerFileOption = None,
    host: HostOption = None,
    port: PortOption = None,
    username: UserOption = None,
    password: PasswordOption = None,
    job: JobOption = "digits",
    prefix: PrefixOption = "fedmq",
    output: FormatOption = Format.TABLE,
) -> None:
    """Every agent's retained status: state, base version, staleness, uplink, temperature.

    Exit 0; 3 if no agent has reported; 4 broker error."""
    from broker.config import MONITOR

    connection = _connection(broker, host, port, username, password, MONITOR)
    snapshot = _snapshot(connection, _topics(prefix, job))
    if not snapshot.agents:
        _fail(EXIT_NO_STATUS, f"no agent status for job {job!r}")
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


def _command(
    action: str,
    connection: BrokerConnection,
    topics: Topics,
    reason: str | None,
    by: str | None,
    timeout: float,
    output: Format,
) -> None:
    from common.messages import Command
    from coordinator.inspect import InspectError
    from coordinator.operate import CommandRefused, NotConfirmed, issuer, send_command

    try:
        command = Command.model_validate({"action": action, "reason": reason, "by": by or issuer()})
    except ValueError as error:  # pydantic's ValidationError: --reason or --by too long
        exit_on_config_error(ConfigError(f"--reason/--by: {error}"))
    try:
        control = send_command(connection, topics, command, timeout)
    except NotConfirmed as error:
        _fail(EXIT_NOT_CONFIRMED, str(error))
    except CommandRefused as error:
        _fail(EXIT_REFUSED, str(error))
    except InspectError as error:
        _fail(EXIT_BROKER, str(error))
    if output == Format.JSON:
        typer.echo(control.to_json().decode())
    else:
        typer.echo(f"job {topics.job}: control is now {control.state.value} (command {command.id})")


OPERATOR_COMMANDS = {
    "pause": """Pause training: no new rounds, updates refused (paused) until resume.

    Waits until the coordinator confirms. Exit 0 confirmed; 5 not confirmed in time;
    6 refused by the coordinator; 4 broker error; 2 bad option.""",
    "resume": """Resume training after pause (or after stop, on a restarted coordinator).

    Exit codes as for pause.""",
    "stop": """Stop the job: agents leave, the coordinator snapshots and exits.

    A restarted coordinator keeps the stop until resume. Exit codes as for pause.""",
}


def _operator_command(action: str) -> None:
    """Register ``action`` (pause, resume, stop): the same options, one command each."""

    def command(
        broker: BrokerFileOption = None,
        host: HostOption = None,
        port: PortOption = None,
        username: UserOption = None,
        password: PasswordOption = None,
        job: JobOption = "digits",
        prefix: PrefixOption = "fedmq",
        reason: ReasonOption = None,
        by: ByOption = None,
        timeout: WaitOption = 15.0,
        output: FormatOption = Format.TABLE,
    ) -> None:
        from broker.config import OPERATOR

        connection = _connection(broker, host, port, username, password, OPERATOR)
        _command(action, connection, _topics(prefix, job), reason, by, timeout, output)

    command.__doc__ = OPERATOR_COMMANDS[action]
    app.command(name=action)(command)


for _action in OPERATOR_COMMANDS:
    _operator_command(_action)


EVENT_STYLES = {
    "update_accepted": "green",
    "update_rejected": "red",
    "version": "bold cyan",
    "agent_joined": "blue",
    "agent_left": "blue",
    "state": "bold yellow",
    "command_rejected": "bold red",
}


def _quoted(text: str) -> str:
    return json.dumps(text) if not text or any(c.isspace() or c == '"' for c in text) else text


def _event_line(fields: dict[str, Any]) -> str:
    """One rich-markup line: local time, type, then the other fields as key=value."""
    from datetime import datetime

    from rich.markup import escape

    moment = datetime.fromtimestamp(float(fields.get("time", time.time())))
    kind = str(fields.get("type"))
    rest = " ".join(
        f"{key}={escape(_quoted(str(value)))}"
        for key, value in fields.items()
        if key not in ("type", "time") and value is not None
    )
    style = EVENT_STYLES.get(kind, "default")
    return f"{moment:%H:%M:%S}.{moment.microsecond // 1000:03d} [{style}]{kind:<16}[/] {rest}"


async def _print_events(
    connection: BrokerConnection,
    topics: Topics,
    kinds: set[str],
    count: int | None,
    seconds: float | None,
    output: Format,
) -> int:
    """Print events until ``count`` are printed or ``seconds`` pass; the exit code."""
    from rich.console import Console

    from coordinator.inspect import follow_events

    console = Console(highlight=False, soft_wrap=True)
    printed = 0

    def subscribed() -> None:
        typer.echo(f"following {topics.events} (Ctrl-C to stop)", err=True)

    async def follow() -> None:
        nonlocal printed
        async for item in follow_events(connection, topics, 10.0, subscribed):
            if isinstance(item, Exception):
                typer.echo(f"warning: unreadable event: {item}", err=True)
                continue
            event, fields = item
            if kinds and event.type.value not in kinds:
                continue
            if output == Format.JSON:
                typer.echo(json.dumps(fields))
            else:
                console.print(_event_line(fields))
            printed += 1
            if count is not None and printed >= count:
                return

    try:
        await asyncio.wait_for(follow(), seconds)
    except asyncio.TimeoutError:
        if count is not None:
            typer.echo(f"error: {printed} of {count} events within {seconds:g} s", err=True)
            return EXIT_NOT_CONFIRMED
    return 0


@app.command()
def events(
    broker: BrokerFileOption = None,
    host: HostOption = None,
    port: PortOption = None,
    username: UserOption = None,
    password: PasswordOption = None,
    job: JobOption = "digits",
    prefix: PrefixOption = "fedmq",
    kind: Annotated[
        list[str] | None,
        typer.Option("--type", help="only this event type (repeatable)"),
    ] = None,
    count: Annotated[int | None, typer.Option(min=1, help="stop after this many")] = None,
    seconds: Annotated[float | None, typer.Option(min=0.1, help="stop after this long")] = None,
    output: FormatOption = Format.TABLE,
) -> None:
    """Follow the job's events as they happen, one line (or JSON object) each.

    Events are not retained: nothing from before the command started is shown. Runs until
    Ctrl-C, --count or --seconds. Exit 0; 5 if --count was not reached within --seconds;
    4 broker error; 2 bad option."""
    from broker.config import MONITOR
    from common.messages import EventType
    from coordinator.inspect import InspectError

    known = [member.value for member in EventType]
    unknown = sorted(set(kind or ()) - set(known))
    if unknown:
        exit_on_config_error(ConfigError(f"--type {unknown[0]!r}: use one of {known}"))
    connection = _connection(broker, host, port, username, password, MONITOR)
    topics = _topics(prefix, job)
    try:
        code = asyncio.run(
            _print_events(connection, topics, set(kind or ()), count, seconds, output)
        )
    except KeyboardInterrupt:
        code = 0
    except InspectError as error:
        _fail(EXIT_BROKER, str(error))
    raise typer.Exit(code)


@app.command()
def export(
    broker: BrokerFileOption = None,
    host: HostOption = None,
    port: PortOption = None,
    username: UserOption = None,
    password: PasswordOption = None,
    job: Annotated[
        str | None, typer.Option(help="job id (default: the config's, else digits)")
    ] = None,
    prefix: Annotated[
        str | None, typer.Option(help="topic prefix (default: the config's, else fedmq)")
    ] = None,
    output_path: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="path without suffix (default <job>-v<version>)"),
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="coordinator YAML: its task builds the .keras model")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="task model (mlp, cnn, module:function) for .keras")
    ] = None,
    input_shape: Annotated[
        str | None, typer.Option(help="task input shape, e.g. 64 or 8,8 (default 64)")
    ] = None,
    num_classes: Annotated[int | None, typer.Option(help="task classes (default 10)")] = None,
    force: Annotated[bool, typer.Option(help="replace existing files")] = False,
    timeout: Annotated[
        float, typer.Option(min=0.1, help="seconds to wait for the retained model")
    ] = 5.0,
    output: FormatOption = Format.TABLE,
) -> None:
    """Write the current global model as .npz and, given the task, as .keras.

    The .npz holds one array per tensor, keyed by its name; the .keras model is built from
    the task (--config or --model) with those weights. Refuses to replace files without
    --force. Exit 0; 2 bad option, a file in the way or a task that does not fit the model;
    3 no model for the job; 4 broker error; 1 undecodable model or unwritable file."""
    from broker.config import MONITOR
    from common.errors import TaskError
    from configs.task import TaskSettings
    from coordinator.inspect import InspectError
    from coordinator.operate import ExportError, OutputExists, export_model

    task: TaskSettings | None = None
    if config is not None:
        try:
            settings = load_settings(CoordinatorSettings, config, env_prefix=ENV_PREFIX)
        except ConfigError as error:
            exit_on_config_error(error)
        task, job, prefix = settings.task, job or settings.job, prefix or settings.topic_prefix
    given: dict[str, Any] = {"model": model, "num_classes": num_classes}
    if input_shape is not None:
        try:
            given["input_shape"] = [int(side) for side in input_shape.split(",")]
        except ValueError:
            exit_on_config_error(ConfigError(f"--input-shape {input_shape!r}: e.g. 64 or 8,8"))
    overrides = {key: value for key, value in given.items() if value is not None}
    if overrides:
        base = task.model_dump() if task is not None else {}
        try:
            task = TaskSettings.model_validate({**base, **overrides})
        except ValueError as error:  # pydantic's ValidationError
            exit_on_config_error(ConfigError(f"task options: {error}"))
    connection = _connection(broker, host, port, username, password, MONITOR)
    topics = _topics(prefix or "fedmq", job or "digits")
    try:
        exported = export_model(connection, topics, output_path, task, force=force, timeout=timeout)
    except OutputExists as error:
        _fail(EXIT_USAGE, str(error))
    except TaskError as error:
        _fail(EXIT_USAGE, f"the task does not fit the model: {error}")
    except ExportError as error:
        _fail(EXIT_FAILED, str(error))
    except InspectError as error:
        _fail(EXIT_BROKER, str(error))
    if exported is None:
        _fail(EXIT_NO_STATUS, f"no model retained for job {topics.job!r}")
    if exported.keras is None:
        typer.echo("note: no task given (--config or --model): .npz only", err=True)
    data = {
        "job": exported.job,
        "version": exported.version,
        "metrics": exported.metrics,
        "tensors": exported.tensors,
        "npz": str(exported.npz),
        **({"keras": str(exported.keras)} if exported.keras else {}),
    }
    rows = [{"field": key, "value": value} for key, value in data.items()]
    _show(data, rows, f"fedmq job {topics.job}: model exported", output)


def main() -> int:
    return run_app(app)
