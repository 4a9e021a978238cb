"""The learning task: which model, which data."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from configs.loading import default_tag

TOPIC_LEVEL = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
"""Job, prefix and agent names are single MQTT topic levels (as codec.envelope.IDENTIFIER)."""


class DigitsData(BaseModel):
    """A shard of the bundled digits set (Dirichlet label skew over ``num_agents``)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["digits"] = "digits"
    num_agents: int = Field(8, ge=1, le=100)
    shard: int = Field(0, ge=0, description="this device's shard (agents only)")
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration: smaller, more skew")
    seed: int = 0
    test_fraction: float = Field(0.2, gt=0, lt=1)

    @model_validator(mode="after")
    def _shard_exists(self) -> DigitsData:
        if self.shard >= self.num_agents:
            raise ValueError(f"shard {self.shard} does not exist among {self.num_agents} agents")
        return self


class NpzData(BaseModel):
    """A device's own ``.npz`` file with arrays ``x`` and ``y``."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["npz"] = "npz"
    path: Path


class TaskSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        "mlp", pattern=r"^(mlp|cnn|[\w.]+:\w+)$", description="mlp, cnn, or module:function"
    )
    data: DigitsData | NpzData = Field(default_factory=DigitsData, discriminator="kind")
    input_shape: tuple[int, ...] = (64,)
    num_classes: int = Field(10, ge=2)

    _data_tag = field_validator("data", mode="before")(default_tag("kind", "digits"))
