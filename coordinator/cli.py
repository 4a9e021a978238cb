"""``fedmq-coordinator``: run the coordinator, or a whole local federation."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

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
    from coordinator.main import run as serve

    raise typer.Exit(serve(settings))


def main() -> int:
    try:
        app()
    except SystemExit as exit_:
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else 1
    return 0
