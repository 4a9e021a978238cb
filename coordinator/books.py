"""The coordinator's bookkeeping besides the model: counters, per-agent books, the window
of recent update ids and per-agent rate limits. Everything but the rate limits is persisted
in snapshots (``to_json``/``from_json``), so a restart resumes with the same books."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Counters:
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    uplink_bytes: int = 0

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, fields: dict[str, Any]) -> Counters:
        return cls(
            accepted=int(fields["accepted"]),
            rejected={str(k): int(v) for k, v in fields["rejected"].items()},
            uplink_bytes=int(fields["uplink_bytes"]),
        )


@dataclass
class AgentBook:
    """What the coordinator knows of one agent from its updates (its status is its own)."""

    accepted: int = 0
    rejected: int = 0
    uplink_bytes: int = 0
    last_update_at: float | None = None
    last_staleness: int | None = None


def books_to_json(books: dict[str, AgentBook]) -> dict[str, Any]:
    return {agent: asdict(book) for agent, book in books.items()}


def books_from_json(fields: dict[str, Any]) -> dict[str, AgentBook]:
    return {str(agent): AgentBook(**values) for agent, values in fields.items()}


class RecentIds:
    """A bounded window of update ids: a redelivered or replayed update is applied once."""

    def __init__(self, size: int, ids: list[str] | None = None) -> None:
        self._size = size
        self._ids: OrderedDict[str, None] = OrderedDict()
        for update_id in ids or []:
            self.add(update_id)

    def __contains__(self, update_id: str) -> bool:
        return update_id in self._ids

    def add(self, update_id: str) -> None:
        self._ids[update_id] = None
        while len(self._ids) > self._size:
            self._ids.popitem(last=False)

    def to_json(self) -> list[str]:
        return list(self._ids)


class RateLimiter:
    """A token bucket per agent: ``burst`` updates at once, refilled at ``per_minute``. One
    agent's flood is refused cheaply, before it is decoded or journaled, and cannot crowd
    out the others."""

    def __init__(self, per_minute: float, burst: int, max_agents: int = 100_000) -> None:
        self._rate = per_minute / 60.0
        self._burst = float(burst)
        self._max_agents = max_agents
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, agent: str, now: float) -> bool:
        tokens, since = self._buckets.pop(agent, (self._burst, now))
        tokens = min(self._burst, tokens + (now - since) * self._rate)
        allowed = tokens >= 1.0
        self._buckets[agent] = (tokens - 1.0 if allowed else tokens, now)
        while len(self._buckets) > self._max_agents:  # bounded even under many identities
            self._buckets.popitem(last=False)
        return allowed
