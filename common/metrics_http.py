"""Serving a private Prometheus registry over HTTP, for the coordinator and the agents."""

from __future__ import annotations

import logging
import threading
from typing import ClassVar
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    disable_created_metrics,
    generate_latest,
    start_http_server,
)

# The text format would repeat every counter and histogram as a "_created" gauge: noise here.
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus_client

STOP_SECONDS = 5.0
log = logging.getLogger("fedmq.metrics")


class ListenError(RuntimeError):
    """The endpoint cannot serve (port taken, address unknown, already serving); the
    message names the address. Callers convert it to their package's error."""


class MetricsEndpoint:
    """``/metrics`` for one registry on a background thread; ``stop`` releases the port."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self, host: str, port: int | None) -> int | None:
        """Serve ``/metrics`` on ``host:port`` (0: a free port; None: off); the bound port.
        ListenError when it cannot."""
        if port is None:
            return None
        if self._server is not None:
            raise ListenError("the metrics endpoint is already running")
        try:
            self._server, self._thread = start_http_server(port, host, registry=self.registry)
        except OSError as error:
            raise ListenError(
                f"metrics endpoint: cannot listen on {host}:{port} ({error.strerror or error})"
            ) from error
        bound = int(self._server.server_port)
        log.info("metrics on http://%s:%d/metrics", host, bound)
        return bound

    def stop(self) -> None:
        """Stop serving and release the port (idempotent)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()  # shutdown() alone keeps the socket bound
        if thread is not None:
            thread.join(STOP_SECONDS)


class ServedMetrics:
    """What the coordinator's and an agent's metrics share: a private registry, its text
    rendering and its endpoint, whose failures become the package's own ``error``."""

    error: ClassVar[type[Exception]] = RuntimeError

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.endpoint = MetricsEndpoint(registry)

    def render(self) -> bytes:
        """The text exposition format, as the endpoint serves it."""
        return generate_latest(self.registry)

    def start_http(self, host: str, port: int | None) -> int | None:
        """Serve ``/metrics`` on ``host:port`` (0: a free port; None: off); the bound port."""
        try:
            return self.endpoint.start(host, port)
        except ListenError as error:
            raise self.error(str(error)) from error

    def stop_http(self) -> None:
        """Stop serving and release the port (idempotent)."""
        self.endpoint.stop()
