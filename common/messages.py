"""The JSON messages on fedmq's topics: compact, stable field names, validated on receipt.

People read these with ``mosquitto_sub -v``; programs parse them with ``parse``. Fields that
do not apply are left out (never ``null``). Tensors never travel here: only in codec
envelopes on the ``model`` and ``update`` topics.
"""

from __future__ import annotations

import time
import uuid
from enum import Enum
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from codec import CodecError, get_codec
from common.errors import ProtocolError
from common.validation import first_problem

MAX_JSON_BYTES = 64 * 1024


class Message(BaseModel):
    # Unknown fields are ignored so that newer senders can add fields without breaking
    # older readers; every field that is present is validated.
    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


M = TypeVar("M", bound=Message)


def parse(kind: type[M], payload: bytes | str) -> M:
    """Validate a received JSON message; ProtocolError names the first bad field."""
    size = len(payload.encode()) if isinstance(payload, str) else len(payload)
    if size > MAX_JSON_BYTES:
        raise ProtocolError(f"{kind.__name__}: {size} bytes exceed {MAX_JSON_BYTES}")
    try:
        return kind.model_validate_json(payload)
    except ValidationError as error:
        raise ProtocolError(f"{kind.__name__}.{first_problem(error, 'message')}") from error


# --- agent --------------------------------------------------------------------------------


class AgentState(str, Enum):
    ONLINE = "online"
    TRAINING = "training"
    IDLE = "idle"
    ERROR = "error"
    OFFLINE = "offline"


class AgentStatus(Message):
    """``<job>/agents/<agent>/status`` (retained; the last will sets ``offline``)."""

    agent: str
    state: AgentState
    heartbeat: float = Field(default_factory=time.time, description="unix time of this status")
    base_version: int | None = Field(None, ge=0, description="model version trained from")
    last_update: str | None = Field(None, description="id of the last update sent")
    last_update_at: float | None = None
    updates_sent: int = Field(0, ge=0)
    uploads_skipped: int = Field(0, ge=0, description="rounds the lazy-upload rule skipped")
    uplink_bytes: int = Field(0, ge=0)
    error: str | None = None
    temperature_c: float | None = Field(None, description="hottest thermal zone, if any")
    deferred: str | None = Field(None, description="why training waits (e.g. too hot)")
    gpu_load: float | None = Field(None, ge=0, le=1, description="Jetson GPU load, if any")
    power_mw: int | None = Field(None, ge=0, description="module power (mW), if measured")
    power_rails_mw: dict[str, int] | None = Field(None, description="mW per measured rail")


# --- control ------------------------------------------------------------------------------


class RunState(str, Enum):
    RUN = "run"
    PAUSE = "pause"
    STOP = "stop"


class Mode(str, Enum):
    ASYNC = "async"  # train again on the newest model right after publishing
    SYNC = "sync"  # one update per model version (FedAvg rounds)


class LazyUpload(Message):
    """LAQ's skip rule (Sun et al. 2019): skip an upload whose change since the last upload
    is small against recent model movement; force one after ``max_skips`` skips."""

    enabled: bool = False
    history: int = Field(10, ge=1, le=100, description="D: model versions remembered")
    weight: float = Field(0.8, gt=0, description="sum of the xi_d over the history")
    scale: float = Field(1.0, gt=0, description="1 / (alpha^2 M^2)")
    max_skips: int = Field(100, ge=0, description="C: forced upload after this many skips")


class TrainingSettings(Message):
    epochs: int = Field(1, ge=1, le=1000)
    batch_size: int = Field(32, ge=1, le=65536)
    learning_rate: float = Field(0.1, gt=0, le=10)
    codec: dict[str, Any] = Field(
        default_factory=lambda: {"id": "uniform", "bits": 8}, validate_default=True
    )
    error_feedback: bool = True
    lazy_upload: LazyUpload = Field(default_factory=LazyUpload)

    @field_validator("codec")
    @classmethod
    def _known_codec(cls, config: dict[str, Any]) -> dict[str, Any]:
        try:
            return get_codec(config).get_config()
        except CodecError as error:
            raise ValueError(str(error)) from error


class Control(Message):
    """``<job>/control`` (retained): what every agent must do and how."""

    state: RunState = RunState.RUN
    mode: Mode = Mode.ASYNC
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    issued_at: float = Field(default_factory=time.time)
    command_id: str | None = Field(None, description="the operator command that set state")


class CommandAction(str, Enum):
    PAUSE = "pause"
    RESUME = "resume"
    STOP = "stop"


class Command(Message):
    """``<job>/coordinator/command`` (not retained): an operator asks the coordinator to
    change the control state. It confirms by republishing the control with ``command_id``."""

    action: CommandAction
    id: str = Field(default_factory=lambda: uuid.uuid4().hex, min_length=1, max_length=64)
    issued_at: float = Field(default_factory=time.time)
    reason: str | None = Field(None, max_length=500, description="why, for people")
    by: str | None = Field(None, max_length=128, description="who, for people")


# --- coordinator --------------------------------------------------------------------------


class CoordinatorState(str, Enum):
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"
    DONE = "done"


class CoordinatorStatus(Message):
    """``<job>/coordinator/status`` (retained, refreshed as a heartbeat)."""

    job: str
    state: CoordinatorState
    version: int = Field(ge=0)
    strategy: str
    heartbeat: float = Field(default_factory=time.time)
    buffered: int = Field(0, ge=0, description="updates waiting for the next version")
    agents_seen: int = Field(0, ge=0)
    agents_online: int = Field(0, ge=0)
    accepted: int = Field(0, ge=0)
    rejected: int = Field(0, ge=0)
    uplink_bytes: int = Field(0, ge=0, description="update payload bytes received")
    last_accuracy: float | None = None
    started_at: float | None = None


class EventType(str, Enum):
    UPDATE_ACCEPTED = "update_accepted"
    UPDATE_REJECTED = "update_rejected"
    VERSION = "version"
    AGENT_JOINED = "agent_joined"
    AGENT_LEFT = "agent_left"
    STATE = "state"
    COMMAND_REJECTED = "command_rejected"


class Event(Message):
    """``<job>/events``: one event per message."""

    type: EventType
    time: float = Field(default_factory=time.time)
    agent: str | None = None
    update_id: str | None = None
    version: int | None = None
    base_version: int | None = None
    staleness: int | None = None
    reason: str | None = None
    detail: str | None = None
    accuracy: float | None = None
    num_samples: int | None = None
    bytes: int | None = None
    command_id: str | None = None
    by: str | None = None
