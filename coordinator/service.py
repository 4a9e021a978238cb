"""The coordinator service: MQTT in, strategy in a worker thread, new versions out.

Tasks (one per concern): the connection loop (reconnects with backoff and jitter, renews
subscriptions, republishes retained state), the update worker (decode, validate and
aggregate off the event loop, one update at a time: the strategy is not thread-safe), the
heartbeat (coordinator status), and the ticker (deadlines of synchronous rounds).
SIGTERM sets the stop event; shutdown publishes a final status and is bounded in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiomqtt

from broker.config import RESERVED_ACCOUNTS
from codec import CodecError, DecodeLimits, decode_update, encode_model
from common.errors import ProtocolError
from common.messages import (
    AgentState,
    AgentStatus,
    Control,
    CoordinatorState,
    CoordinatorStatus,
    Event,
    EventType,
    RunState,
    parse,
)
from common.mqtt import Session
from common.topics import Topics
from configs.coordinator import CoordinatorSettings
from coordinator import checkpoint
from coordinator.metrics import CoordinatorMetrics
from coordinator.strategies import GlobalModel, Outcome, Strategy, make_strategy
from coordinator.validation import Rejected, validate

log = logging.getLogger("fedmq.coordinator")

QUEUE_SIZE = 256
SHUTDOWN_SECONDS = 5.0


@dataclass
class Counters:
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    uplink_bytes: int = 0

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


@dataclass
class Handled:
    """What the worker thread decided about one update, for the loop to publish."""

    events: list[Event]
    new_version: bool = False


class RecentIds:
    """A bounded window of update ids: a redelivered or replayed update is applied once."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, update_id: str) -> bool:
        return update_id in self._ids

    def add(self, update_id: str) -> None:
        self._ids[update_id] = None
        while len(self._ids) > self._size:
            self._ids.popitem(last=False)


