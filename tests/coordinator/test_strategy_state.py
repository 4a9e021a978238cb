"""A strategy's exported state, restored into a fresh strategy (as after a restart), gives
the same next versions bit for bit as the strategy that never stopped; FedAvg's ``due``
says exactly what ``tick`` would do."""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from configs.coordinator import StrategySettings
from coordinator import state
from coordinator.strategies import GlobalModel, Strategy, make_strategy
from coordinator.strategies.fedavg import FedAvg
from tests.coordinator.test_strategies import (
    arrays,
    contribution,
    fedasync_settings,
    fedavg_settings,
    fedbuff_settings,
    model,
)

Step = tuple[str, Any]  # ("apply", Contribution) | ("tick", now) | ("round", (now, online))


def restarted(strategy: Strategy, settings_: StrategySettings, through_snapshot: bool) -> Strategy:
    """A new strategy of the same kind resumed from ``strategy``'s exported state, the way
    the service does it: fields through JSON, arrays (and the model) through a snapshot."""
    fields, buffers = strategy.export_state()
    fields = json.loads(json.dumps(fields))
    weights = {n: v.copy() for n, v in strategy.model.weights.items()}
    buffers = {n: v.copy() for n, v in buffers.items()}
    if through_snapshot:
        saved = state.Snapshot(1, 0, strategy.version, weights, fields, buffers)
        loaded = state._decode(state._encode(saved))
        weights, fields, buffers = loaded.weights, loaded.strategy_fields, loaded.strategy_arrays
    fresh = make_strategy(settings_, GlobalModel(strategy.version, weights))
    fresh.restore_state(fields, buffers)
    return fresh


def run(strategy: Strategy, steps: Sequence[Step]) -> list[Any]:
    """Apply the steps; what each returned (outcomes and tick results)."""
    results: list[Any] = []
    for kind, argument in steps:
        if kind == "apply":
            outcome = strategy.apply(argument, now=1.0)
            results.append((outcome.accepted, outcome.reason, outcome.new_version))
        elif kind == "tick":
            results.append(strategy.tick(argument))
        else:
            strategy.start_round(*argument)
    return results


def assert_identical(a: Strategy, b: Strategy) -> None:
    assert a.version == b.version
    assert a.buffered == b.buffered
    for name, value in a.model.weights.items():
        assert b.model.weights[name].dtype == np.float32
        assert b.model.weights[name].tobytes() == value.tobytes(), name
    fields_a, buffers_a = a.export_state()
    fields_b, buffers_b = b.export_state()
    assert fields_a == fields_b
    assert {n: v.tobytes() for n, v in buffers_a.items()} == {
        n: v.tobytes() for n, v in buffers_b.items()
    }


def check_resume_is_invisible(
    settings_: StrategySettings, steps: Sequence[Step], through_snapshot: bool
) -> None:
    """For every point in ``steps``: stop there, restart, finish; same as never stopping."""

    def make() -> Strategy:
        return make_strategy(settings_, model(10))

    reference = make()
    expected = run(reference, steps)
    assert reference.version > 10  # the steps make versions: the check means something
    for split in range(len(steps) + 1):
        before = make()
        head = run(before, steps[:split])
        resumed = restarted(before, settings_, through_snapshot)
        assert_identical(before, resumed)
        assert head + run(resumed, steps[split:]) == expected, split
        assert_identical(reference, resumed)


def contributions(plan: Sequence[tuple[str, int, int]]) -> list[Step]:
    """(agent, base version, num_samples) -> apply steps with distinct random deltas."""
    return [
        ("apply", contribution(agent, base, n, arrays(300 + i, scale=0.1)))
        for i, (agent, base, n) in enumerate(plan)
    ]


@pytest.mark.parametrize("through_snapshot", [False, True])
def test_fedbuff_resumed_from_its_state_makes_the_same_versions(through_snapshot: bool):
    settings_ = fedbuff_settings(buffer_size=3, max_staleness=4, server_learning_rate=0.9)
    plan = [("a", 10, 20), ("b", 9, 35), ("c", 10, 7), ("d", 8, 50), ("a", 11, 12)]
    plan += [("e", 3, 5), ("b", 11, 60), ("c", 12, 9), ("f", 10, 1)]  # one stale
    check_resume_is_invisible(settings_, contributions(plan), through_snapshot)


