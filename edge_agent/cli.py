"""``fedmq-agent``: run one edge agent."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from common.cli import run_app
from configs.agent import AgentSettings
from configs.errors import ConfigError
from configs.loading import exit_on_config_error, load_settings

app = typer.Typer(add_completion=False, help=__doc__)
ENV_PREFIX = "FEDMQ_AGENT"


@app.command()
def run(
    config: Annotated[Path | None, typer.Option(help="YAML settings")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the agent until the job stops or SIGTERM."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        settings = load_settings(AgentSettings, config, env_prefix=ENV_PREFIX)
    except ConfigError as error:
        exit_on_config_error(error)
    from edge_agent.main import run as serve

    raise typer.Exit(serve(settings))


def main() -> int:
    return run_app(app)
