"""FedBuff, FedAsync and FedAvg against the published formulas, recomputed here in float64
numpy from the raw deltas (fp32 codec, so decoding is exact)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

import codec
from configs.coordinator import FedAsyncSettings, FedAvgSettings, FedBuffSettings
from coordinator.strategies import Contribution, GlobalModel, Strategy, make_strategy
from coordinator.strategies.fedasync import FedAsync
from coordinator.strategies.fedavg import FedAvg
from coordinator.strategies.fedbuff import FedBuff

Arrays = dict[str, npt.NDArray[np.float32]]
SHAPES = {"dense/kernel:0": (3, 4), "dense/bias:0": (4,)}
_ids = itertools.count()


# Settings are built with model_validate: mypy here runs without pydantic's plugin, so it
# takes every field with a default for a required constructor argument.
def fedbuff_settings(**fields: Any) -> FedBuffSettings:
    return FedBuffSettings.model_validate(fields)


def fedasync_settings(**fields: Any) -> FedAsyncSettings:
    return FedAsyncSettings.model_validate(fields)


def fedavg_settings(**fields: Any) -> FedAvgSettings:
    return FedAvgSettings.model_validate(fields)


def arrays(seed: int, scale: float = 1.0) -> Arrays:
    rng = np.random.default_rng(seed)
    return {
        name: (scale * rng.standard_normal(shape)).astype(np.float32)
        for name, shape in SHAPES.items()
    }


def filled(value: float) -> Arrays:
    return {name: np.full(shape, value, dtype=np.float32) for name, shape in SHAPES.items()}


def model(version: int = 10, seed: int = 0) -> GlobalModel:
    return GlobalModel(version=version, weights=arrays(seed))


def contribution(
    agent: str, base_version: int, num_samples: int, delta: Arrays, scale: float = 1.0
) -> Contribution:
    tensors = {t.name: t for t in codec.encode_tensors(delta, "fp32", seed=0)}
    return Contribution(
        agent=agent,
        update_id=f"u{next(_ids)}",
        base_version=base_version,
        num_samples=num_samples,
        tensors=tensors,
        scale=scale,
    )


def snapshot(weights: Mapping[str, np.ndarray]) -> dict[str, npt.NDArray[np.float64]]:
    return {name: np.array(value, dtype=np.float64) for name, value in weights.items()}


def sample_weighted_step(
    old: Mapping[str, np.ndarray],
    items: Sequence[tuple[int, int, Arrays]],
    learning_rate: float,
) -> dict[str, npt.NDArray[np.float64]]:
    """old + lr * sum(n_i (1 + s_i)^-0.5 delta_i) / sum(n_i), from (n, s, delta) items."""
    total = sum(n for n, _, _ in items)
    return {
        name: np.asarray(old[name], dtype=np.float64)
        + learning_rate
        * sum(n * (1.0 + s) ** -0.5 * delta[name].astype(np.float64) for n, s, delta in items)
        / total
        for name in old
    }


def assert_weights(actual: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray]) -> None:
    assert set(actual) == set(expected)
    for name in expected:
        assert actual[name].dtype == np.float32
        np.testing.assert_allclose(actual[name], expected[name], rtol=2e-6, atol=2e-6)


def assert_unchanged(strategy: Strategy, version: int, weights: Mapping[str, np.ndarray]) -> None:
    assert strategy.version == version
    for name, value in weights.items():
        np.testing.assert_array_equal(strategy.model.weights[name], value)


# --- the factory -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "kind"),
    [(fedbuff_settings(), FedBuff), (fedasync_settings(), FedAsync), (fedavg_settings(), FedAvg)],
)
def test_make_strategy_picks_the_class_for_the_settings(settings, kind):
    strategy = make_strategy(settings, model())
    assert type(strategy) is kind
    assert strategy.name == settings.name
    assert strategy.version == 10


# --- FedBuff -----------------------------------------------------------------------------


@pytest.mark.parametrize("buffer_size", [1, 2, 5])
def test_fedbuff_publishes_exactly_one_version_after_k_updates(buffer_size):
    strategy = FedBuff(fedbuff_settings(buffer_size=buffer_size), model(version=10))
    before = snapshot(strategy.model.weights)
    for i in range(buffer_size - 1):
        outcome = strategy.apply(contribution(f"a{i}", 10, 20, arrays(100 + i)), now=0.0)
        assert outcome.accepted
        assert not outcome.new_version
        assert strategy.buffered == i + 1
        assert_unchanged(strategy, 10, before)
    outcome = strategy.apply(contribution("last", 10, 20, arrays(99)), now=0.0)
    assert outcome.accepted
    assert outcome.new_version
    assert strategy.version == 11
    assert strategy.buffered == 0


def test_fedbuff_step_weighs_by_samples_and_staleness():
    settings = fedbuff_settings(buffer_size=4, max_staleness=10, server_learning_rate=0.7)
    strategy = FedBuff(settings, model(version=10))
    before = snapshot(strategy.model.weights)
    # (agent, base version, num_samples): staleness 0, 2, 3 and 7
    plan = [("a", 10, 120), ("b", 8, 30), ("c", 7, 500), ("d", 3, 9)]
    items = []
    for index, (agent, base, n) in enumerate(plan):
        delta = arrays(200 + index)
        outcome = strategy.apply(contribution(agent, base, n, delta), now=float(index))
        assert outcome.accepted
        assert outcome.staleness == 10 - base
        items.append((n, 10 - base, delta))
    assert outcome.new_version
    assert_weights(strategy.model.weights, sample_weighted_step(before, items, 0.7))


def test_fedbuff_many_sample_agent_outweighs_few_sample_agent():
    """NVFlare #4899: weigh by samples, not by update. Equal weighting would give 0 here."""
    start = GlobalModel(version=5, weights=filled(0.0))
    strategy = FedBuff(fedbuff_settings(buffer_size=2), start)
    strategy.apply(contribution("big", 5, 1000, filled(1.0)), now=0.0)
    strategy.apply(contribution("small", 5, 10, filled(-1.0)), now=0.0)
    assert strategy.version == 6
    for value in strategy.model.weights.values():
        np.testing.assert_allclose(value, 990 / 1010, rtol=1e-6)


