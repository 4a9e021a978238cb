"""``fedmq-broker``: provision accounts, print the Mosquitto configuration, run a private
development broker."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Annotated

import typer

from broker.config import render_acl, render_mosquitto_conf
from broker.dev import local_broker
from broker.errors import BrokerError
from broker.provision import provision_account
from common.cli import run_app
from configs.broker import MosquittoSettings
from configs.errors import ConfigError
from configs.loading import exit_on_config_error, load_settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


@app.command()
def provision(
    name: Annotated[str, typer.Argument(help="account (agent id, coordinator, monitor)")],
    password_file: Annotated[Path, typer.Option(help="Mosquitto password file")] = Path(
        "/etc/mosquitto/fedmq/passwd"
    ),
    password: Annotated[str | None, typer.Option(help="default: a new random token")] = None,
    rotate: Annotated[bool, typer.Option(help="replace an existing password")] = False,
) -> None:
    """Create an account, idempotently; prints the password when one was set. Reload the
    broker (SIGHUP) for it to take effect."""
    try:
        created = provision_account(password_file, name, password=password, rotate=rotate)
    except BrokerError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    if created is None:
        typer.echo(f"{name}: already provisioned (unchanged)")
    else:
        typer.echo(f"{name}: {created}")


@app.command()
def config(
    settings: Annotated[
        Path | None, typer.Option("--config", help="YAML MosquittoSettings")
    ] = None,
    prefix: Annotated[str, typer.Option(help="topic prefix")] = "fedmq",
    acl: Annotated[bool, typer.Option("--acl", help="print the ACL instead")] = False,
) -> None:
    """Print the production mosquitto.conf from settings (YAML, FEDMQ_BROKER__* environment
    overrides), or the ACL."""
    try:
        values = load_settings(MosquittoSettings, settings, env_prefix="FEDMQ_BROKER")
    except ConfigError as error:
        exit_on_config_error(error)
    typer.echo(render_acl(prefix) if acl else render_mosquitto_conf(values), nl=False)


@app.command()
def dev(
    directory: Annotated[Path, typer.Option(help="where the broker keeps its files")] = Path(
        "state/broker"
    ),
    port: Annotated[int, typer.Option(help="0 picks a free port")] = 0,
    account: Annotated[list[str] | None, typer.Option(help="accounts to provision")] = None,
) -> None:
    """Run a private Mosquitto with fedmq's config until Ctrl-C."""
    try:
        broker = local_broker(directory, port=port)  # amqtt when Mosquitto is missing

        for name in account or []:
            broker.provision(name)
        broker.start()
    except BrokerError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from error
    typer.echo(f"{broker.kind} listening on 127.0.0.1:{broker.port}; files in {broker.directory}")
    typer.echo(f"credentials: {broker.credentials_file}")
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    while not stop and broker.running:
        time.sleep(0.2)
    broker.stop()


def main() -> int:
    return run_app(app)
