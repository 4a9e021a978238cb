"""The coordinator service: MQTT in, strategy in a worker thread, new versions out.

Tasks (one per concern): the connection loop (reconnects with backoff and jitter, renews
subscriptions, republishes retained state), the update worker (decode, journal, validate
and aggregate off the event loop, one update at a time: the strategy is not thread-safe),
the heartbeat (coordinator status), and the ticker (deadlines of synchronous rounds).

Crash safety (docs/reliability.md): an update is acknowledged to the broker only once it is
in the journal (coordinator/journal.py), so the broker redelivers anything the coordinator
had not made durable; the state is snapshotted at every version and every
``snapshot_every`` records (coordinator/state.py), and a restart replays the journal past
the snapshot through the same code, so nothing accepted is lost or applied twice.
SIGTERM sets the stop event; shutdown snapshots, publishes a final status, and is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiomqtt

from broker.config import RESERVED_ACCOUNTS
from codec import CodecError, DecodeLimits, Update, decode_update, encode_model
from common.errors import ProtocolError
from common.messages import (
    AgentState,
    AgentStatus,
    Command,
    CommandAction,
    Control,
    CoordinatorState,
    CoordinatorStatus,
    Event,
    EventType,
    RunState,
    parse,
)
from common.mqtt import Ack, Session, client_options
from common.topics import Topics
from configs.coordinator import CoordinatorSettings
from coordinator import state
from coordinator.books import (
    AgentBook,
    Counters,
    RateLimiter,
    RecentIds,
    books_from_json,
    books_to_json,
)
from coordinator.errors import StateError
from coordinator.journal import CLOSE, ONLINE, UPDATE, Journal, Record
from coordinator.metrics import CoordinatorMetrics
from coordinator.strategies import GlobalModel, Outcome, Strategy, make_strategy
from coordinator.validation import Rejected, validate

log = logging.getLogger("fedmq.coordinator")

QUEUE_SIZE = 64  # updates routed to the worker, not yet journaled
STATUS_CHANGES_PER_MINUTE = 12.0
COMMANDS_REMEMBERED = 100  # applied operator command ids: a redelivered one is not reapplied
SHUTDOWN_SECONDS = 5.0


@dataclass
class Handled:
    """What the worker thread decided about one input, for the loop to publish."""

    events: list[Event]
    new_version: bool = False
    now: float = 0.0  # the input's time: a version it makes starts its round then


class Coordinator:
    def __init__(
        self,
        settings: CoordinatorSettings,
        initial: GlobalModel,
        evaluate: Callable[[dict[str, Any]], float | None] | None = None,
        stop_event: asyncio.Event | None = None,
        resume: state.Snapshot | None = None,
    ) -> None:
        self.settings = settings
        self.topics = Topics(settings.topic_prefix, settings.job)
        if resume is not None:
            initial = GlobalModel(resume.version, resume.weights)
        self.strategy: Strategy = make_strategy(settings.strategy, initial)
        self.evaluate = evaluate
        self.control = Control(mode=settings.effective_mode, training=settings.training)
        self.state = CoordinatorState.STARTING
        self.counters = Counters()
        self.books: dict[str, AgentBook] = {}
        self.metrics = CoordinatorMetrics(settings.job, self.strategy.name)
        self.recent = RecentIds(settings.duplicate_window)
        self.commands = RecentIds(COMMANDS_REMEMBERED)
        # an agent's online/offline changes, each journaled: a flapping one is not followed
        self._status_changes = RateLimiter(per_minute=STATUS_CHANGES_PER_MINUTE, burst=6)
        self.limiter = RateLimiter(
            settings.rate_limit.updates_per_minute, settings.rate_limit.burst
        )
        self.agents: dict[str, AgentStatus] = {}
        self.last_accuracy: float | None = None
        self.started_at = time.time()
        # an update can never hold more elements than the model: refused before allocating
        self.limits = DecodeLimits(
            max_payload_bytes=settings.max_update_bytes,
            max_total_elements=max(1, sum(v.size for v in initial.weights.values())),
            max_tensors=max(1, len(initial.weights)),
        )
        self.journal = Journal(settings.state_dir / "journal")
        self._decisions: list[dict[str, Any]] = []  # since the last snapshot
        self._snapshot_number = 0
        self._applied_seq = 0  # the last journal record reflected in memory
        self._since_snapshot = 0
        self._snapshot_seqs: deque[int] = deque(maxlen=state.KEEP)
        self._online = 0  # agents online, as the strategy was last told (journaled)
        self.resumed = resume is not None
        if resume is not None:
            self._restore(resume)

        self.stop_event = stop_event or asyncio.Event()

        self._queue: asyncio.Queue[tuple[str, bytes, Ack]] = asyncio.Queue(QUEUE_SIZE)
        self.session = Session(
            self._client_for,
            [self.topics.all_updates, self.topics.all_agent_statuses, self.topics.command],
            on_message=self._route,
            on_connect=self._publish_retained_state,
            stop=self.stop_event,
            log=log,
            bytes_per_second=1e6,
            manual_ack=True,  # an update is acknowledged once journaled, not on receipt
        )
        self._model_payload: bytes | None = None
        self._pending_events: deque[Event] = deque(maxlen=1000)
        self.published_version = self.strategy.version
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
        await self.prepare()
        self.state = CoordinatorState.RUNNING
        await self._check_stop_rule()
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

    async def prepare(self) -> None:
        """Before serving: replay the journal past the resumed snapshot (or publish version
        0 on a fresh start), and set the gauges a restart would otherwise leave at zero."""
        async with self._strategy_lock:
            if self.resumed:
                before = self.strategy.version
                await self._replay_journal()
                if self.strategy.version == before:  # the resumed version is this run's first
                    self.metrics.published(
                        self.strategy.version, self.last_accuracy, self.strategy.buffered
                    )
            else:
                self._set_aside_orphan_journal()
                await self._new_version_published(time.time())
        self.metrics.agents_online(self.agents_online)

    # --- persisted state ----------------------------------------------------------------

    def _restore(self, snapshot: state.Snapshot) -> None:
        books = snapshot.books
        try:
            self.strategy.restore_state(snapshot.strategy_fields, snapshot.strategy_arrays)
            self.recent = RecentIds(self.settings.duplicate_window, list(books["recent"]))
            self.counters = Counters.from_json(books["counters"])
            self.books = books_from_json(books["agent_books"])
            self.agents = {
                agent: parse(AgentStatus, json.dumps(fields).encode())
                for agent, fields in books["agents"].items()
            }
            self.control = parse(Control, json.dumps(books["control"]).encode())
            self.last_accuracy = books["last_accuracy"]
            self.started_at = float(books["started_at"])
            self._online = int(books["online"])
            self.commands = RecentIds(COMMANDS_REMEMBERED, list(books.get("commands", [])))
        except (KeyError, TypeError, ValueError, ProtocolError) as error:
            raise StateError(f"snapshot {snapshot.number} is inconsistent: {error}") from error
        self._snapshot_number = snapshot.number
        self._applied_seq = snapshot.applied_seq
        self._snapshot_seqs.append(snapshot.applied_seq)
        log.info(
            "resumed from snapshot %d: version %d, %d updates buffered, journal after record %d",
            snapshot.number,
            snapshot.version,
            self.strategy.buffered,
            snapshot.applied_seq,
        )

    def _books_json(self) -> dict[str, Any]:
        return {
            "recent": self.recent.to_json(),
            "counters": self.counters.to_json(),
            "agent_books": books_to_json(self.books),
            "agents": {a: s.model_dump(mode="json") for a, s in self.agents.items()},
            "control": json.loads(self.control.to_json()),
            "last_accuracy": self.last_accuracy,
            "started_at": self.started_at,
            "online": self._online,
            "commands": self.commands.to_json(),
        }

    async def _save_snapshot(self) -> None:
        """Persist the whole state (strategy lock held: nothing changes meanwhile)."""
        self._snapshot_number += 1
        fields, arrays = self.strategy.export_state()
        snapshot = state.Snapshot(
            number=self._snapshot_number,
            applied_seq=self._applied_seq,
            version=self.strategy.version,
            weights=self.strategy.model.weights,
            strategy_fields=fields,
            strategy_arrays=arrays,
            books=self._books_json(),
            decisions=self._decisions,
        )
        self._decisions = []
        self._since_snapshot = 0
        await asyncio.to_thread(self._write_snapshot, snapshot)

    def _write_snapshot(self, snapshot: state.Snapshot) -> None:
        try:
            state.save(self.settings.state_dir, snapshot)
            self.journal.rotate()
            self._snapshot_seqs.append(snapshot.applied_seq)
            # keep what the oldest kept snapshot needs: a damaged newer one falls back to it.
            # Until KEEP were written since the start, an older file (from before a restart)
            # whose number is unknown here may be that oldest one: compact nothing yet.
            if len(self._snapshot_seqs) == state.KEEP:
                self.journal.compact(self._snapshot_seqs[0])
        except OSError as error:
            raise StateError(f"cannot write state in {self.settings.state_dir}: {error}") from error

    def _set_aside_orphan_journal(self) -> None:
        """A journal without any snapshot belongs to a state that is gone: not replayable."""
        if self.journal.last_seq:
            target = self.journal.directory.with_name(f"journal.orphan-{int(time.time())}")
            self.journal.close()
            self.journal.directory.rename(target)
            log.warning("journal without a snapshot moved to %s (not replayed)", target)
            self.journal = Journal(self.settings.state_dir / "journal")

    async def _replay_journal(self) -> None:
        """Re-apply what was journaled after the snapshot, through the same code."""
        replayed = 0
        for record in self.journal.records_after(self._applied_seq):
            handled = await asyncio.to_thread(self._apply_record, record)
            await self._after(handled)
            replayed += 1
        if self._model_payload is None:
            await self._prepare_model(self.strategy.version)
        if replayed:
            await self._save_snapshot()
        log.info(
            "journal replayed: %d records; version %d, %d updates buffered",
            replayed,
            self.strategy.version,
            self.strategy.buffered,
        )

    def _apply_record(self, record: Record) -> Handled:
        """Worker thread: one journaled input (on replay)."""
        if record.kind == UPDATE:
            try:
                update = decode_update(record.payload, limits=self.limits)
            except CodecError as error:  # it decoded when journaled: limits changed since
                self._applied_seq = record.seq
                return self._reject(record.agent, "malformed", str(error), seq=record.seq)
            return self._apply_update(record, update)
        self._applied_seq = record.seq
        if record.kind == CLOSE:
            return Handled([], new_version=self.strategy.tick(record.time), now=record.time)
        if record.kind == ONLINE:
            self._online = record.count
            self.strategy.agents_online_changed(record.count)
        return Handled([])

    # --- connection ---------------------------------------------------------------------

    def _client_for(self) -> aiomqtt.Client:
        broker = self.settings.broker
        offline = self._status(CoordinatorState.STOPPED)  # the last will: we vanished
        return aiomqtt.Client(
            **client_options(broker),
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

    async def _route(self, topic: str, payload: bytes, ack: Ack) -> None:
        agent = self.topics.agent_of_update(topic)
        if agent is not None:
            if not self.limiter.allow(agent, time.monotonic()):
                ack()  # refused for good: no redelivery wanted
                handled = self._reject(
                    agent, "rate_limited", "over the per-agent update rate", bytes=len(payload)
                )
                for event in handled.events:
                    await self._emit(event)
                return
            # When full, routing waits (the client's own queue then grows: docs/reliability.md,
            # "Memory"). Never a silent drop: unacknowledged, it comes back after a crash.
            await self._queue.put((agent, payload, ack))
            return
        ack()
        if topic == self.topics.command:
            await self._on_command(payload)
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
        self.metrics.agents_online(self.agents_online)  # also right after a restart
        was_online = previous is not None and previous.state != AgentState.OFFLINE
        is_online = status.state != AgentState.OFFLINE
        if is_online == was_online:
            return
        if not self._status_changes.allow(agent, time.monotonic()):
            return  # a flapping agent: the heartbeat brings the strategy's count up to date
        await self._sync_online()
        if is_online and not was_online:
            await self._emit(Event(type=EventType.AGENT_JOINED, agent=agent))
        elif was_online and not is_online:
            await self._emit(Event(type=EventType.AGENT_LEFT, agent=agent))

    async def _on_command(self, payload: bytes) -> None:
        """An operator's pause/resume/stop: applied, snapshotted (a restart keeps it), then
        confirmed by the retained control naming the command. A bad one is answered, never
        fatal."""
        try:
            command = parse(Command, payload)
            if self.stop_event.is_set():
                raise ProtocolError("the coordinator is stopping")
        except ProtocolError as error:
            log.warning("command refused: %s", error)
            fields: Any = None
            with contextlib.suppress(ValueError):  # its id, if any, tells the sender
                fields = json.loads(payload)
            command_id = fields.get("id") if isinstance(fields, dict) else None
            await self._emit(
                Event(
                    type=EventType.COMMAND_REJECTED,
                    reason="stopping" if self.stop_event.is_set() else "malformed",
                    detail=str(error)[:500],
                    command_id=command_id[:64] if isinstance(command_id, str) else None,
                )
            )
            return
        if command.id in self.commands:
            # a redelivery (its PUBACK waited behind unacknowledged updates when we stopped):
            # applied once already, and a later command may have superseded it
            log.info("command %s %s already applied: ignored", command.action.value, command.id)
            return
        new_state = {
            CommandAction.PAUSE: RunState.PAUSE,
            CommandAction.RESUME: RunState.RUN,
            CommandAction.STOP: RunState.STOP,
        }[command.action]
        async with self._strategy_lock:
            self.control = self.control.model_copy(
                update={"state": new_state, "issued_at": time.time(), "command_id": command.id}
            )
            self.commands.add(command.id)
            await self._save_snapshot()
        await self._publish(self.topics.control, self.control.to_json(), retain=True)
        await self._emit(
            Event(
                type=EventType.STATE,
                detail=command.action.value,
                reason=command.reason,
                by=command.by,
                command_id=command.id,
                version=self.version,
            )
        )
        log.info(
            "command %s %s by %s: %s", command.action.value, command.id, command.by, command.reason
        )
        if command.action == CommandAction.STOP:
            self.stop_event.set()

    async def _sync_online(self) -> None:
        """Tell the strategy how many agents are online, if that changed (journaled)."""
        async with self._strategy_lock:
            count = self.agents_online
            if count != self._online:
                await asyncio.to_thread(self._online_changed, count, time.time())

    def _online_changed(self, count: int, now: float) -> None:
        """Worker thread: a sync round may now expect a different number of agents."""
        record = self.journal.append(ONLINE, now, count=count)
        self._apply_record(record)

    @property
    def agents_online(self) -> int:
        return sum(1 for s in self.agents.values() if s.state != AgentState.OFFLINE)

    async def _worker(self) -> None:
        while True:
            agent, payload, ack = await self._queue.get()
            async with self._strategy_lock:
                handled = await asyncio.to_thread(self._receive_update, agent, payload, time.time())
                ack()  # journaled, or refused for good: the broker may forget it now
                await self._after(handled)

    async def _after(self, handled: Handled) -> None:
        """Publish what one input led to (strategy lock held)."""
        for event in handled.events:
            await self._emit(event)
        if handled.new_version:
            await self._new_version_published(handled.now)
        elif self._since_snapshot >= self.settings.snapshot_every:
            await self._save_snapshot()

    def _book(self, agent: str) -> AgentBook:
        book = self.books.get(agent)
        if book is None:
            book = self.books[agent] = AgentBook()
        return book

    def _reject(
        self, agent: str, reason: str, detail: str, seq: int | None = None, **fields: Any
    ) -> Handled:
        self.counters.reject(reason)
        self.metrics.rejected(reason)
        if agent in self.books or seq is not None:  # unknown senders get no book (floods)
            self._book(agent).rejected += 1
        if seq is not None:
            self._decide(seq, agent, reason, fields)
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

    def _decide(self, seq: int, agent: str, decision: str, fields: dict[str, Any]) -> None:
        """The ledger entry of one journaled update (see coordinator/state.py)."""
        self._decisions.append(
            {
                "seq": seq,
                "agent": agent,
                "update_id": fields.get("update_id"),
                "base_version": fields.get("base_version"),
                "decision": decision,
                "version": self.strategy.version,
            }
        )

    def _receive_update(self, agent: str, payload: bytes, now: float) -> Handled:
        """Worker thread: decode; journal what decoded; apply. Never raises for bad input."""
        self.metrics.received(len(payload))
        try:
            with self.metrics.decoding():
                update = decode_update(payload, limits=self.limits)
        except CodecError as error:
            self.counters.uplink_bytes += len(payload)
            return self._reject(agent, "malformed", str(error), bytes=len(payload))
        try:
            record = self.journal.append(UPDATE, now, agent=agent, payload=payload)
        except OSError as error:
            raise StateError(f"cannot write the journal: {error}") from error
        return self._apply_update(record, update)

    def _apply_update(self, record: Record, update: Update) -> Handled:
        """Worker thread: validate and aggregate one journaled update (live or replayed)."""
        self._applied_seq = record.seq
        self._since_snapshot += 1
        agent, size = record.agent, len(record.payload)
        self.counters.uplink_bytes += size
        self._book(agent).uplink_bytes += size
        fields: dict[str, Any] = {
            "update_id": update.update_id,
            "base_version": update.base_version,
            "bytes": size,
        }
        if update.update_id in self.recent:
            return self._reject(
                agent,
                "duplicate",
                f"update {update.update_id} already seen",
                seq=record.seq,
                **fields,
            )
        if self.control.state != RunState.RUN:
            return self._reject(
                agent, "paused", f"job is {self.control.state.value}", seq=record.seq, **fields
            )
        try:
            contribution = validate(
                update,
                topic_agent=agent,
                job=self.settings.job,
                model=self.strategy.model,
                reserved=RESERVED_ACCOUNTS,
                clip_norm=self.settings.clip_norm,
                norm_policy=self.settings.norm_policy,
            )
        except Rejected as rejected:
            return self._reject(agent, rejected.reason, rejected.detail, seq=record.seq, **fields)
        with self.metrics.aggregating():
            outcome: Outcome = self.strategy.apply(contribution, record.time)
        if not outcome.accepted:
            assert outcome.reason is not None
            return self._reject(
                agent,
                outcome.reason,
                f"staleness {outcome.staleness}",
                seq=record.seq,
                staleness=outcome.staleness,
                **fields,
            )
        self.recent.add(update.update_id)
        self.counters.accepted += 1
        book = self._book(agent)
        book.accepted += 1
        book.last_update_at, book.last_staleness = record.time, outcome.staleness
        self._decide(record.seq, agent, "accepted", fields)
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
        return Handled(events, new_version=outcome.new_version, now=record.time)

    # --- versions -----------------------------------------------------------------------

    async def _prepare_model(self, version: int) -> None:
        """Evaluate and encode the strategy's current model for publishing."""
        snapshot = {name: value.copy() for name, value in self.strategy.model.weights.items()}
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

    async def _new_version_published(self, now: float) -> None:
        """Evaluate, snapshot and publish the strategy's current model (strategy lock held).
        ``now`` is the time of the input that made it (its round starts then)."""
        version = self.strategy.version
        await self._prepare_model(version)
        self.strategy.start_round(now, self._online)
        await self._save_snapshot()
        self.published_version = version
        self.metrics.published(version, self.last_accuracy, self.strategy.buffered)

        await self._publish(self.topics.model, self._model_payload or b"", retain=True)
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
        if self.state == CoordinatorState.STARTING:
            return  # decided once running (a replay may pass through the target)
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
                update={"state": RunState.STOP, "issued_at": time.time(), "command_id": None}
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
        if state is None:
            paused = self.state == CoordinatorState.RUNNING and self.control.state == RunState.PAUSE
            state = CoordinatorState.PAUSED if paused else self.state
        return CoordinatorStatus(
            job=self.settings.job,
            state=state,
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
            await self._sync_online()
            await self._publish_status()
            await self._check_stop_rule()

        await self._every(self.settings.heartbeat_seconds, beat)

    async def _ticker(self) -> None:
        async def tick() -> None:
            now = time.time()
            if not self.strategy.due(now):  # cheap and pure: no lock needed to look
                return
            async with self._strategy_lock:
                handled = await asyncio.to_thread(self._close_round, now)
                await self._after(handled)

        await self._every(0.25, tick)

    def _close_round(self, now: float) -> Handled:
        """Worker thread: a deadline closes the round (journaled first, like any input)."""
        if not self.strategy.due(now):
            return Handled([])
        return self._apply_record(self.journal.append(CLOSE, now))

    # --- shutdown -----------------------------------------------------------------------

    async def _shutdown(self, tasks: list[asyncio.Task[None]]) -> None:
        if self.state != CoordinatorState.DONE:
            self.state = CoordinatorState.STOPPED
        # Wait for the update in hand (never cancel a thread mid-apply), then stop the rest
        # and snapshot; queued updates were not acknowledged: the broker redelivers them.
        locked = False
        with contextlib.suppress(asyncio.TimeoutError):
            locked = await asyncio.wait_for(self._strategy_lock.acquire(), SHUTDOWN_SECONDS)
        for task in tasks:
            if task.get_name() != "connection":
                task.cancel()
        if locked:
            try:
                if self._decisions or self._since_snapshot:
                    await asyncio.wait_for(self._save_snapshot(), SHUTDOWN_SECONDS)
            except (asyncio.TimeoutError, StateError) as error:
                log.warning("no final snapshot (%s): the journal has everything", error)
            finally:
                self._strategy_lock.release()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._publish_status(), SHUTDOWN_SECONDS)
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=SHUTDOWN_SECONDS)
        self.journal.close()