def test_fedbuff_sample_weighting_with_mixed_staleness_differs_from_per_update_weighting():
    start = GlobalModel(version=8, weights=filled(0.0))
    strategy = FedBuff(fedbuff_settings(buffer_size=2), start)
    strategy.apply(contribution("big", 5, 900, filled(2.0)), now=0.0)  # staleness 3
    strategy.apply(contribution("small", 8, 100, filled(-4.0)), now=0.0)  # staleness 0
    by_samples = (900 * 0.5 * 2.0 + 100 * 1.0 * -4.0) / 1000  # 0.5
    per_update = (0.5 * 2.0 + 1.0 * -4.0) / 2  # -1.5
    for value in strategy.model.weights.values():
        np.testing.assert_allclose(value, by_samples, rtol=1e-6)
        assert not np.allclose(value, per_update)


def test_fedbuff_lone_stale_update_moves_the_model_less():
    """The buffer is normalised by sum(n_i), not by the discounted weights: staleness 3
    halves the step even when the update is alone in the buffer."""
    start = GlobalModel(version=3, weights=filled(1.0))
    strategy = FedBuff(fedbuff_settings(buffer_size=1), start)
    strategy.apply(contribution("a", 0, 50, filled(2.0)), now=0.0)
    for value in strategy.model.weights.values():
        np.testing.assert_allclose(value, 1.0 + 0.5 * 2.0, rtol=1e-6)


