"""Settings of a local federation: broker, coordinator and agents on this machine."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from common.messages import Mode, TrainingSettings
from configs.coordinator import FedBuffSettings, StopSettings, StrategySettings
from configs.loading import default_tag
from configs.task import TOPIC_LEVEL


class LocalRunSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job: str = Field("digits", pattern=TOPIC_LEVEL)

    agents: int = Field(8, ge=1, le=64)
    stragglers: int = Field(2, ge=0, description="how many agents are slowed down")
    slowdown: float = Field(5.0, ge=1.0, description="a straggler's round lasts this much longer")
    dropouts: int = Field(0, ge=0, description="agents stopped for a while mid-run")
    dropout_after_seconds: float = Field(20.0, ge=0, description="after training starts")
    dropout_for_seconds: float = Field(20.0, gt=0)
    model: str = "mlp"
    alpha: float = Field(0.5, gt=0, description="Dirichlet label skew over the agents")
    strategy: StrategySettings = Field(default_factory=FedBuffSettings, discriminator="name")
    mode: Mode | None = None
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    stop: StopSettings = Field(
        default_factory=lambda: StopSettings(
            target_accuracy=0.95, max_versions=2000, max_seconds=240
        )
    )
    output: Path = Path("results/local")
    seed: int = 0
    start_timeout_seconds: float = Field(180.0, gt=0, description="for every agent to be ready")

    _strategy_tag = field_validator("strategy", mode="before")(default_tag("name", "fedbuff"))

    @model_validator(mode="after")
    def _counts(self) -> LocalRunSettings:
        if self.stragglers > self.agents or self.dropouts > self.agents:
            raise ValueError("stragglers and dropouts cannot exceed the number of agents")
        return self
