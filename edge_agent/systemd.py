"""sd_notify with the standard library: tell systemd (``Type=notify``) that the agent is
ready, what it is doing, that its event loop is alive (watchdog), and that it is stopping.

Outside systemd (no ``NOTIFY_SOCKET``) every call is a no-op. A leading ``@`` in the socket
path means the abstract namespace (a NUL byte)."""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("fedmq.agent.systemd")


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        self.watchdog_seconds = int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 else None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def notify(self, *fields: str) -> bool:
        """Send ``KEY=value`` lines in one datagram; False (logged) if it could not be sent."""
        if not self.address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as error:
            log.warning("sd_notify to %r failed: %s", self.address, error)
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.notify("READY=1", f"STATUS={status}")

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1", "STATUS=stopping")
