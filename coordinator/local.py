"""A complete local federation: a private Mosquitto, the coordinator and N agents, each a
separate process with its own MQTT connection, on the bundled digits data.

Some agents are stragglers (their rounds last ``slowdown`` times longer) and some drop out
for a while (stopped, then restarted). Progress is read from the broker like any operator
would (the read-only ``monitor`` account); at the end a summary table is printed, and a
results JSON and a PNG plot (test accuracy against wall time and against uplink MB) are
written to the output directory.

This module starts agents as processes (``python -m edge_agent``); it never imports them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiomqtt
import yaml
from rich.console import Console
from rich.live import Live
from rich.table import Table

from broker.config import MONITOR
from broker.dev import DevBroker, local_broker
from common.errors import ProtocolError
from common.messages import (
    AgentState,
    AgentStatus,
    CoordinatorState,
    CoordinatorStatus,
    Event,
    EventType,
    parse,
)
from common.topics import Topics
from configs.local import LocalRunSettings

if TYPE_CHECKING:
    from broker.embedded import EmbeddedBroker

PREFIX = "fedmq"

MB = 1e6


@dataclass
class VersionPoint:
    version: int
    seconds: float
    accuracy: float | None
    uplink_bytes: int


@dataclass
class Progress:
    """What the monitor has seen so far."""

    started: float = field(default_factory=time.monotonic)
    training_started: float | None = None
    status: CoordinatorStatus | None = None
    agents: dict[str, AgentStatus] = field(default_factory=dict)
    versions: list[VersionPoint] = field(default_factory=list)
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    stalenesses: list[int] = field(default_factory=list)

    def elapsed(self) -> float:
        return time.monotonic() - (self.training_started or self.started)

    def first_reaching(self, accuracy: float) -> VersionPoint | None:
        return next(
            (p for p in self.versions if p.accuracy is not None and p.accuracy >= accuracy), None
        )


def process_command(module: str, config: str, python: str = sys.executable) -> list[str]:
    """The argv of a ``coordinator`` or ``edge_agent`` process. compose.yaml runs the same
    commands (tests/test_compose.py compares them), so the two cannot drift apart."""
    command = [python, "-m", module]
    command += ["run"] if module == "coordinator" else []
    return [*command, "--config", config]


class LocalFederation:
    def __init__(self, settings: LocalRunSettings, console: Console | None = None) -> None:
        self.settings = settings
        self.console = console or Console(stderr=True)
        self.output = settings.output.resolve()
        self.topics = Topics(PREFIX, settings.job)
        self.progress = Progress()
        self.broker: DevBroker | EmbeddedBroker | None = None
        self.coordinator: subprocess.Popen[bytes] | None = None
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.events_log: list[dict[str, Any]] = []

    # --- processes ----------------------------------------------------------------------

    def agent_names(self) -> list[str]:
        return [f"agent-{i:02d}" for i in range(self.settings.agents)]

    def stragglers(self) -> set[str]:
        return (
            set(self.agent_names()[-self.settings.stragglers :])
            if self.settings.stragglers
            else set()
        )

    def dropouts(self) -> list[str]:
        return self.agent_names()[: self.settings.dropouts]

    def _environment(self) -> dict[str, str]:
        root = str(Path(__file__).resolve().parents[1])
        path = os.environ.get("PYTHONPATH")
        return {
            **os.environ,
            "PYTHONPATH": root if not path else f"{root}{os.pathsep}{path}",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "PYTHONUNBUFFERED": "1",
        }

    def _spawn(self, module: str, config: Path, log_name: str) -> subprocess.Popen[bytes]:
        command = process_command(module, str(config))
        with open(self.output / "logs" / log_name, "ab") as log:  # the child keeps its own
            return subprocess.Popen(
                command,
                env=self._environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _write_configs(self, broker: DevBroker | EmbeddedBroker) -> None:
        s = self.settings
        data = {"kind": "digits", "num_agents": s.agents, "alpha": s.alpha, "seed": s.seed}
        coordinator: dict[str, Any] = {
            "job": s.job,
            "topic_prefix": PREFIX,
            "broker": broker.connection("coordinator").model_dump(mode="json")
            | {"password": broker.provision("coordinator")},
            "task": {"model": s.model, "data": data},
            "strategy": s.strategy.model_dump(mode="json"),
            "training": s.training.model_dump(mode="json"),
            "stop": s.stop.model_dump(mode="json"),
            "state_dir": str(self.output / "state" / "coordinator"),
            "seed": s.seed,
            "heartbeat_seconds": 1.0,
        }
        if s.mode is not None:
            coordinator["mode"] = s.mode.value
        if s.strategy.name == "fedavg" and "expected_agents" not in s.strategy.model_fields_set:
            coordinator["strategy"]["expected_agents"] = s.agents
        (self.output / "configs").mkdir(parents=True, exist_ok=True)
        (self.output / "configs" / "coordinator.yaml").write_text(yaml.safe_dump(coordinator))
        stragglers = self.stragglers()
        for index, name in enumerate(self.agent_names()):
            agent = {
                "agent_id": name,
                "job": s.job,
                "topic_prefix": PREFIX,
                "broker": {
                    "host": "127.0.0.1",
                    "port": broker.port,
                    "username": name,
                    "password": broker.provision(name),
                },
                "task": {"model": s.model, "data": data | {"shard": index}},
                "state_dir": str(self.output / "state" / name),
                "heartbeat_seconds": 2.0,
                "slowdown": s.slowdown if name in stragglers else 1.0,
                "threads": 1,
                # agents yield the CPU to the coordinator: on one machine it serves them all
                "nice": 10,
            }
            (self.output / "configs" / f"{name}.yaml").write_text(yaml.safe_dump(agent))

    def _start_agent(self, name: str) -> None:
        self.agents[name] = self._spawn(
            "edge_agent", self.output / "configs" / f"{name}.yaml", f"{name}.log"
        )

    @staticmethod
    def _terminate(process: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _stop_all(self) -> None:
        for process in self.agents.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        self._terminate(self.coordinator)
        for process in self.agents.values():
            self._terminate(process)
        if self.broker is not None:
            self.broker.stop()

    # --- monitoring ---------------------------------------------------------------------

    def _on_message(self, topic: str, payload: bytes) -> None:
        progress = self.progress
        try:
            if topic == self.topics.coordinator_status:
                progress.status = parse(CoordinatorStatus, payload)
            elif topic == self.topics.events:
                self._on_event(parse(Event, payload))
            elif (agent := self.topics.agent_of_status(topic)) is not None:
                status = parse(AgentStatus, payload)
                progress.agents[agent] = status
                if progress.training_started is None and status.state == AgentState.TRAINING:
                    progress.training_started = time.monotonic()
        except ProtocolError as error:
            self.console.log(f"[yellow]unreadable message on {topic}: {error}")

    def _on_event(self, event: Event) -> None:
        progress = self.progress
        self.events_log.append(event.model_dump(mode="json", exclude_none=True))
        if event.type == EventType.VERSION and event.version is not None:
            # time counts from the first training round: start-up is not training time
            seconds = progress.elapsed() if progress.training_started is not None else 0.0
            progress.versions.append(
                VersionPoint(event.version, round(seconds, 3), event.accuracy, event.bytes or 0)
            )
        elif event.type == EventType.UPDATE_ACCEPTED:
            progress.accepted += 1
            if event.staleness is not None:
                progress.stalenesses.append(event.staleness)
        elif event.type == EventType.UPDATE_REJECTED:
            reason = event.reason or "unknown"
            progress.rejected[reason] = progress.rejected.get(reason, 0) + 1

    def _table(self) -> Table:
        p = self.progress
        status = p.status
        table = Table(
            title=f"fedmq local federation - {self.settings.strategy.name}, "
            f"{self.settings.agents} agents ({self.settings.stragglers} x"
            f"{self.settings.slowdown:g} slower)"
        )
        for column in (
            "elapsed",
            "state",
            "version",
            "accuracy",
            "accepted",
            "rejected",
            "buffered",
            "agents online",
            "uplink MB",
        ):
            table.add_column(column, justify="right")
        accuracy = status.last_accuracy if status else None
        table.add_row(
            f"{p.elapsed():.1f} s",
            status.state.value if status else "starting",
            str(status.version) if status else "-",
            f"{accuracy:.3f}" if accuracy is not None else "-",
            str(p.accepted),
            str(sum(p.rejected.values())),
            str(status.buffered) if status else "-",
            f"{sum(1 for a in p.agents.values() if a.state != AgentState.OFFLINE)}"
            f"/{self.settings.agents}",
            f"{(status.uplink_bytes if status else 0) / MB:.2f}",
        )
        return table

    async def _monitor(self, broker: DevBroker | EmbeddedBroker, live: Live | None) -> str:
        """Follow the run until the coordinator is done or stopped, or time runs out;
        returns why it ended."""
        connection = broker.connection(MONITOR)
        deadline = (
            time.monotonic()
            + (self.settings.stop.max_seconds or 600)
            + self.settings.start_timeout_seconds
            + 30
        )
        dropouts = self._dropout_schedule()
        async with aiomqtt.Client(
            "127.0.0.1",
            broker.port,
            username=MONITOR,
            password=connection.password.get_secret_value() if connection.password else None,
            identifier="fedmq-local-monitor",
        ) as client:
            for topic in (
                self.topics.coordinator_status,
                self.topics.events,
                self.topics.all_agent_statuses,
            ):
                await client.subscribe(topic, qos=1)
            queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
            pump = asyncio.create_task(pump_messages(client, queue))
            try:
                ended: str = await self._follow(queue, live, dropouts, deadline)
                return ended
            finally:
                pump.cancel()

    async def _follow(
        self,
        queue: asyncio.Queue[tuple[str, bytes]],
        live: Live | None,
        dropouts: dict[str, list[float]],
        deadline: float,
    ) -> str:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                topic, payload = await asyncio.wait_for(queue.get(), 0.5)
                self._on_message(topic, payload)
                while not queue.empty():
                    self._on_message(*queue.get_nowait())
            if live is not None:
                live.update(self._table())
            self._run_dropouts(dropouts)
            status = self.progress.status
            if status is not None and status.state in (
                CoordinatorState.DONE,
                CoordinatorState.STOPPED,
            ):
                return str(status.state.value)
            if self.coordinator is not None and self.coordinator.poll() is not None:
                return f"coordinator exited with {self.coordinator.returncode}"
            if time.monotonic() > deadline:
                return "time limit"

    def _dropout_schedule(self) -> dict[str, list[float]]:
        return {name: [] for name in self.dropouts()}

    def _run_dropouts(self, schedule: dict[str, list[float]]) -> None:
        """Stop each dropout agent once, ``dropout_after`` seconds into training, and start
        it again ``dropout_for`` seconds later."""
        started = self.progress.training_started
        if started is None:
            return
        now = time.monotonic() - started
        for name, marks in schedule.items():
            if not marks and now >= self.settings.dropout_after_seconds:
                self._terminate(self.agents.get(name), timeout=5)
                marks.append(now)
                self.console.log(f"{name} dropped out")
            elif len(marks) == 1 and now >= marks[0] + self.settings.dropout_for_seconds:
                self._start_agent(name)
                marks.append(now)
                self.console.log(f"{name} is back")

    # --- the run ------------------------------------------------------------------------

    async def run(self, *, live: bool = True) -> dict[str, Any]:
        self.output.mkdir(parents=True, exist_ok=True)
        # every run starts fresh: no checkpoint, retained model or log of an earlier run
        for stale in ("state", "broker", "logs"):
            shutil.rmtree(self.output / stale, ignore_errors=True)
        (self.output / "logs").mkdir(exist_ok=True)
        this = asyncio.current_task()
        assert this is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):  # stop the children, not orphan them
            loop.add_signal_handler(sig, this.cancel)

        self.broker = broker = local_broker(self.output / "broker", prefix=PREFIX)

        broker.start()
        ended = "interrupted"
        try:
            self._write_configs(broker)
            self.coordinator = self._spawn(
                "coordinator", self.output / "configs" / "coordinator.yaml", "coordinator.log"
            )
            for name in self.agent_names():
                self._start_agent(name)
            if live:
                with Live(self._table(), console=self.console, refresh_per_second=4) as view:
                    ended = await self._monitor(broker, view)
            else:
                ended = await self._monitor(broker, None)
        finally:
            await asyncio.to_thread(self._stop_all)
        results = self._results(ended)
        (self.output / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        plot(results, self.output / "accuracy.png")
        return results

    def _results(self, ended: str) -> dict[str, Any]:
        p = self.progress
        status = p.status
        reached = {}
        for target in (0.9, 0.95):
            point = p.first_reaching(target)
            reached[f"{target:.2f}"] = (
                None
                if point is None
                else {
                    "version": point.version,
                    "seconds": point.seconds,
                    "uplink_bytes": point.uplink_bytes,
                }
            )
        return {
            "settings": self.settings.model_dump(mode="json"),
            "ended": ended,
            "elapsed_seconds": round(p.elapsed(), 3),
            "final_version": status.version if status else None,
            "final_accuracy": status.last_accuracy if status else None,
            "best_accuracy": max(
                (v.accuracy for v in p.versions if v.accuracy is not None), default=None
            ),
            "accepted": p.accepted,
            "rejected": p.rejected,
            "uplink_bytes": status.uplink_bytes if status else 0,
            "mean_staleness": (sum(p.stalenesses) / len(p.stalenesses)) if p.stalenesses else None,
            "reached": reached,
            "versions": [asdict(v) for v in p.versions],
            "agents": {
                name: s.model_dump(mode="json", exclude_none=True)
                for name, s in sorted(p.agents.items())
            },
        }


async def pump_messages(client: aiomqtt.Client, queue: asyncio.Queue[tuple[str, bytes]]) -> None:
    async for message in client.messages:
        payload = message.payload
        queue.put_nowait((str(message.topic), payload if isinstance(payload, bytes) else b""))


def summary_table(results: dict[str, Any]) -> Table:
    table = Table(title="fedmq local federation: summary")
    table.add_column("measure")
    table.add_column("value", justify="right")
    settings = results["settings"]
    rows = [
        ("strategy", settings["strategy"]["name"]),
        (
            "agents (stragglers x slowdown)",
            f"{settings['agents']} ({settings['stragglers']} x {settings['slowdown']:g})",
        ),
        ("codec", json.dumps(settings["training"]["codec"])),
        ("ended", results["ended"]),
        ("wall time (training)", f"{results['elapsed_seconds']:.1f} s"),
        ("versions", str(results["final_version"])),
        (
            "final / best test accuracy",
            f"{_fmt(results['final_accuracy'])} / {_fmt(results['best_accuracy'])}",
        ),
        ("updates accepted", str(results["accepted"])),
        ("updates rejected", json.dumps(results["rejected"]) if results["rejected"] else "0"),
        ("uplink", f"{results['uplink_bytes'] / MB:.2f} MB"),
        ("mean staleness", _fmt(results["mean_staleness"], 2)),
    ]
    for target, point in results["reached"].items():
        rows.append(
            (
                f"to {float(target):.0%} accuracy",
                "not reached"
                if point is None
                else f"{point['seconds']:.1f} s, {point['uplink_bytes'] / MB:.2f} MB, "
                f"version {point['version']}",
            )
        )
    for row in rows:
        table.add_row(*row)
    return table


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def plot(results: dict[str, Any], path: Path) -> None:
    """Test accuracy against wall time and against uplink MB (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [v for v in results["versions"] if v["accuracy"] is not None]
    figure, (by_time, by_bytes) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    label = f"{results['settings']['strategy']['name']}"
    by_time.plot(
        [p["seconds"] for p in points], [p["accuracy"] for p in points], marker=".", label=label
    )
    by_bytes.plot(
        [p["uplink_bytes"] / MB for p in points],
        [p["accuracy"] for p in points],
        marker=".",
        label=label,
    )
    by_time.set_xlabel("wall time since training started (s)")
    by_bytes.set_xlabel("uplink (MB of update payloads)")
    by_time.set_ylabel("test accuracy")
    for axis in (by_time, by_bytes):
        axis.grid(alpha=0.3)
        axis.axhline(0.9, color="grey", lw=0.8, ls="--")
        axis.legend(loc="lower right")
    figure.suptitle("fedmq local federation on digits")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def run_local(settings: LocalRunSettings, *, live: bool = True) -> dict[str, Any]:
    federation = LocalFederation(settings)
    results = asyncio.run(federation.run(live=live))
    federation.console.print(summary_table(results))
    federation.console.print(
        f"results: {federation.output / 'results.json'}, plot: {federation.output / 'accuracy.png'}"
    )
    return results
