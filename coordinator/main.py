"""Start the coordinator service from settings: task, resume from checkpoint, signals."""

from __future__ import annotations

import asyncio
import logging
import signal

from configs.coordinator import CoordinatorSettings
from coordinator import checkpoint
from coordinator.errors import CoordinatorError
from coordinator.evaluation import Evaluator
from coordinator.service import Coordinator
from coordinator.strategies import GlobalModel

log = logging.getLogger("fedmq.coordinator")


def initial_model(settings: CoordinatorSettings, evaluator: Evaluator) -> GlobalModel:
    weights = evaluator.initial_weights()
    resumed = checkpoint.load_latest(settings.state_dir, list(weights))
    if resumed is not None:
        model, _ = resumed
        log.info("resumed from checkpoint version %d in %s", model.version, settings.state_dir)
        return model
    return GlobalModel(0, weights)


async def serve(settings: CoordinatorSettings) -> int:
    stopping = asyncio.Event()  # SIGTERM during start-up (TensorFlow import) stops cleanly too
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    evaluator = await asyncio.to_thread(Evaluator, settings.task, settings.seed)
    if stopping.is_set():
        return 0
    model = initial_model(settings, evaluator)
    coordinator = Coordinator(settings, model, evaluate=evaluator.accuracy, stop_event=stopping)
    try:
        coordinator.metrics.start_http(settings.metrics.host, settings.metrics.port)
    except CoordinatorError as error:
        log.error("cannot start: %s", error)
        return 1
    try:
        return await coordinator.run()
    finally:
        await asyncio.to_thread(coordinator.metrics.stop_http)  # waits for a poll interval


def run(settings: CoordinatorSettings) -> int:
    return asyncio.run(serve(settings))
