"""Serving a private Prometheus registry over HTTP, for the coordinator and the agents."""

from __future__ import annotations

import logging
import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, disable_created_metrics, start_http_server

# The text format would repeat every counter and histogram as a "_created" gauge: noise here.
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus_client

STOP_SECONDS = 5.0
log = logging.getLogger("fedmq.metrics")


class MetricsEndpoint:
    """``/metrics`` for one registry on a background thread; ``stop`` releases the port."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self, host: str, port: int | None) -> int | None:
        """Serve on ``host:port`` (0: a free port; None: off); the bound port. OSError
        (port taken, address unknown) and RuntimeError (already serving) for the caller
        to convert."""
        if port is None:
            return None
        if self._server is not None:
            raise RuntimeError("the metrics endpoint is already running")
        self._server, self._thread = start_http_server(port, host, registry=self.registry)
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
