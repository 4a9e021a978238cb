"""``fedmq-broker``: provision accounts and certificates, print the Mosquitto configuration,
run a private development broker."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from broker.config import render_acl, render_mosquitto_conf
from broker.dev import local_broker
from broker.errors import BrokerError
from broker.provision import provision_account
from broker.tls import (
    CA_DAYS,
    DEFAULT_SERVER_NAMES,
    LEAF_DAYS,
    create_ca,
    issue_client_certificate,
    issue_server_certificate,
    revoke_client_certificate,
)
from common.cli import run_app
from configs.broker import TLS_DIRECTORY, MosquittoSettings
from configs.errors import ConfigError
from configs.loading import exit_on_config_error, load_settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
certs = typer.Typer(
    no_args_is_help=True,
    help="TLS: a private CA, the broker's certificate, one client certificate per device.",
)
app.add_typer(certs, name="certs")

Directory = Annotated[Path, typer.Option("--dir", help="where the CA and certificates live")]
Days = Annotated[int, typer.Option(help="validity in days")]
Replace = Annotated[bool, typer.Option(help="renew an existing certificate")]


def fail(error: BrokerError) -> NoReturn:
    typer.echo(f"error: {error}", err=True)
    raise typer.Exit(2) from error


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
        fail(error)
    if created is None:
        typer.echo(f"{name}: already provisioned (unchanged)")
    else:
        typer.echo(f"{name}: {created}")


@certs.command("ca")
def certs_ca(
    directory: Directory = Path(TLS_DIRECTORY),
    name: Annotated[str, typer.Option(help="the CA's common name")] = "fedmq CA",
    days: Days = CA_DAYS,
) -> None:
    """Create the CA and an empty revocation list.

    Writes ca.key (mode 0600), ca.crt and crl.pem; refuses to replace an existing CA."""
    try:
        layout = create_ca(directory, name=name, days=days)
    except BrokerError as error:
        fail(error)
    typer.echo(f"CA: {layout.ca_cert} (key {layout.ca_key}, keep it private); CRL: {layout.crl}")


@certs.command("server")
def certs_server(
    host: Annotated[
        list[str] | None,
        typer.Argument(
            help="names and IPs clients use to reach the broker (default: localhost 127.0.0.1)"
        ),
    ] = None,
    directory: Directory = Path(TLS_DIRECTORY),
    days: Days = LEAF_DAYS,
    replace: Replace = False,
) -> None:
    """Issue the broker's certificate (server.crt, server.key)."""
    try:
        cert, key = issue_server_certificate(
            directory, host or DEFAULT_SERVER_NAMES, days=days, replace=replace
        )
    except BrokerError as error:
        fail(error)
    typer.echo(f"server certificate: {cert} (key {key}); reload the broker to use a new one")


def _client(name: str, directory: Path, days: int, replace: bool, service: bool) -> None:
    try:
        cert, key = issue_client_certificate(
            directory, name, service=service, days=days, replace=replace
        )
    except BrokerError as error:
        fail(error)
    ca = directory / "ca.crt"
    typer.echo(f"{name}: certificate {cert}, key {key}")
    typer.echo(
        f"the client needs {ca}, {cert} and {key} (broker.tls: ca_file, cert_file, key_file)"
    )


@certs.command("device")
def certs_device(
    name: Annotated[str, typer.Argument(help="the agent id: the certificate's CN and username")],
    directory: Directory = Path(TLS_DIRECTORY),
    days: Days = LEAF_DAYS,
    replace: Replace = False,
) -> None:
    """Issue a device's client certificate (CN = its agent id).

    Renewing one (--replace) revokes the old one."""
    _client(name, directory, days, replace, service=False)


@certs.command("service")
def certs_service(
    name: Annotated[str, typer.Argument(help="coordinator, monitor or operator")],
    directory: Directory = Path(TLS_DIRECTORY),
    days: Days = LEAF_DAYS,
    replace: Replace = False,
) -> None:
    """Issue a certificate for a service account (coordinator, monitor, operator).

    These accounts have more rights than a device: keep their keys off the devices."""
    _client(name, directory, days, replace, service=True)


@certs.command("revoke")
def certs_revoke(
    name: Annotated[str, typer.Argument(help="the device (or service) to shut out")],
    directory: Directory = Path(TLS_DIRECTORY),
) -> None:
    """Revoke a client's current certificate (adds it to crl.pem).

    Reload the broker (SIGHUP) for new connections to be refused; restart it to also drop a
    connection already open."""
    try:
        serial = revoke_client_certificate(directory, name)
    except BrokerError as error:
        fail(error)
    typer.echo(f"{name}: certificate {serial:x} revoked in {directory / 'crl.pem'}")


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