def test_fedbuff_buffer_starts_empty_after_a_flush():
    strategy = FedBuff(fedbuff_settings(buffer_size=2, server_learning_rate=1.5), model(10))
    first = [(40, 0, arrays(1)), (60, 1, arrays(2))]
    strategy.apply(contribution("a", 10, 40, first[0][2]), now=0.0)
    strategy.apply(contribution("b", 9, 60, first[1][2]), now=0.0)
    after_first = snapshot(strategy.model.weights)
    assert strategy.version == 11
    assert strategy.buffered == 0

    second = [(5, 0, arrays(3)), (15, 2, arrays(4))]
    outcome = strategy.apply(contribution("a", 11, 5, second[0][2]), now=1.0)
    assert not outcome.new_version
    assert strategy.buffered == 1
    strategy.apply(contribution("c", 9, 15, second[1][2]), now=1.0)
    assert strategy.version == 12
    # Nothing of the first batch (deltas or sample counts) leaks into the second step.
    assert_weights(strategy.model.weights, sample_weighted_step(after_first, second, 1.5))


@pytest.mark.parametrize(("base", "accepted"), [(15, True), (14, False), (0, False)])
def test_fedbuff_max_staleness_boundary(base, accepted):
    strategy = FedBuff(fedbuff_settings(buffer_size=2, max_staleness=5), model(version=20))
    outcome = strategy.apply(contribution("a", base, 10, arrays(1)), now=0.0)
    assert outcome.accepted is accepted
    assert outcome.staleness == 20 - base
    assert outcome.reason == (None if accepted else "stale")
    assert strategy.buffered == (1 if accepted else 0)


def test_fedbuff_stale_update_leaves_the_buffer_unchanged():
    strategy = FedBuff(fedbuff_settings(buffer_size=3, max_staleness=2), model(version=20))
    before = snapshot(strategy.model.weights)
    kept = [(30, 0, arrays(1))]
    strategy.apply(contribution("a", 20, 30, kept[0][2]), now=0.0)

    rejected = strategy.apply(contribution("old", 17, 10_000, arrays(9, scale=100.0)), now=0.0)
    assert not rejected.accepted
    assert rejected.reason == "stale"
    assert rejected.staleness == 3
    assert not rejected.new_version
    assert strategy.buffered == 1
    assert_unchanged(strategy, 20, before)

    for agent, base, n, seed in [("b", 19, 70, 2), ("c", 18, 20, 3)]:
        delta = arrays(seed)
        strategy.apply(contribution(agent, base, n, delta), now=0.0)
        kept.append((n, 20 - base, delta))
    assert strategy.version == 21
    # Neither the rejected delta nor its 10,000 samples reached the step.
    assert_weights(strategy.model.weights, sample_weighted_step(before, kept, 1.0))


# --- FedAsync ----------------------------------------------------------------------------


def fedasync_factor(settings: FedAsyncSettings, staleness: int) -> float:
    """a * s(staleness), written out from Xie et al. 2019."""
    if settings.staleness_function == "constant":
        s = 1.0
    elif settings.staleness_function == "polynomial":
        s = (staleness + 1.0) ** -settings.exponent
    elif staleness <= settings.hinge_b:
        s = 1.0
    else:
        s = 1.0 / (settings.hinge_a * (staleness - settings.hinge_b) + 1.0)
    return settings.mixing * s


FEDASYNC_SETTINGS = [
    fedasync_settings(mixing=0.6, staleness_function="constant"),
    fedasync_settings(mixing=0.9, staleness_function="polynomial", exponent=0.5),
    fedasync_settings(mixing=0.5, staleness_function="polynomial", exponent=1.0),
    fedasync_settings(mixing=0.6, staleness_function="hinge", hinge_a=10.0, hinge_b=4),
    fedasync_settings(mixing=1.0, staleness_function="hinge", hinge_a=2.0, hinge_b=1),
]


@pytest.mark.parametrize("settings", FEDASYNC_SETTINGS, ids=lambda s: s.staleness_function)
@pytest.mark.parametrize("staleness", [0, 1, 4, 5, 8])
def test_fedasync_mixes_each_update_by_a_times_s_of_staleness(settings, staleness):
    strategy = FedAsync(settings.model_copy(update={"max_staleness": 10}), model(version=10))
    before = snapshot(strategy.model.weights)
    delta = arrays(7)
    outcome = strategy.apply(contribution("a", 10 - staleness, 33, delta), now=0.0)
    factor = fedasync_factor(settings, staleness)
    assert outcome.accepted
    assert outcome.new_version
    assert outcome.staleness == staleness
    assert outcome.detail["mixing"] == pytest.approx(factor, rel=1e-12)
    assert strategy.version == 11
    expected = {name: before[name] + factor * delta[name].astype(np.float64) for name in before}
    assert_weights(strategy.model.weights, expected)


