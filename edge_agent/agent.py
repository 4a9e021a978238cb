"""The edge agent service.

Tasks: the connection loop (last will ``offline``, persistent session, reconnects with
backoff and jitter, renews subscriptions), the training loop (waits for a model and a ``run``
control, trains in a worker thread, compresses with error feedback, publishes with QoS 1),
and the heartbeat (retained status). SIGTERM: publish ``offline``, disconnect, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

import aiomqtt
import numpy as np

from codec import CodecError, DecodeLimits, decode_model, encode_tensors, encode_update
from common.errors import ProtocolError, TaskError
from common.files import lock_directory
from common.messages import (
    AgentState,
    AgentStatus,
    Control,
    CoordinatorState,
    CoordinatorStatus,
    Mode,
    RunState,
    parse,
)
from common.mqtt import Ack, Session, client_options
from common.tasks.data import Dataset, DigitsFederation, load_npz
from common.tasks.models import Weights
from common.topics import Topics
from configs.agent import AgentSettings
from configs.task import DigitsData
from edge_agent.errors import AgentError
from edge_agent.feedback import ErrorFeedback
from edge_agent.jetson import JetsonTelemetry
from edge_agent.laq import LazyUploader, squared_norm
from edge_agent.metrics import AgentMetrics
from edge_agent.outbox import Outbox, load_residual, save_residual
from edge_agent.systemd import Notifier
from edge_agent.thermal import ThermalGate
from edge_agent.trainer import Trainer

log = logging.getLogger("fedmq.agent")

SHUTDOWN_SECONDS = 5.0
EXIT_SETUP = 2  # the local data, the task or the metrics port is unusable
THERMAL_RECHECK_SECONDS = 5.0


def load_data(settings: AgentSettings) -> Dataset:
    data = settings.task.data
    if isinstance(data, DigitsData):
        return DigitsFederation(data.num_agents, data.alpha, data.seed, data.test_fraction).shard(
            data.shard
        )
    return load_npz(data.path)


def all_finite(weights: Weights) -> bool:
    return all(bool(np.isfinite(value).all()) for value in weights.values())


@dataclass
class ReceivedModel:
    version: int
    weights: Weights


class Agent:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.topics = Topics(settings.topic_prefix, settings.job)
        self.stop_event = asyncio.Event()
        self.status = AgentStatus(agent=settings.agent_id, state=AgentState.ONLINE)
        self.model: ReceivedModel | None = None
        self.control: Control | None = None
        self.trainer: Trainer | None = None
        self.feedback = ErrorFeedback()
        self.lazy = LazyUploader()
        self._changed = asyncio.Event()
        # a Jetson on a thin uplink: publish timeouts assume 100 kB/s
        self.session = Session(
            self._new_client,
            [self.topics.model, self.topics.control, self.topics.coordinator_status],
            on_message=self._route,
            on_connect=self._publish_status,
            stop=self.stop_event,
            log=log,
            bytes_per_second=1e5,
        )
        self._last_trained_base: int | None = None
        self._diverged_on: int | None = None  # a base version whose training blew up
        self._coordinator_away = False

        self._limits = DecodeLimits()
        self._expected_shapes: dict[str, tuple[int, ...]] = {}
        self.notifier = Notifier()  # systemd (Type=notify); a no-op elsewhere
        self.thermal = ThermalGate(
            settings.thermal_root,
            settings.defer_training_above_c,
            settings.resume_training_below_c,
            frozenset(settings.ignore_thermal_zones),
        )
        self._ready_sent = False
        self.outbox = Outbox(settings.state_dir, settings.outbox_max)
        self._outbox_changed = asyncio.Event()
        self._drained = asyncio.Event()
        self.jetson = JetsonTelemetry(settings.sysfs_root)
        self.metrics = AgentMetrics(settings.agent_id, settings.job, lambda: self.status)

    # --- lifecycle ----------------------------------------------------------------------

    async def run(self) -> int:
        try:
            try:
                self._lock = lock_directory(self.settings.state_dir)  # until the process exits
            except OSError as error:
                raise AgentError(
                    f"state_dir {self.settings.state_dir} is in use by another agent "
                    f"(or unusable: {error.strerror or error})"
                ) from error
            data = await asyncio.to_thread(load_data, self.settings)
            seed = self.settings.seed if self.settings.seed is not None else secrets.randbits(31)
            self.trainer = await asyncio.to_thread(
                Trainer, self.settings.task, data, self.settings.threads, seed
            )
            self.metrics.start_http(self.settings.metrics_host, self.settings.metrics_port)
        except (TaskError, AgentError) as error:
            log.error("cannot start: %s", error)
            self._set_status(AgentState.ERROR, error=str(error))
            await self._report_once()
            # exit 2, like a config error: the data or the task must be fixed by a person,
            # and systemd does not restart on it (no loop of TensorFlow start-ups)
            return EXIT_SETUP
        self._expected_shapes = {n: v.shape for n, v in self.trainer.weights().items()}
        self.feedback.residual = await asyncio.to_thread(
            load_residual, self.settings.state_dir, self._expected_shapes
        )
        pending = len(self.outbox.pending())
        log.info(
            "%s ready: %d samples; %d updates in the outbox%s",
            self.settings.agent_id,
            data.size,
            pending,
            ", error-feedback residual restored" if self.feedback.residual else "",
        )
        tasks = [
            asyncio.create_task(self.session.run(), name="connection"),
            asyncio.create_task(self._uploader(), name="uploader"),
            asyncio.create_task(self._training_loop(), name="training"),
            asyncio.create_task(self._heartbeat(), name="heartbeat"),
        ]
        if self.notifier.watchdog_seconds is not None:
            tasks.append(asyncio.create_task(self._watchdog(), name="watchdog"))
        stopper = asyncio.create_task(self.stop_event.wait())
        done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
        code = 0
        for task in done:
            if task is not stopper and task.exception() is not None:
                log.error("task %s failed", task.get_name(), exc_info=task.exception())
                code = 1
        await self._shutdown(tasks)
        stopper.cancel()
        return code

    async def _watchdog(self) -> None:
        """Pings at half systemd's interval; it runs only while the event loop does, so a
        stalled loop gets the service restarted."""
        assert self.notifier.watchdog_seconds is not None
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(self.notifier.watchdog_seconds / 2)

    async def _shutdown(self, tasks: list[asyncio.Task[None]]) -> None:
        self.notifier.stopping()
        if self.trainer is not None:
            self.trainer.cancel()  # a fit in its thread stops after the current batch
        for task in tasks:
            if task.get_name() != "connection":
                task.cancel()
        self._set_status(AgentState.OFFLINE)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._publish_status(), SHUTDOWN_SECONDS)
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=SHUTDOWN_SECONDS)
        await asyncio.to_thread(self.metrics.stop_http)

    async def _report_once(self) -> None:
        """Connect just long enough to publish the status (a start-up error)."""
        with contextlib.suppress(aiomqtt.MqttError, asyncio.TimeoutError):
            async with self._new_client() as client:
                await client.publish(
                    self.topics.agent_status(self.settings.agent_id),
                    self.status.to_json(),
                    qos=1,
                    retain=True,
                    timeout=10,
                )

    # --- connection ---------------------------------------------------------------------

    def _new_client(self) -> aiomqtt.Client:
        broker = self.settings.broker
        offline = AgentStatus(agent=self.settings.agent_id, state=AgentState.OFFLINE)
        return aiomqtt.Client(
            **client_options(broker, username=self.settings.agent_id),
            identifier=f"fedmq-agent-{self.settings.job}-{self.settings.agent_id}",
            clean_session=False,
            keepalive=broker.keepalive,
            timeout=broker.connect_timeout,
            will=aiomqtt.Will(
                self.topics.agent_status(self.settings.agent_id),
                offline.to_json(),
                qos=1,
                retain=True,
            ),
            protocol=aiomqtt.ProtocolVersion.V311,
        )

    async def _publish(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        return await self.session.publish(topic, payload, retain=retain)

    async def _route(self, topic: str, payload: bytes, ack: Ack) -> None:

        if topic == self.topics.control:
            try:
                self.control = parse(Control, payload)
            except ProtocolError as error:
                log.error("ignoring invalid control message: %s", error)
                return
            self.feedback.enabled = self.control.training.error_feedback
            if self.control.state == RunState.STOP:
                log.info("control says stop: leaving")
                self.stop_event.set()
            self._changed.set()
        elif topic == self.topics.model:
            await self._on_model(payload)
        elif topic == self.topics.coordinator_status:
            self._on_coordinator_status(payload)

    def _on_coordinator_status(self, payload: bytes) -> None:
        """While the coordinator is gone (its last will says ``stopped``), an update could
        only queue at the broker and come back stale: a device saves its energy instead."""
        try:
            away = parse(CoordinatorStatus, payload).state == CoordinatorState.STOPPED
        except ProtocolError:
            return  # another field's problem must not stop training; its own job to report
        if away != self._coordinator_away:
            log.info("coordinator %s", "away: training waits" if away else "back")
            self._coordinator_away = away
            self._changed.set()

    def _decode_model(self, payload: bytes) -> ReceivedModel:
        """Worker thread: decode and check a received model (AgentError if unusable)."""
        try:
            model = decode_model(payload, limits=self._limits)
        except CodecError as error:
            raise AgentError(f"invalid model: {error}") from error
        weights = {t.name: t.decode() for t in model.tensors}
        if {name: value.shape for name, value in weights.items()} != self._expected_shapes:
            raise AgentError(f"model version {model.version} does not match the local task")
        return ReceivedModel(model.version, weights)

    async def _on_model(self, payload: bytes) -> None:
        try:
            received = await asyncio.to_thread(self._decode_model, payload)
        except AgentError as error:
            log.error("ignoring the model: %s", error)
            self._set_status(AgentState.ERROR, error=str(error))
            await self._publish_status()
            return
        if self.model is not None and received.version <= self.model.version:
            return
        self.model = received
        await asyncio.to_thread(self.lazy.observe_model, received.weights)
        self._changed.set()
        if not self._ready_sent:  # connected, and a model is loaded
            self._ready_sent = self.notifier.ready(f"model version {received.version}")

    # --- training -----------------------------------------------------------------------

    def _ready_to_train(self) -> bool:
        control, model = self.control, self.model
        if control is None or model is None or control.state != RunState.RUN:
            return False
        if self._diverged_on is not None and model.version <= self._diverged_on:
            return False
        if self._coordinator_away:
            return False
        if control.mode == Mode.SYNC:
            return self._last_trained_base is None or model.version > self._last_trained_base
        return True

    async def _training_loop(self) -> None:
        while not self.stop_event.is_set():
            if not self._ready_to_train():
                if self._coordinator_away and self.status.deferred is None:
                    self._set_status(AgentState.IDLE, deferred="coordinator away")
                    await self._publish_status()
                self._changed.clear()
                await self._changed.wait()
                continue

            if not await asyncio.to_thread(self.thermal.may_train):
                self._set_status(AgentState.IDLE, deferred="too hot")
                await self._publish_status()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.stop_event.wait(), THERMAL_RECHECK_SECONDS)
                continue
            assert self.model is not None and self.control is not None and self.trainer is not None
            base, settings = self.model, self.control.training
            self._set_status(AgentState.TRAINING, base_version=base.version)
            await self._publish_status()
            result = await asyncio.to_thread(self.trainer.train, base.weights, settings)
            self.metrics.trained(result.seconds)
            if self.settings.slowdown > 1:
                await asyncio.sleep((self.settings.slowdown - 1) * result.seconds)
            self._last_trained_base = base.version
            if not await asyncio.to_thread(all_finite, result.weights):
                # never publish garbage: wait for another model rather than diverge again
                self._diverged_on = base.version
                reason = f"training from version {base.version} diverged (NaN or Inf weights)"
                log.error("%s: update not sent; waiting for a new model", reason)
                self._set_status(AgentState.ERROR, error=reason)
                await self._publish_status()
                continue
            payload = await asyncio.to_thread(self._compress, base, result.weights, result.loss)
            await asyncio.to_thread(save_residual, self.settings.state_dir, self.feedback.residual)
            if payload is None:
                self.status = self.status.model_copy(
                    update={"uploads_skipped": self.status.uploads_skipped + 1}
                )
                self._set_status(AgentState.IDLE)
                await self._publish_status()
                continue
            update_id, data = payload
            self._drained.clear()
            await asyncio.to_thread(self.outbox.put, update_id, data)
            self._outbox_changed.set()
            await self._drained.wait()  # the next round starts once this one is delivered

    def _compress(
        self, base: ReceivedModel, trained: Weights, loss: float
    ) -> tuple[str, bytes] | None:
        """Worker thread: delta, error feedback, quantize, lazy-upload rule, envelope."""
        assert self.control is not None and self.trainer is not None
        settings = self.control.training
        delta = {name: trained[name] - base.weights[name] for name in base.weights}
        corrected = self.feedback.corrected(delta)
        encoded = encode_tensors(corrected, settings.codec)
        sent = {t.name: t.decode() for t in encoded}
        error = squared_norm({n: sent[n] - corrected[n] for n in sent})
        if not self.lazy.should_upload(settings.lazy_upload, sent, error):
            self.feedback.record(corrected, None)
            return None
        self.feedback.record(corrected, sent)
        update_id = secrets.token_hex(16)
        payload = encode_update(
            encoded,
            job_id=self.settings.job,
            sender_id=self.settings.agent_id,
            base_version=base.version,
            num_samples=self.trainer.data.size,
            metrics={"loss": loss if np.isfinite(loss) else 0.0},
            update_id=update_id,
        )
        return update_id, payload

    async def _uploader(self) -> None:
        """Publish the outbox oldest first with QoS 1, waiting for the broker while it is
        away; an update leaves the outbox only when the broker has acknowledged it."""
        topic = self.topics.update(self.settings.agent_id)
        while True:
            pending = await asyncio.to_thread(self.outbox.pending)
            if not pending:
                self._drained.set()
                self._outbox_changed.clear()
                await self._outbox_changed.wait()
                continue
            await self.session.connected.wait()
            item = pending[0]
            try:
                payload = await asyncio.to_thread(item.read)
            except FileNotFoundError:
                continue  # dropped meanwhile (outbox full)
            if not await self._publish(topic, payload):
                await asyncio.sleep(0.5)
                continue
            await asyncio.to_thread(self.outbox.delivered, item, len(payload))
            self.status = self.status.model_copy(
                update={
                    "updates_sent": self.status.updates_sent + 1,
                    "uplink_bytes": self.status.uplink_bytes + len(payload),
                    "last_update": item.update_id,
                    "last_update_at": time.time(),
                }
            )
            if self.status.state != AgentState.TRAINING:
                self._set_status(AgentState.IDLE)
            await self._publish_status()

    # --- status -------------------------------------------------------------------------

    def _set_status(self, state: AgentState, **changes: Any) -> None:
        if state != AgentState.ERROR:
            changes.setdefault("error", None)  # an old error does not outlive its state
        changes.setdefault("deferred", None)

        self.status = self.status.model_copy(
            update={"state": state, "heartbeat": time.time(), **changes}
        )

    async def _publish_status(self) -> None:
        hottest = await asyncio.to_thread(self.thermal.hottest)
        device = await asyncio.to_thread(self.jetson.read)
        self.status = self.status.model_copy(
            update={"temperature_c": hottest, **device.status_fields()}
        )

        base = self.status.base_version
        self.notifier.status(
            f"{self.status.state.value}"
            + (f", model v{base}" if base is not None else "")
            + f", {self.status.updates_sent} updates sent"
        )

        self.status = self.status.model_copy(update={"heartbeat": time.time()})
        await self._publish(
            self.topics.agent_status(self.settings.agent_id), self.status.to_json(), retain=True
        )

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_seconds)
            await self._publish_status()
