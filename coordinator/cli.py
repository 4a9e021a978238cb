"""``fedmq-coordinator``: run the coordinator, or a whole local federation."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

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


def main() -> int:
    return run_app(app)
