"""What the two private brokers (Mosquitto in ``dev``, amqtt in ``embedded``) share: a child
process on a loopback port, the accounts provisioned on it, and its lifecycle."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from typing import ClassVar, TypeVar

from broker.errors import BrokerError
from configs.broker import BrokerConnection

B = TypeVar("B", bound="BrokerProcess")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class BrokerProcess(ABC):
    """A private broker: ``start``, ``stop``, ``kill`` (a power cut), ``restart``;
    ``provision`` accounts (passwords kept in ``credentials.json``, mode 0600)."""

    kind: ClassVar[str]

    def __init__(self, directory: Path, *, port: int = 0, prefix: str = "fedmq") -> None:
        self.directory = directory.resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.prefix = prefix
        self.credentials_file = self.directory / "credentials.json"
        self._process: subprocess.Popen[bytes] | None = None

    # --- accounts ------------------------------------------------------------------------

    def credentials(self) -> dict[str, str]:
        if not self.credentials_file.exists():
            return {}
        stored: dict[str, str] = json.loads(self.credentials_file.read_text())
        return stored

    def _remember(self, known: dict[str, str]) -> None:
        temporary = self.credentials_file.with_name(f".{self.credentials_file.name}.tmp")
        temporary.write_text(json.dumps(known, indent=2))
        os.chmod(temporary, 0o600)
        os.replace(temporary, self.credentials_file)

    @abstractmethod
    def provision(self, name: str) -> str:
        """Create (or keep) an account; returns its password, effective at once."""

    def connection(self, name: str) -> BrokerConnection:
        return BrokerConnection(
            host="127.0.0.1", port=self.port, username=name, password=self.provision(name)
        )

    # --- lifecycle -----------------------------------------------------------------------

    @abstractmethod
    def _launch(self) -> subprocess.Popen[bytes]:
        """Start the child process."""

    @abstractmethod
    def _listening(self) -> bool:
        """Whether the started child accepts connections yet."""

    @abstractmethod
    def _log_tail(self, lines: int = 8) -> str:
        """The end of the broker's log, for error messages."""

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        self._process = process = self._launch()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise BrokerError(
                    f"{self.kind} exited with {process.returncode}: {self._log_tail()}"
                )
            if self._listening():
                return
            time.sleep(0.05)
        self.stop()
        raise BrokerError(
            f"{self.kind} did not listen on port {self.port} in {timeout} s: {self._log_tail()}"
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

    def kill(self) -> None:
        """Stop abruptly (SIGKILL), as a power cut would."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def restart(self, timeout: float = 10.0) -> None:
        self.stop()
        self.start(timeout)

    def __enter__(self: B) -> B:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()
