"""A private development broker: Mosquitto on a free loopback port, configured exactly like
production (no anonymous access, password file, fedmq's pattern ACL, limits, persistence),
with its files in a directory of its own. The local federation and the tests run on it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from broker.config import COORDINATOR, MONITOR, OPERATOR, render_acl, render_mosquitto_conf
from broker.errors import BrokerError
from broker.process import BrokerProcess
from broker.provision import provision_account
from configs.broker import MosquittoSettings

if TYPE_CHECKING:
    from broker.embedded import EmbeddedBroker


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.path.exists(p)),
        None,
    )


class DevBroker(BrokerProcess):
    """A private Mosquitto; provision accounts on it."""

    kind = "mosquitto"

    def __init__(
        self,
        directory: Path,
        *,
        port: int = 0,
        prefix: str = "fedmq",
        persistence: bool = True,
        max_packet_size: int = 64 * 1024 * 1024,
    ) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise BrokerError("mosquitto is not installed (apt-get install mosquitto)")
        super().__init__(directory, port=port, prefix=prefix)
        self.binary = binary
        self.settings = MosquittoSettings(
            port=self.port,
            bind_address="127.0.0.1",
            password_file=str(self.directory / "passwd"),
            acl_file=str(self.directory / "acl"),
            persistence_location=f"{self.directory / 'data'}/" if persistence else None,
            autosave_interval=1,
            max_packet_size=max_packet_size,
            log_dest=f"file {self.directory / 'mosquitto.log'}",
            run_as_root=os.geteuid() == 0,
        )
        self._write_files()

    # --- accounts ------------------------------------------------------------------------

    def provision(self, name: str) -> str:
        """Create (or keep) an account; returns its password. Takes effect on a running
        broker at once (SIGHUP reloads the password file)."""
        known = self.credentials()
        password = known.get(name)
        created = provision_account(Path(self.settings.password_file), name, password=password)
        if created is not None:
            known[name] = created
            self._remember(known)
            self._reload()
        return known[name]

    # --- lifecycle -----------------------------------------------------------------------

    def _write_files(self) -> None:
        (self.directory / "acl").write_text(render_acl(self.prefix))
        (self.directory / "mosquitto.conf").write_text(render_mosquitto_conf(self.settings))
        if self.settings.persistence_location:
            Path(self.settings.persistence_location).mkdir(exist_ok=True)
        for account in (COORDINATOR, MONITOR, OPERATOR):
            self.provision(account)

    def _launch(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [self.binary, "-c", str(self.directory / "mosquitto.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,  # it logs to mosquitto.log in its directory
            start_new_session=True,
        )

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def _reload(self) -> None:
        if self.running:
            assert self._process is not None
            self._process.send_signal(signal.SIGHUP)

    def _log_tail(self, lines: int = 8) -> str:
        log = self.directory / "mosquitto.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        return " | ".join(text.strip().splitlines()[-lines:]) or "(no log)"


def local_broker(directory: Path, **options: Any) -> DevBroker | EmbeddedBroker:
    """The local run's broker: Mosquitto when it is installed, else the embedded amqtt
    broker (same accounts and ACL), so a pip-only machine can still run a federation."""
    if mosquitto_binary() is not None:
        return DevBroker(directory, **options)
    from broker.embedded import EmbeddedBroker

    return EmbeddedBroker(directory, **options)