class Coordinator:
    def __init__(
        self,
        settings: CoordinatorSettings,
        initial: GlobalModel,
        evaluate: Callable[[dict[str, Any]], float | None] | None = None,
        stop_event: asyncio.Event | None = None,
    ) -> None:
        self.settings = settings
        self.topics = Topics(settings.topic_prefix, settings.job)
        self.strategy: Strategy = make_strategy(settings.strategy, initial)
        self.evaluate = evaluate
        self.control = Control(mode=settings.effective_mode, training=settings.training)
        self.state = CoordinatorState.STARTING
        self.counters = Counters()
        self.metrics = CoordinatorMetrics(settings.job, self.strategy.name)
        self.recent = RecentIds(settings.duplicate_window)
        self.agents: dict[str, AgentStatus] = {}
        self.last_accuracy: float | None = None
        self.started_at = time.time()
        # an update can never hold more elements than the model: refused before allocating
        self.limits = DecodeLimits(
            max_payload_bytes=settings.max_update_bytes,
            max_total_elements=max(1, sum(v.size for v in initial.weights.values())),
            max_tensors=max(1, len(initial.weights)),
        )

        self.stop_event = stop_event or asyncio.Event()

        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(QUEUE_SIZE)
        self.session = Session(
            self._client_for,
            [self.topics.all_updates, self.topics.all_agent_statuses],
            on_message=self._route,
            on_connect=self._publish_retained_state,
            stop=self.stop_event,
            log=log,
            bytes_per_second=1e6,
        )
        self._model_payload: bytes | None = None
        self._pending_events: deque[Event] = deque(maxlen=1000)
        self.published_version = initial.version
        # The strategy is touched from worker threads (updates, deadline ticks): one at a
        # time, and never while a new version is being snapshotted.
        self._strategy_lock = asyncio.Lock()

    # --- public -------------------------------------------------------------------------

    @property
    def version(self) -> int:
        """The last version published (the strategy may be one ahead while it publishes)."""
        return self.published_version

    async def run(self) -> int:
        """Serve until stopped (SIGTERM, stop rule, or ``stop_event``); exit code 0."""
        self.state = CoordinatorState.RUNNING
        await self._new_version_published()
        tasks = [
            asyncio.create_task(self.session.run(), name="connection"),
            asyncio.create_task(self._worker(), name="worker"),
            asyncio.create_task(self._heartbeat(), name="heartbeat"),
            asyncio.create_task(self._ticker(), name="ticker"),
        ]
        stopper = asyncio.create_task(self.stop_event.wait())
        done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
        code = 0
        for task in done:
            if task is not stopper and task.exception() is not None:
                log.error("task %s failed", task.get_name(), exc_info=task.exception())
                code = 1  # a runtime failure: systemd restarts on it, a config error it does not
        await self._shutdown(tasks)
        stopper.cancel()
        return code

    # --- connection ---------------------------------------------------------------------

    def _client_for(self) -> aiomqtt.Client:
        broker = self.settings.broker
        offline = self._status(CoordinatorState.STOPPED)  # the last will: we vanished
        return aiomqtt.Client(
            hostname=broker.host,
            port=broker.port,
            username=broker.username,
            password=broker.password.get_secret_value() if broker.password else None,
            identifier=f"fedmq-coordinator-{self.settings.job}",
            clean_session=False,  # queued QoS 1 updates wait for us across reconnects
            keepalive=broker.keepalive,
            timeout=broker.connect_timeout,
            will=aiomqtt.Will(
                self.topics.coordinator_status, offline.to_json(), qos=1, retain=True
            ),
            protocol=aiomqtt.ProtocolVersion.V311,
        )

    async def _publish(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        return await self.session.publish(topic, payload, retain=retain)

    async def _publish_retained_state(self) -> None:
        await self._publish(self.topics.control, self.control.to_json(), retain=True)
        if self._model_payload is not None:
            await self._publish(self.topics.model, self._model_payload, retain=True)
        await self._publish_status()
        while self._pending_events:
            if not await self._publish(self.topics.events, self._pending_events[0].to_json()):
                break
            self._pending_events.popleft()

    async def _emit(self, event: Event) -> None:
        if not await self._publish(self.topics.events, event.to_json()):
            self._pending_events.append(event)

    # --- incoming -----------------------------------------------------------------------

    async def _route(self, topic: str, payload: bytes) -> None:
        agent = self.topics.agent_of_update(topic)
        if agent is not None:
            # Bounded: when full, reading stops (aiomqtt's own queue then grows; per-agent
            # limits are issue 4). Never a silent drop.
            await self._queue.put((agent, payload))

            return
        agent = self.topics.agent_of_status(topic)
        if agent is not None and agent not in RESERVED_ACCOUNTS:
            await self._on_agent_status(agent, payload)

    async def _on_agent_status(self, agent: str, payload: bytes) -> None:
        if not payload:
            return
        try:
            status = parse(AgentStatus, payload)
        except ProtocolError as error:
            log.info("ignoring malformed status of %s: %s", agent, error)
            return
        previous = self.agents.get(agent)
        self.agents[agent] = status
        was_online = previous is not None and previous.state != AgentState.OFFLINE
        is_online = status.state != AgentState.OFFLINE
        if is_online != was_online:
            async with self._strategy_lock:
                self.strategy.agents_online_changed(self.agents_online)
            self.metrics.agents_online(self.agents_online)
        if is_online and not was_online:
            await self._emit(Event(type=EventType.AGENT_JOINED, agent=agent))
        elif was_online and not is_online:
            await self._emit(Event(type=EventType.AGENT_LEFT, agent=agent))

    @property
    def agents_online(self) -> int:
        return sum(1 for s in self.agents.values() if s.state != AgentState.OFFLINE)

    async def _worker(self) -> None:
        while True:
            agent, payload = await self._queue.get()
            async with self._strategy_lock:
                handled = await asyncio.to_thread(self._handle_update, agent, payload)
                for event in handled.events:
                    await self._emit(event)
                if handled.new_version:
                    await self._new_version_published()

    def _reject(self, agent: str, reason: str, detail: str, **fields: Any) -> Handled:
        self.counters.rejected[reason] = self.counters.rejected.get(reason, 0) + 1
        self.metrics.rejected(reason)
        log.info("rejected update from %s: %s (%s)", agent, reason, detail)
        return Handled(
            [
                Event(
                    type=EventType.UPDATE_REJECTED,
                    agent=agent,
                    reason=reason,
                    detail=detail[:500],
                    **fields,
                )
            ]
        )

    def _handle_update(self, agent: str, payload: bytes) -> Handled:
        """Worker thread: decode, validate, aggregate. Never raises for bad input."""
        self.counters.uplink_bytes += len(payload)
        self.metrics.received(len(payload))
        try:
            with self.metrics.decoding():
                update = decode_update(payload, limits=self.limits)
        except CodecError as error:
            return self._reject(agent, "malformed", str(error), bytes=len(payload))
        fields: dict[str, Any] = {
            "update_id": update.update_id,
            "base_version": update.base_version,
            "bytes": len(payload),
        }
        if update.update_id in self.recent:
            return self._reject(
                agent, "duplicate", f"update {update.update_id} already seen", **fields
            )
        if self.control.state != RunState.RUN:
            return self._reject(agent, "paused", f"job is {self.control.state.value}", **fields)
        try:
            contribution = validate(
                update,
                topic_agent=agent,
                job=self.settings.job,
                model=self.strategy.model,
                reserved=RESERVED_ACCOUNTS,
                clip_norm=self.settings.clip_norm,
            )
        except Rejected as rejected:
            return self._reject(agent, rejected.reason, rejected.detail, **fields)
        with self.metrics.aggregating():
            outcome: Outcome = self.strategy.apply(contribution, time.time())
        if not outcome.accepted:
            assert outcome.reason is not None
            return self._reject(
                agent,
                outcome.reason,
                f"staleness {outcome.staleness}",
                staleness=outcome.staleness,
                **fields,
            )
        self.recent.add(update.update_id)
        self.counters.accepted += 1
        self.metrics.accepted(outcome.staleness, self.strategy.buffered)
        events = [
            Event(
                type=EventType.UPDATE_ACCEPTED,
                agent=agent,
                staleness=outcome.staleness,
                num_samples=update.num_samples,
                **fields,
            )
        ]
        return Handled(events, new_version=outcome.new_version)

    # --- versions -----------------------------------------------------------------------

    async def _new_version_published(self) -> None:
        """Evaluate, checkpoint and publish the strategy's current model (call with the
        strategy lock held, or before any worker runs)."""
        model = self.strategy.model
        snapshot = {name: value.copy() for name, value in model.weights.items()}
        version = model.version
        every = self.settings.evaluate_every
        if self.evaluate is not None and every and version % every == 0:
            self.last_accuracy = await asyncio.to_thread(self.evaluate, snapshot)
        self._model_payload = await asyncio.to_thread(
            encode_model,
            snapshot,
            job_id=self.settings.job,
            sender_id="coordinator",
            version=version,
            metrics={} if self.last_accuracy is None else {"accuracy": self.last_accuracy},
        )
        await asyncio.to_thread(
            checkpoint.save,
            self.settings.state_dir,
            GlobalModel(version, snapshot),
            {"accuracy": self.last_accuracy, "time": time.time()},
        )
        self.published_version = version
        self.strategy.start_round(time.time(), self.agents_online)
        self.metrics.published(version, self.last_accuracy, self.strategy.buffered)

        await self._publish(self.topics.model, self._model_payload, retain=True)
        await self._emit(
            Event(
                type=EventType.VERSION,
                version=version,
                accuracy=self.last_accuracy,
                bytes=self.counters.uplink_bytes,  # update bytes received so far
            )
        )
        log.info("version %d published (accuracy %s)", version, self.last_accuracy)
        await self._check_stop_rule()
        await self._publish_status()

    async def _check_stop_rule(self) -> None:
        stop = self.settings.stop
        reached = (
            (
                stop.target_accuracy is not None
                and self.last_accuracy is not None
                and self.last_accuracy >= stop.target_accuracy
            )
            or (stop.max_versions is not None and self.version >= stop.max_versions)
            or (stop.max_seconds is not None and time.time() - self.started_at >= stop.max_seconds)
        )
        if reached and self.state != CoordinatorState.DONE:
            self.state = CoordinatorState.DONE
            self.control = self.control.model_copy(
                update={"state": RunState.STOP, "issued_at": time.time()}
            )
            await self._publish(self.topics.control, self.control.to_json(), retain=True)
            await self._emit(
                Event(
                    type=EventType.STATE,
                    detail="done",
                    version=self.version,
                    accuracy=self.last_accuracy,
                )
            )
            log.info("stop rule reached at version %d", self.version)
            self.stop_event.set()

    # --- periodic -----------------------------------------------------------------------

    def _status(self, state: CoordinatorState | None = None) -> CoordinatorStatus:
        return CoordinatorStatus(
            job=self.settings.job,
            state=state or self.state,
            version=self.version,
            strategy=self.strategy.name,
            buffered=self.strategy.buffered,
            agents_seen=len(self.agents),
            agents_online=self.agents_online,
            accepted=self.counters.accepted,
            rejected=self.counters.rejected_total,
            uplink_bytes=self.counters.uplink_bytes,
            last_accuracy=self.last_accuracy,
            started_at=self.started_at,
        )

    async def _publish_status(self) -> None:
        await self._publish(self.topics.coordinator_status, self._status().to_json(), retain=True)

    async def _every(self, seconds: float, action: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(seconds)
            await action()

    async def _heartbeat(self) -> None:
        async def beat() -> None:
            await self._publish_status()
            await self._check_stop_rule()

        await self._every(self.settings.heartbeat_seconds, beat)

    async def _ticker(self) -> None:
        async def tick() -> None:
            async with self._strategy_lock:
                if await asyncio.to_thread(self.strategy.tick, time.time()):
                    await self._new_version_published()

        await self._every(0.25, tick)

    # --- shutdown -----------------------------------------------------------------------

    async def _shutdown(self, tasks: list[asyncio.Task[None]]) -> None:
        if self.state != CoordinatorState.DONE:
            self.state = CoordinatorState.STOPPED
        for task in tasks:
            if task.get_name() != "connection":
                task.cancel()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._publish_status(), SHUTDOWN_SECONDS)
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=SHUTDOWN_SECONDS)
