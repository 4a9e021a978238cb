"""A private development broker: Mosquitto on a free loopback port, configured exactly like
production (no anonymous access, password file, fedmq's pattern ACL, limits, persistence),
with its files in a directory of its own. The local federation and the tests run on it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from broker.config import COORDINATOR, MONITOR, render_acl, render_mosquitto_conf
from broker.errors import BrokerError
from broker.provision import provision_account
from configs.broker import BrokerConnection, MosquittoSettings

if TYPE_CHECKING:
    from broker.embedded import EmbeddedBroker


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.path.exists(p)),
        None,
    )


class DevBroker:
    """Start, stop and restart a private Mosquitto; provision accounts on it."""

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
        self.binary = binary
        self.directory = directory.resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.prefix = prefix
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
        self.credentials_file = self.directory / "credentials.json"
        self._process: subprocess.Popen[bytes] | None = None
        self._write_files()

    # --- accounts ------------------------------------------------------------------------

    def credentials(self) -> dict[str, str]:
        if not self.credentials_file.exists():
            return {}
        stored: dict[str, str] = json.loads(self.credentials_file.read_text())
        return stored

    def provision(self, name: str) -> str:
        """Create (or keep) an account; returns its password. Takes effect on a running
        broker at once (SIGHUP reloads the password file)."""
        known = self.credentials()
        password = known.get(name)
        created = provision_account(Path(self.settings.password_file), name, password=password)
        if created is not None:
            known[name] = created
            self.credentials_file.write_text(json.dumps(known, indent=2))
            os.chmod(self.credentials_file, 0o600)
            self._reload()
        return known[name]

    def connection(self, name: str) -> BrokerConnection:
        return BrokerConnection(
            host="127.0.0.1", port=self.port, username=name, password=self.provision(name)
        )

    # --- lifecycle -----------------------------------------------------------------------

    def _write_files(self) -> None:
        (self.directory / "acl").write_text(render_acl(self.prefix))
        (self.directory / "mosquitto.conf").write_text(render_mosquitto_conf(self.settings))
        if self.settings.persistence_location:
            Path(self.settings.persistence_location).mkdir(exist_ok=True)
        for account in (COORDINATOR, MONITOR):
            self.provision(account)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        self._process = subprocess.Popen(
            [self.binary, "-c", str(self.directory / "mosquitto.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BrokerError(
                    f"mosquitto exited with {self._process.returncode}: {self._log_tail()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise BrokerError(
            f"mosquitto did not listen on port {self.port} in {timeout} s: {self._log_tail()}"
        )

    def stop(self, timeout: float = 5.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
        if process.stderr is not None:
            process.stderr.close()

    def kill(self) -> None:
        """Stop abruptly (SIGKILL), as a power cut would."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def restart(self, timeout: float = 10.0) -> None:
        self.stop()
        self.start(timeout)

    def _reload(self) -> None:
        if self.running:
            assert self._process is not None
            self._process.send_signal(signal.SIGHUP)

    def _log_tail(self, lines: int = 8) -> str:
        log = self.directory / "mosquitto.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        if (
            self._process is not None
            and self._process.stderr is not None
            and self._process.poll() is not None
        ):
            text += self._process.stderr.read().decode(errors="replace")
        return " | ".join(text.strip().splitlines()[-lines:]) or "(no log)"

    def __enter__(self) -> DevBroker:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()


def local_broker(directory: Path, **options: Any) -> DevBroker | EmbeddedBroker:
    """The local run's broker: Mosquitto when it is installed, else the embedded amqtt
    broker (same accounts and ACL), so a pip-only machine can still run a federation."""
    if mosquitto_binary() is not None:
        return DevBroker(directory, **options)
    from broker.embedded import EmbeddedBroker

    return EmbeddedBroker(directory, **options)
