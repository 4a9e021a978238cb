"""Chaos run: a local federation trained through crashes and outages, then audited.

During training the coordinator is SIGKILLed and restarted, the broker is restarted, and
agents are SIGKILLed and restarted, on a seeded schedule. When the target accuracy is
reached the agents are stopped, the coordinator drains what the broker still holds and is
stopped, and the run is audited from the files the processes leave behind:

- versions: the ``version`` events seen by a monitor must be strictly increasing;
- exactly once: no update id is ``accepted`` twice in the coordinator's ledger
  (state/coordinator/decisions.jsonl, see coordinator/state.py);
- nothing lost: every update an agent logged as delivered (its sent.jsonl, written once the
  broker acknowledged it) has a decision in the ledger;
- no crash loop: no process exits unless the schedule killed it, and all exit 0 at the end.

The test suite runs a small configuration (tests/integration/test_chaos.py); a longer one:

    python -m benchmarks.chaos --agents 6 --coordinator-kills 6 --broker-restarts 4 \\
        --agent-kills 12 --interval 8 --target-accuracy 0.93
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt

from broker.config import MONITOR
from broker.dev import DevBroker
from common.messages import CoordinatorStatus, Event, EventType, parse
from common.mqtt import Ack, Session
from configs.local import LocalRunSettings
from coordinator.local import LocalFederation

log_prefix = "chaos:"


@dataclass
class ChaosSettings:
    agents: int = 6
    coordinator_kills: int = 3
    broker_restarts: int = 2
    agent_kills: int = 3
    interval: float = 5.0  # seconds between chaos actions, once training has started
    downtime: float = 1.0  # seconds a killed process stays down
    target_accuracy: float = 0.85
    max_seconds: float = 300.0
    seed: int = 0


@dataclass
class ChaosReport:
    kills: Counter[str] = field(default_factory=Counter)
    restarts: int = 0
    unexpected_exits: list[str] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    best_accuracy: float | None = None
    seconds: float = 0.0
    sent: int = 0
    delivered_twice: int = 0
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    accepted_twice: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    pending: int = 0
    pending_decided: int = 0  # in an outbox yet decided: killed between PUBACK and its log
    exit_codes: dict[str, int | None] = field(default_factory=dict)
    reached: bool = False

    @property
    def versions_increasing(self) -> bool:
        return all(b > a for a, b in zip(self.versions, self.versions[1:], strict=False))

    def summary(self) -> str:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.rejected.items())) or "none"
        span = f"{self.versions[0]}..{self.versions[-1]}" if self.versions else "none"
        return (
            f"{log_prefix} kills coordinator {self.kills['coordinator']}, broker restarts "
            f"{self.kills['broker']}, agent kills {self.kills['agent']} ({self.restarts} "
            f"restarts); updates sent {self.sent}, accepted {self.accepted}, rejected "
            f"{sum(self.rejected.values())} ({reasons}), lost {len(self.lost)}, accepted twice "
            f"{len(self.accepted_twice)}, pending {self.pending} ({self.pending_decided} of them "
            "decided: killed between the PUBACK and its log line); versions "
            f"{span} {'strictly increasing' if self.versions_increasing else 'NOT increasing'}; "
            f"best accuracy {self.best_accuracy if self.best_accuracy is not None else '-'}"
            f" in {self.seconds:.0f} s; unexpected exits {len(self.unexpected_exits)}"
        )


class ChaosRun(LocalFederation):
    """The local federation's processes and configs, driven through a chaos schedule."""

    def __init__(self, settings: ChaosSettings, output: Path) -> None:
        super().__init__(
            LocalRunSettings(
                agents=settings.agents,
                stragglers=0,
                output=output,
                seed=settings.seed,
                stop={"max_seconds": settings.max_seconds * 2},  # a safety net only
                strategy={"name": "fedbuff", "buffer_size": 3},
            )
        )
        self.chaos = settings
        self.report = ChaosReport()
        self._rng = random.Random(settings.seed)
        self._expected_down: set[str] = set()
        self._accuracy_reached = asyncio.Event()
        self._status: CoordinatorStatus | None = None

    # --- observation --------------------------------------------------------------------

    async def _observe(self, topic: str, payload: bytes, ack: Ack) -> None:
        ack()
        try:
            if topic == self.topics.events:
                event = parse(Event, payload)
                if event.type == EventType.VERSION and event.version is not None:
                    self.report.versions.append(event.version)
                    if event.accuracy is not None:
                        best = self.report.best_accuracy
                        self.report.best_accuracy = max(best or 0.0, event.accuracy)
                        if event.accuracy >= self.chaos.target_accuracy:
                            self._accuracy_reached.set()
            elif topic == self.topics.coordinator_status and payload:
                self._status = parse(CoordinatorStatus, payload)
        except Exception as error:
            print(f"{log_prefix} unreadable message on {topic}: {error}")

    def _monitor_client(self) -> aiomqtt.Client:
        assert self.broker is not None
        connection = self.broker.connection(MONITOR)
        return aiomqtt.Client(
            "127.0.0.1",
            self.broker.port,
            username=MONITOR,
            password=connection.password.get_secret_value() if connection.password else None,
            identifier="fedmq-chaos-monitor",
            clean_session=False,  # events published while the broker restarts are kept
        )

    # --- processes ----------------------------------------------------------------------

    def _processes(self) -> dict[str, subprocess.Popen[bytes] | None]:
        return {"coordinator": self.coordinator, **self.agents}

    def _check_exits(self) -> None:
        for name, process in self._processes().items():
            if (
                process is not None
                and process.poll() is not None
                and name not in self._expected_down
            ):
                self.report.unexpected_exits.append(f"{name} exited with {process.returncode}")
                self._expected_down.add(name)  # reported once; not restarted: that would hide it

    def _kill(self, name: str) -> None:
        process = self._processes()[name]
        self._expected_down.add(name)
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()

    def _start(self, name: str) -> None:
        if name == "coordinator":
            self.coordinator = self._spawn(
                "coordinator", self.output / "configs" / "coordinator.yaml", "coordinator.log"
            )
        else:
            self._start_agent(name)
        self._expected_down.discard(name)
        self.report.restarts += 1

    async def _act(self, action: str) -> None:
        if action == "broker":
            assert isinstance(self.broker, DevBroker)
            print(f"{log_prefix} restarting the broker")
            await asyncio.to_thread(self.broker.restart)
            self.report.kills["broker"] += 1
            return
        name = action if action == "coordinator" else self._rng.choice(self.agent_names())
        print(f"{log_prefix} SIGKILL {name}")
        self._kill(name)
        self.report.kills["coordinator" if name == "coordinator" else "agent"] += 1
        await asyncio.sleep(self.chaos.downtime)
        self._start(name)

    def _schedule(self) -> list[str]:
        c = self.chaos
        actions = (
            ["coordinator"] * c.coordinator_kills
            + ["broker"] * c.broker_restarts
            + ["agent"] * c.agent_kills
        )
        self._rng.shuffle(actions)
        return actions

    # --- the run ------------------------------------------------------------------------

    async def run_chaos(self) -> ChaosReport:
        import shutil

        for stale in ("state", "broker", "logs"):
            shutil.rmtree(self.output / stale, ignore_errors=True)
        (self.output / "logs").mkdir(parents=True, exist_ok=True)
        self.broker = DevBroker(self.output / "broker", prefix="fedmq")  # persistence on
        self.broker.start()
        stop_monitor = asyncio.Event()
        monitor = Session(
            self._monitor_client,
            [self.topics.events, self.topics.coordinator_status],
            on_message=self._observe,
            on_connect=_nothing,
            stop=stop_monitor,
            log=_quiet_log(),
            bytes_per_second=1e6,
        )
        monitor_task = asyncio.create_task(monitor.run())
        started = time.monotonic()
        try:
            self._write_configs(self.broker)
            self._start("coordinator")
            for name in self.agent_names():
                self._start(name)
            self.report.restarts = 0
            await self._wait(lambda: len(self.report.versions) >= 2, started)
            for action in self._schedule():
                await self._act(action)
                await self._sleep_checking(self.chaos.interval)
            await self._wait(self._accuracy_reached.is_set, started)
            self.report.reached = True
        finally:
            self.report.seconds = time.monotonic() - started
            await self._wind_down()
            stop_monitor.set()
            await asyncio.wait([monitor_task], timeout=5)
        self._audit()
        return self.report

    async def _sleep_checking(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._check_exits()
            await asyncio.sleep(0.2)

    async def _wait(self, condition: Any, started: float) -> None:
        while not condition():
            self._check_exits()
            if time.monotonic() - started > self.chaos.max_seconds:
                raise TimeoutError(f"chaos run over {self.chaos.max_seconds:.0f} s")
            await asyncio.sleep(0.2)

    async def _wind_down(self) -> None:
        """Agents first (their outboxes keep anything unsent), then let the coordinator
        decide what the broker still holds, then stop it and the broker."""
        for name in self.agent_names():
            self._expected_down.add(name)
        await asyncio.to_thread(self._terminate_all_agents)
        quiet_since, last = time.monotonic(), None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and time.monotonic() - quiet_since < 3:
            status = self._status
            seen = None if status is None else (status.accepted, status.rejected, status.buffered)
            if seen != last:
                quiet_since, last = time.monotonic(), seen
            await asyncio.sleep(0.2)
        self._expected_down.add("coordinator")
        await asyncio.to_thread(self._terminate, self.coordinator, 20)
        self.report.exit_codes["coordinator"] = (
            None if self.coordinator is None else self.coordinator.returncode
        )
        if self.broker is not None:
            self.broker.stop()

    def _terminate_all_agents(self) -> None:
        for name, process in self.agents.items():
            self._terminate(process, 15)
            self.report.exit_codes[name] = None if process is None else process.returncode

    # --- the audit ----------------------------------------------------------------------

    def _audit(self) -> None:
        state = self.output / "state"
        ledger = [
            json.loads(line)
            for line in (state / "coordinator" / "decisions.jsonl").read_text().splitlines()
            if line.strip()
        ]
        decided = {entry["update_id"] for entry in ledger}
        accepted = Counter(e["update_id"] for e in ledger if e["decision"] == "accepted")
        report = self.report
        report.accepted = sum(accepted.values())
        report.accepted_twice = sorted(i for i, n in accepted.items() if n > 1)
        report.rejected = Counter(e["decision"] for e in ledger if e["decision"] != "accepted")
        sent: Counter[str] = Counter()
        for name in self.agent_names():
            for path in (state / name).glob("sent.jsonl*"):
                for line in path.read_text().splitlines():
                    if line.strip():
                        sent[json.loads(line)["update_id"]] += 1
            for kept in (state / name / "outbox").glob("*.upd"):
                report.pending += 1
                report.pending_decided += kept.stem.partition("-")[2] in decided
        report.sent = len(sent)
        report.delivered_twice = sum(1 for n in sent.values() if n > 1)
        report.lost = sorted(set(sent) - decided)


async def _nothing() -> None:
    return None


def _quiet_log() -> Any:
    import logging

    log = logging.getLogger("fedmq.chaos.monitor")
    log.setLevel(logging.ERROR)
    return log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = ChaosSettings()
    for name, value in vars(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--output", type=Path, default=Path("results/chaos"))
    arguments = vars(parser.parse_args())
    output = arguments.pop("output")
    report = asyncio.run(ChaosRun(ChaosSettings(**arguments), output).run_chaos())
    print(report.summary())
    ok = (
        report.reached
        and report.versions_increasing
        and not report.lost
        and not report.accepted_twice
        and not report.unexpected_exits
    )
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