@pytest.mark.parametrize("through_snapshot", [False, True])
def test_fedavg_resumed_mid_round_makes_the_same_versions(through_snapshot: bool):
    settings_ = fedavg_settings(
        deadline_seconds=5.0, min_quorum=2, late_updates="apply", max_staleness=1
    )
    steps: list[Step] = [("round", (0.0, 3))]
    steps += contributions([("a", 10, 20), ("b", 10, 40)])
    steps += [("tick", 2.0), ("tick", 6.0)]  # before the deadline: open; after: closes
    steps += [("round", (6.0, 2))]
    steps += contributions([("c", 10, 30), ("a", 11, 10), ("a", 11, 10)])  # late, then twice
    steps += [("tick", 7.0)]  # everyone expected answered
    steps += [("round", (7.0, 4))]
    steps += contributions([("b", 12, 15), ("d", 9, 8)])  # d beyond max_staleness
    steps += [("tick", 9.0), ("tick", 12.5)]
    check_resume_is_invisible(settings_, steps, through_snapshot)


def test_fedasync_has_no_state_besides_the_model():
    settings_ = fedasync_settings()
    strategy = make_strategy(settings_, model(10))
    run(strategy, contributions([("a", 10, 5), ("b", 10, 5)]))
    assert strategy.export_state() == ({}, {})
    resumed = restarted(strategy, settings_, through_snapshot=True)
    assert_identical(strategy, resumed)


@pytest.mark.parametrize("name", ["fedbuff", "fedavg"])
def test_a_buffer_of_another_model_is_refused_on_restore(name: str):
    settings_ = fedbuff_settings() if name == "fedbuff" else fedavg_settings()
    strategy = make_strategy(settings_, model(10))
    fields, buffers = strategy.export_state()
    wrong_shape = {**buffers, "dense/bias:0": np.zeros(5, np.float32)}
    missing = {n: v for n, v in buffers.items() if n != "dense/bias:0"}
    extra = {**buffers, "other": np.zeros(2, np.float32)}
    for bad in (wrong_shape, missing, extra):
        with pytest.raises(ValueError, match="buffer"):
            make_strategy(settings_, model(10)).restore_state(fields, bad)


# --- FedAvg: due predicts tick -----------------------------------------------------------------


fedavg_cases = st.fixed_dictionaries(
    {
        "deadline": st.none() | st.floats(0.5, 10),
        "quorum": st.integers(1, 4),
        "expected": st.none() | st.integers(1, 5),
        "online": st.integers(0, 6),
        "answers": st.lists(st.sampled_from("abcdef"), max_size=6),
        "online_later": st.none() | st.integers(0, 6),
        "ticks": st.lists(st.floats(0, 20), max_size=6),
    }
)


@settings(max_examples=300, deadline=None)
@given(case=fedavg_cases)
def test_fedavg_due_is_exactly_whether_tick_makes_a_version(case: dict[str, Any]):
    strategy = FedAvg(
        fedavg_settings(
            deadline_seconds=case["deadline"],
            min_quorum=case["quorum"],
            expected_agents=case["expected"],
        ),
        GlobalModel(10, arrays(0)),
    )
    strategy.start_round(0.0, case["online"])
    if case["online_later"] is not None:
        strategy.agents_online_changed(case["online_later"])
    for agent in case["answers"]:
        if strategy.version != 10:
            break  # the round closed on an answer; the service starts the next one
        strategy.apply(contribution(agent, 10, 10, arrays(1)), now=0.0)
    for now in sorted(case["ticks"]):
        predicted = strategy.due(now)
        probe = copy.deepcopy(strategy)
        assert probe.tick(now) == predicted
        assert probe.version == strategy.version + predicted
        assert strategy.due(now) == predicted  # due is pure: asking changes nothing
        assert strategy.tick(now) == predicted


@pytest.mark.parametrize(
    "settings_", [fedbuff_settings(buffer_size=2), fedasync_settings()], ids=["fedbuff", "fedasync"]
)
def test_async_strategies_are_never_due(settings_: Any):
    strategy = make_strategy(settings_, model(10))
    strategy.apply(contribution("a", 10, 10, arrays(1)), now=0.0)
    assert not strategy.due(1e9)
    assert not strategy.tick(1e9)
