"""The coordinator's bookkeeping: the per-agent token bucket (a burst, then a steady rate,
each agent on its own, bounded memory), the window of recent update ids and the counters,
and their JSON round trips (they are persisted in snapshots)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.books import (
    AgentBook,
    Counters,
    RateLimiter,
    RecentIds,
    books_from_json,
    books_to_json,
)

# --- RateLimiter -----------------------------------------------------------------------------


def allowed(limiter: RateLimiter, agent: str, count: int, now: float) -> int:
    return sum(limiter.allow(agent, now) for _ in range(count))


@pytest.mark.parametrize("burst", [1, 5, 30])
def test_a_burst_is_allowed_at_once_and_no_more(burst: int):
    limiter = RateLimiter(per_minute=60, burst=burst)
    assert allowed(limiter, "a", burst + 10, now=100.0) == burst


def test_after_the_burst_the_steady_rate_refills():
    limiter = RateLimiter(per_minute=120, burst=3)  # 2 a second
    assert allowed(limiter, "a", 3, now=0.0) == 3
    assert not limiter.allow("a", 0.1)
    assert not limiter.allow("a", 0.4)  # 0.8 tokens by now
    assert limiter.allow("a", 0.5)  # 1.0
    assert not limiter.allow("a", 0.5)
    # over 30 s of steady sending, about rate x time get through
    sent = [limiter.allow("a", 1.0 + i * 0.01) for i in range(3000)]
    assert 59 <= sum(sent) <= 61


def test_a_quiet_agent_refills_to_the_burst_and_no_further():
    limiter = RateLimiter(per_minute=60, burst=4)
    assert allowed(limiter, "a", 4, now=0.0) == 4
    assert allowed(limiter, "a", 10, now=3600.0) == 4


def test_agents_have_independent_buckets():
    limiter = RateLimiter(per_minute=60, burst=2)
    assert allowed(limiter, "flooder", 100, now=0.0) == 2
    assert allowed(limiter, "quiet", 2, now=0.0) == 2
    assert not limiter.allow("flooder", 0.5)
    assert limiter.allow("other", 0.5)


def test_a_clock_going_backwards_grants_nothing_extra():
    limiter = RateLimiter(per_minute=60, burst=1)
    assert limiter.allow("a", 100.0)
    assert not limiter.allow("a", 50.0)
    assert not limiter.allow("a", 100.5)


def test_memory_stays_bounded_under_many_identities():
    limiter = RateLimiter(per_minute=60, burst=1, max_agents=100)
    for i in range(10_000):
        assert limiter.allow(f"sybil-{i}", 0.0)  # a new identity starts with a full bucket
    assert len(limiter._buckets) == 100
    # the most recent identities are the ones remembered
    assert not limiter.allow("sybil-9999", 0.0)


@settings(max_examples=200, deadline=None)
@given(
    burst=st.integers(1, 20),
    per_minute=st.floats(1, 6000),
    gaps=st.lists(st.floats(0, 5), max_size=200),
)
def test_never_more_than_burst_plus_rate_times_elapsed(
    burst: int, per_minute: float, gaps: list[float]
):
    limiter = RateLimiter(per_minute=per_minute, burst=burst)
    now, granted = 0.0, 0
    for gap in gaps:
        now += gap
        granted += limiter.allow("a", now)
    assert granted <= burst + per_minute / 60 * now + 1e-6


# --- RecentIds -------------------------------------------------------------------------------


def test_recent_ids_remember_a_window_of_the_newest():
    recent = RecentIds(3)
    for update_id in "abcd":
        recent.add(update_id)
    assert "a" not in recent
    assert all(update_id in recent for update_id in "bcd")
    assert recent.to_json() == ["b", "c", "d"]


def test_recent_ids_round_trip_through_json_in_order():
    recent = RecentIds(4, ["x", "y"])
    recent.add("z")
    restored = RecentIds(4, json.loads(json.dumps(recent.to_json())))
    assert restored.to_json() == ["x", "y", "z"]
    restored.add("w")
    restored.add("v")  # the oldest goes first after a restore too
    assert restored.to_json() == ["y", "z", "w", "v"]


def test_recent_ids_restored_into_a_smaller_window_keep_the_newest():
    restored = RecentIds(2, ["a", "b", "c"])
    assert restored.to_json() == ["b", "c"]


# --- Counters and agent books ----------------------------------------------------------------


def test_counters_round_trip_through_json():
    counters = Counters()
    counters.accepted = 7
    counters.uplink_bytes = 12345
    for reason in ["malformed", "stale", "malformed", "rate_limited"]:
        counters.reject(reason)
    restored = Counters.from_json(json.loads(json.dumps(counters.to_json())))
    assert restored == counters
    assert restored.rejected_total == 4
    assert restored.rejected == {"malformed": 2, "stale": 1, "rate_limited": 1}


def test_agent_books_round_trip_through_json():
    books = {
        "edge-1": AgentBook(accepted=3, rejected=1, uplink_bytes=900, last_update_at=12.5),
        "edge-2": AgentBook(last_staleness=4),
    }
    assert books_from_json(json.loads(json.dumps(books_to_json(books)))) == books
