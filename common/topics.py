"""The topic tree: ``<prefix>/<job>/...``. One home for every topic name (see
docs/protocol.md for who publishes what, QoS and retain flags)."""

from __future__ import annotations

from dataclasses import dataclass

from codec.envelope import IDENTIFIER
from common.errors import ProtocolError


def check_level(kind: str, value: str) -> str:
    """Job, agent and prefix names are single topic levels: no ``/``, ``+`` or ``#``."""
    if not IDENTIFIER.fullmatch(value):
        raise ProtocolError(
            f"{kind} {value!r} is not a valid topic level (1-128 of A-Z a-z 0-9 _ . -, "
            "starting with a letter or digit)"
        )
    return value


@dataclass(frozen=True)
class Topics:
    prefix: str
    job: str

    def __post_init__(self) -> None:
        check_level("topic prefix", self.prefix)
        check_level("job id", self.job)

    @property
    def root(self) -> str:
        return f"{self.prefix}/{self.job}"

    @property
    def model(self) -> str:
        """Retained, QoS 1: the current global model (codec model envelope)."""
        return f"{self.root}/model"

    @property
    def control(self) -> str:
        """Retained, QoS 1, JSON: run/pause/stop and the training settings."""
        return f"{self.root}/control"

    @property
    def coordinator_status(self) -> str:
        """Retained, QoS 1, JSON: the coordinator's state."""
        return f"{self.root}/coordinator/status"

    @property
    def command(self) -> str:
        """QoS 1, not retained, JSON: an operator's pause/resume/stop for the coordinator."""
        return f"{self.root}/coordinator/command"

    @property
    def events(self) -> str:
        """QoS 1, JSON: one event per message."""
        return f"{self.root}/events"

    def update(self, agent: str) -> str:
        """QoS 1: an agent's update envelope."""
        return f"{self.root}/update/{check_level('agent id', agent)}"

    def agent_status(self, agent: str) -> str:
        """Retained, QoS 1, JSON: an agent's state (also its last will: offline)."""
        return f"{self.root}/agents/{check_level('agent id', agent)}/status"

    @property
    def all_updates(self) -> str:
        return f"{self.root}/update/+"

    @property
    def all_agent_statuses(self) -> str:
        return f"{self.root}/agents/+/status"

    @property
    def every_filter(self) -> tuple[str, ...]:
        """One filter per kind of topic of this job, each explicit (no ``#``: a broker may
        grant a filter only inside one allowed pattern), for checking who can read what."""
        return (
            self.all_updates,
            self.all_agent_statuses,
            self.model,
            self.control,
            self.coordinator_status,
            self.events,
            self.command,
        )

    def agent_of_update(self, topic: str) -> str | None:
        """The agent id of an update topic of this job, or None for any other topic."""
        head = f"{self.root}/update/"
        if not topic.startswith(head):
            return None
        agent = topic[len(head) :]
        return agent if IDENTIFIER.fullmatch(agent) else None

    def agent_of_status(self, topic: str) -> str | None:
        head, tail = f"{self.root}/agents/", "/status"
        if not (topic.startswith(head) and topic.endswith(tail)):
            return None
        agent = topic[len(head) : -len(tail)]
        return agent if IDENTIFIER.fullmatch(agent) else None
