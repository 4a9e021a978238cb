"""Edge agent settings."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from configs.broker import BrokerConnection
from configs.task import TOPIC_LEVEL, TaskSettings


class AgentSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent_id: str = Field("agent-0", pattern=TOPIC_LEVEL, description="its MQTT username too")
    job: str = Field("digits", pattern=TOPIC_LEVEL)
    topic_prefix: str = Field("fedmq", pattern=TOPIC_LEVEL)

    broker: BrokerConnection = Field(default_factory=BrokerConnection)
    task: TaskSettings = Field(default_factory=TaskSettings)
    state_dir: Path = Path("state/agent")
    outbox_max: int = Field(
        8, ge=1, description="updates kept for sending while the broker is away (oldest dropped)"
    )

    heartbeat_seconds: float = Field(5.0, gt=0)
    slowdown: float = Field(
        1.0, ge=1.0, description="simulated straggler: a round lasts this many times longer"
    )
    threads: int | None = Field(1, ge=1, description="TensorFlow thread pools; None = all")
    seed: int | None = Field(None, description="None draws fresh randomness for each round")
    thermal_root: Path = Field(
        Path("/sys/class/thermal"), description="where the thermal zones are (sysfs)"
    )
    defer_training_above_c: float | None = Field(
        None, description="defer training while the hottest zone is above this; None never"
    )
    resume_training_below_c: float = Field(70.0, description="resume once below this")
    ignore_thermal_zones: list[str] = Field(
        ["PMIC-Die"], description="zone types that are no temperature (Jetson's PMIC-Die: 100 C)"
    )
    sysfs_root: Path = Field(
        Path("/sys"), description="where Jetson GPU load and power rails are read (sysfs)"
    )
    metrics_host: str = Field("127.0.0.1", description="address of the Prometheus endpoint")
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Prometheus endpoint port; None: off; 0: a free port"
    )
    nice: int = Field(
        0, ge=0, le=19, description="lower the process priority (a shared machine, a local run)"
    )

    @model_validator(mode="after")
    def _identity(self) -> AgentSettings:
        """The broker's ACL lets an agent write only topics named after its username (the
        certificate's CN with TLS): another name here and every update would be dropped."""
        username = self.broker.username
        if username is not None and username != self.agent_id:
            raise ValueError(
                f"broker.username {username!r} differs from agent_id {self.agent_id!r}: "
                "the ACL would refuse every update"
            )
        tls = self.broker.tls
        name = tls.certificate_name() if tls is not None else None
        if name is not None and name != self.agent_id:
            raise ValueError(
                f"the client certificate is for {name!r}, not agent_id {self.agent_id!r}: "
                "the broker would refuse every update"
            )
        return self

    @model_validator(mode="after")
    def _hysteresis(self) -> AgentSettings:

        above = self.defer_training_above_c
        if above is not None and self.resume_training_below_c >= above:
            raise ValueError("resume_training_below_c must be below defer_training_above_c")
        return self