@pytest.mark.parametrize("settings", FEDASYNC_SETTINGS, ids=lambda s: s.staleness_function)
def test_fedasync_every_update_is_a_new_version_and_staleness_follows_it(settings):
    strategy = FedAsync(settings, model(version=10))
    expected = snapshot(strategy.model.weights)
    # All trained from version 10: staleness 0, 1, 2, ... as each one bumps the version.
    for index, n in enumerate([1, 500, 20, 3, 77, 10]):
        delta = arrays(300 + index)
        outcome = strategy.apply(contribution(f"a{index}", 10, n, delta), now=float(index))
        assert outcome.accepted
        assert outcome.new_version
        assert outcome.staleness == index
        assert strategy.version == 11 + index
        factor = fedasync_factor(settings, index)  # num_samples plays no part
        expected = {k: expected[k] + factor * delta[k].astype(np.float64) for k in expected}
    assert_weights(strategy.model.weights, expected)
    assert strategy.buffered == 0


@pytest.mark.parametrize("settings", FEDASYNC_SETTINGS, ids=lambda s: s.staleness_function)
@pytest.mark.parametrize(("base", "accepted"), [(17, True), (16, False), (2, False)])
def test_fedasync_rejects_updates_beyond_max_staleness(settings, base, accepted):
    strategy = FedAsync(settings.model_copy(update={"max_staleness": 3}), model(version=20))
    before = snapshot(strategy.model.weights)
    outcome = strategy.apply(contribution("a", base, 10, arrays(1)), now=0.0)
    assert outcome.accepted is accepted
    assert outcome.staleness == 20 - base
    assert outcome.new_version is accepted
    if not accepted:
        assert outcome.reason == "stale"
        assert_unchanged(strategy, 20, before)


# --- FedAvg ------------------------------------------------------------------------------


def fedavg(version: int = 10, **settings) -> FedAvg:
    return FedAvg(fedavg_settings(**settings), model(version=version))


def test_fedavg_closes_when_every_expected_agent_answered():
    strategy = fedavg(expected_agents=3, server_learning_rate=0.5)
    strategy.start_round(now=0.0, agents_online=10)  # expected_agents wins over online
    before = snapshot(strategy.model.weights)
    items = []
    for index, n in enumerate([100, 10, 1]):
        delta = arrays(400 + index)
        outcome = strategy.apply(contribution(f"a{index}", 10, n, delta), now=1.0)
        items.append((n, 0, delta))
        assert outcome.accepted
        assert outcome.new_version is (index == 2)
        if index < 2:
            assert strategy.buffered == index + 1
            assert_unchanged(strategy, 10, before)
    assert strategy.version == 11
    assert strategy.buffered == 0
    assert_weights(strategy.model.weights, sample_weighted_step(before, items, 0.5))


def test_fedavg_weighs_by_samples_not_per_agent():
    strategy = FedAvg(fedavg_settings(expected_agents=2), GlobalModel(3, filled(0.0)))
    strategy.start_round(now=0.0, agents_online=2)
    strategy.apply(contribution("big", 3, 1000, filled(1.0)), now=0.0)
    strategy.apply(contribution("small", 3, 10, filled(-1.0)), now=0.0)
    assert strategy.version == 4
    for value in strategy.model.weights.values():
        np.testing.assert_allclose(value, 990 / 1010, rtol=1e-6)


@pytest.mark.parametrize("online", [1, 2, 4])
def test_fedavg_without_expected_agents_waits_for_those_online_at_round_start(online):
    strategy = fedavg()
    strategy.start_round(now=0.0, agents_online=online)
    for index in range(online):
        outcome = strategy.apply(contribution(f"a{index}", 10, 5, arrays(index)), now=1.0)
        assert outcome.new_version is (index == online - 1)
    assert strategy.version == 11


