"""Coordinator settings: job, broker, task, strategy, training settings sent to agents,
stopping rule and state directory."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from common.messages import Mode, TrainingSettings
from configs.broker import BrokerConnection
from configs.loading import default_tag
from configs.task import TOPIC_LEVEL, TaskSettings


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FedBuffSettings(_Strict):
    """Buffer K updates; each weighs num_samples x (1 + staleness)^-0.5."""

    name: Literal["fedbuff"] = "fedbuff"
    buffer_size: int = Field(4, ge=1, description="K: updates per new version")
    max_staleness: int = Field(10, ge=0)
    server_learning_rate: float = Field(1.0, gt=0)


class FedAsyncSettings(_Strict):
    """Mix each update in at once: x += a * s(staleness) * delta."""

    name: Literal["fedasync"] = "fedasync"
    mixing: float = Field(0.6, gt=0, le=1, description="a")
    staleness_function: Literal["constant", "polynomial", "hinge"] = "polynomial"
    exponent: float = Field(0.5, ge=0, description="p of the polynomial (t - tau + 1)^-p")
    hinge_a: float = Field(10.0, ge=0)
    hinge_b: int = Field(4, ge=0)
    max_staleness: int = Field(10, ge=0)


class FedAvgSettings(_Strict):
    """Synchronous rounds: wait for every expected agent, or until the deadline once a
    quorum has answered."""

    name: Literal["fedavg"] = "fedavg"
    deadline_seconds: float | None = Field(
        None, gt=0, description="None waits for every expected agent"
    )
    min_quorum: int = Field(1, ge=1)
    expected_agents: int | None = Field(
        None, ge=1, description="None: the agents online when the round starts"
    )
    late_updates: Literal["drop", "apply"] = "drop"
    max_staleness: int = Field(1, ge=0, description="for late updates applied as stale")
    server_learning_rate: float = Field(1.0, gt=0)


StrategySettings = FedBuffSettings | FedAsyncSettings | FedAvgSettings


class StopSettings(_Strict):
    target_accuracy: float | None = Field(None, gt=0, le=1)
    max_versions: int | None = Field(None, ge=1)
    max_seconds: float | None = Field(None, gt=0)


class RateLimitSettings(_Strict):
    """Per agent: a burst, then a steady rate; beyond it updates are refused unread."""

    updates_per_minute: float = Field(600.0, gt=0)
    burst: int = Field(30, ge=1)


class MetricsEndpoint(_Strict):
    """The Prometheus endpoint (``/metrics``); off unless a port is set."""

    host: str = Field("127.0.0.1", description="address to listen on; 0.0.0.0 for every one")
    port: int | None = Field(None, ge=0, le=65535, description="None: off; 0: a free port")


class CoordinatorSettings(_Strict):
    job: str = Field("digits", pattern=TOPIC_LEVEL, description="a single topic level")
    topic_prefix: str = Field("fedmq", pattern=TOPIC_LEVEL)

    broker: BrokerConnection = Field(
        default_factory=lambda: BrokerConnection(username="coordinator")
    )
    task: TaskSettings = Field(default_factory=TaskSettings)
    strategy: StrategySettings = Field(default_factory=FedBuffSettings, discriminator="name")
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    mode: Mode | None = Field(None, description="None: sync for fedavg, async otherwise")
    stop: StopSettings = Field(default_factory=StopSettings)
    state_dir: Path = Path("state/coordinator")
    evaluate_every: int = Field(1, ge=0, description="versions between evaluations; 0 never")
    heartbeat_seconds: float = Field(2.0, gt=0)
    clip_norm: float | None = Field(None, gt=0, description="L2 norm limit of an update")
    norm_policy: Literal["clip", "reject"] = Field(
        "clip", description="beyond clip_norm: scale the update down, or refuse it"
    )
    rate_limit: RateLimitSettings = Field(default_factory=RateLimitSettings)
    snapshot_every: int = Field(
        64, ge=1, description="journal records between snapshots (and one per version)"
    )

    max_update_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    duplicate_window: int = Field(10_000, ge=1, description="recent update ids remembered")
    seed: int = 0
    metrics: MetricsEndpoint = Field(default_factory=MetricsEndpoint)

    _strategy_tag = field_validator("strategy", mode="before")(default_tag("name", "fedbuff"))

    @model_validator(mode="after")
    def _coordinator_account(self) -> CoordinatorSettings:
        """The ACL knows the coordinator by this account: a broker section that names only
        the host keeps it."""
        if self.broker.username is None:
            self.broker = self.broker.model_copy(update={"username": "coordinator"})
        return self

    @property
    def effective_mode(self) -> Mode:
        if self.mode is not None:
            return self.mode
        return Mode.SYNC if self.strategy.name == "fedavg" else Mode.ASYNC
