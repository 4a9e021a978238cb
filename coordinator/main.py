"""Start the coordinator service from settings: task, resume from its state, signals."""

from __future__ import annotations

import asyncio
import logging
import signal

from common.files import lock_directory
from configs.coordinator import CoordinatorSettings
from coordinator import state
from coordinator.errors import CoordinatorError, StateError
from coordinator.evaluation import Evaluator
from coordinator.service import Coordinator
from coordinator.strategies import GlobalModel

log = logging.getLogger("fedmq.coordinator")


EXIT_STATE = 2  # unusable state: the operator decides (systemd does not restart on it)


async def serve(settings: CoordinatorSettings) -> int:
    stopping = asyncio.Event()  # SIGTERM during start-up (TensorFlow import) stops cleanly too
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        lock = lock_directory(settings.state_dir)  # held until the process exits
    except OSError as error:
        log.error(
            "state_dir %s is in use by another coordinator (or unusable: %s)",
            settings.state_dir,
            error.strerror or error,
        )
        return EXIT_STATE
    evaluator = await asyncio.to_thread(Evaluator, settings.task, settings.seed)
    if stopping.is_set():
        return 0
    weights = evaluator.initial_weights()
    try:
        resume = await asyncio.to_thread(
            state.load, settings.state_dir, {n: v.shape for n, v in weights.items()}
        )
        coordinator = Coordinator(
            settings,
            GlobalModel(0, weights),
            evaluate=evaluator.accuracy,
            stop_event=stopping,
            resume=resume,
        )
    except StateError as error:
        log.error("cannot resume: %s", error)
        return EXIT_STATE
    try:
        coordinator.metrics.start_http(settings.metrics.host, settings.metrics.port)
    except CoordinatorError as error:
        log.error("cannot start: %s", error)
        return 1
    try:
        return await coordinator.run()
    except StateError as error:
        log.error("cannot continue: %s", error)
        return 1
    finally:
        await asyncio.to_thread(coordinator.metrics.stop_http)  # waits for a poll interval
        lock.close()


def run(settings: CoordinatorSettings) -> int:
    return asyncio.run(serve(settings))