def test_fedavg_expected_count_is_fixed_when_the_round_starts():
    strategy = fedavg()
    strategy.start_round(now=0.0, agents_online=3)
    strategy.apply(contribution("a", 10, 5, arrays(1)), now=1.0)
    strategy.apply(contribution("b", 10, 5, arrays(2)), now=1.0)
    assert strategy.version == 10
    strategy.apply(contribution("c", 10, 5, arrays(3)), now=1.0)
    assert strategy.version == 11
    strategy.start_round(now=2.0, agents_online=1)
    assert strategy.apply(contribution("a", 11, 5, arrays(4)), now=3.0).new_version


@pytest.mark.parametrize("now", [109.0, 1e9])
def test_fedavg_without_deadline_never_closes_on_tick(now):
    strategy = fedavg(expected_agents=3, min_quorum=1)
    strategy.start_round(now=100.0, agents_online=3)
    assert strategy.deadline is None
    strategy.apply(contribution("a", 10, 5, arrays(1)), now=101.0)
    strategy.apply(contribution("b", 10, 5, arrays(2)), now=101.0)
    assert strategy.tick(now) is False
    assert strategy.version == 10
    assert strategy.buffered == 2


@pytest.mark.parametrize(
    ("answers", "tick_at", "closes"),
    [
        (2, 109.99, False),  # quorum, before the deadline
        (2, 110.0, True),  # quorum, at the deadline
        (3, 500.0, True),  # quorum, well past it
        (1, 110.0, False),  # short of the quorum: keeps waiting
        (1, 1e9, False),
        (0, 1e9, False),
    ],
)
def test_fedavg_deadline_closes_on_tick_only_with_a_quorum(answers, tick_at, closes):
    strategy = fedavg(expected_agents=4, deadline_seconds=10.0, min_quorum=2)
    strategy.start_round(now=100.0, agents_online=4)
    assert strategy.deadline == 110.0
    before = snapshot(strategy.model.weights)
    items = []
    for index in range(answers):
        delta = arrays(500 + index)
        n = 10 * (index + 1)
        assert not strategy.apply(contribution(f"a{index}", 10, n, delta), now=101.0).new_version
        items.append((n, 0, delta))
    assert strategy.tick(tick_at) is closes
    if closes:
        assert strategy.version == 11
        assert strategy.buffered == 0
        assert_weights(strategy.model.weights, sample_weighted_step(before, items, 1.0))
    else:
        assert_unchanged(strategy, 10, before)
        assert strategy.buffered == answers


def test_fedavg_past_deadline_closes_as_soon_as_the_quorum_answers():
    strategy = fedavg(expected_agents=5, deadline_seconds=10.0, min_quorum=2)
    strategy.start_round(now=0.0, agents_online=5)
    strategy.apply(contribution("a", 10, 5, arrays(1)), now=1.0)
    assert strategy.tick(20.0) is False
    outcome = strategy.apply(contribution("b", 10, 5, arrays(2)), now=21.0)
    assert outcome.new_version
    assert strategy.version == 11


def test_fedavg_drops_late_updates_by_default():
    strategy = fedavg(expected_agents=2, max_staleness=5)
    strategy.start_round(now=0.0, agents_online=2)
    before = snapshot(strategy.model.weights)
    outcome = strategy.apply(contribution("a", 9, 50, arrays(1)), now=1.0)
    assert not outcome.accepted
    assert outcome.reason == "late"
    assert outcome.staleness == 1
    assert strategy.buffered == 0
    assert_unchanged(strategy, 10, before)
    # The agent may still answer this round with a fresh update.
    assert strategy.apply(contribution("a", 10, 50, arrays(2)), now=1.0).accepted


def test_fedavg_applies_late_updates_discounted_when_configured():
    strategy = fedavg(expected_agents=3, late_updates="apply", max_staleness=3)
    strategy.start_round(now=0.0, agents_online=3)
    before = snapshot(strategy.model.weights)
    plan = [("a", 10, 40), ("b", 9, 300), ("c", 7, 25)]  # staleness 0, 1, 3
    items = []
    for index, (agent, base, n) in enumerate(plan):
        delta = arrays(600 + index)
        outcome = strategy.apply(contribution(agent, base, n, delta), now=1.0)
        assert outcome.accepted
        assert outcome.staleness == 10 - base
        items.append((n, 10 - base, delta))
    assert strategy.version == 11
    assert_weights(strategy.model.weights, sample_weighted_step(before, items, 1.0))


def test_fedavg_late_update_beyond_max_staleness_is_stale():
    strategy = fedavg(expected_agents=2, late_updates="apply", max_staleness=1)
    strategy.start_round(now=0.0, agents_online=2)
    before = snapshot(strategy.model.weights)
    outcome = strategy.apply(contribution("a", 8, 50, arrays(1)), now=1.0)
    assert not outcome.accepted
    assert outcome.reason == "stale"
    assert outcome.staleness == 2
    assert strategy.buffered == 0
    assert_unchanged(strategy, 10, before)


@pytest.mark.parametrize("late_updates", ["drop", "apply"])
def test_fedavg_second_update_from_an_agent_in_one_round_is_rejected(late_updates):
    strategy = fedavg(expected_agents=3, late_updates=late_updates)
    strategy.start_round(now=0.0, agents_online=3)
    before = snapshot(strategy.model.weights)
    first = arrays(1)
    strategy.apply(contribution("a", 10, 20, first), now=1.0)
    outcome = strategy.apply(contribution("a", 10, 999, arrays(2, scale=50.0)), now=2.0)
    assert not outcome.accepted
    assert outcome.reason == "already_in_round"
    assert strategy.buffered == 1
    second, third = arrays(3), arrays(4)
    strategy.apply(contribution("b", 10, 30, second), now=2.0)
    assert strategy.version == 10  # a's second update did not count as an answer
    strategy.apply(contribution("c", 10, 50, third), now=2.0)
    assert strategy.version == 11
    items = [(20, 0, first), (30, 0, second), (50, 0, third)]
    assert_weights(strategy.model.weights, sample_weighted_step(before, items, 1.0))


def test_fedavg_agent_may_answer_again_in_the_next_round():
    strategy = fedavg(expected_agents=1)
    strategy.start_round(now=0.0, agents_online=1)
    assert strategy.apply(contribution("a", 10, 5, arrays(1)), now=1.0).new_version
    strategy.start_round(now=2.0, agents_online=1)
    outcome = strategy.apply(contribution("a", 11, 5, arrays(2)), now=3.0)
    assert outcome.accepted
    assert outcome.new_version
    assert strategy.version == 12


# --- Contribution.scale -----------------------------------------------------------------


@pytest.mark.parametrize("scale", [1.0, 0.5, 0.125])
def test_contribution_add_to_multiplies_weight_and_scale(scale):
    delta = arrays(1)
    sums = filled(1.0)
    contribution("a", 0, 1, delta, scale=scale).add_to(sums, 3.0)
    expected = {k: 1.0 + 3.0 * scale * delta[k].astype(np.float64) for k in delta}
    assert_weights(sums, expected)


@pytest.mark.parametrize(
    "settings",
    [
        fedbuff_settings(buffer_size=1),
        fedasync_settings(mixing=0.6, staleness_function="constant"),
        fedavg_settings(expected_agents=1),
    ],
    ids=lambda s: s.name,
)
@pytest.mark.parametrize("scale", [0.25, 0.5])
def test_clipping_scale_shrinks_the_step(settings, scale):
    delta = arrays(5)
    steps = {}
    for factor in (1.0, scale):
        strategy = make_strategy(settings, model(version=10))
        strategy.start_round(now=0.0, agents_online=1)
        before = snapshot(strategy.model.weights)
        assert strategy.apply(contribution("a", 10, 40, delta, scale=factor), 0.0).new_version
        steps[factor] = {k: strategy.model.weights[k] - before[k] for k in before}
    assert_weights(
        {k: v.astype(np.float32) for k, v in steps[scale].items()},
        {k: scale * v for k, v in steps[1.0].items()},
    )
