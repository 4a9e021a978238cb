"""LAQ's lazy-upload rule (Sun et al. 2019) on model deltas: upload when
||Q(u_k) - Q(u_last)||^2 >= scale * weight / D * sum of the last D squared model movements
+ 3 (e_k + e_last); always the first time and after ``max_skips`` skips in a row."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from common.messages import LazyUpload
from edge_agent.laq import LazyUploader, difference, squared_norm

Weights = dict[str, npt.NDArray[np.float32]]


# Built with model_validate, as elsewhere in the tests (no reliance on the pydantic plugin).
def lazy(**fields: Any) -> LazyUpload:
    return LazyUpload.model_validate({"enabled": True, **fields})


def vector(*values: float) -> Weights:
    return {"w": np.array(values, dtype=np.float32)}


def moved_uploader(*steps: float) -> LazyUploader:
    """An uploader that saw global models moving by these distances, one after another (so
    the recorded squared movements are the squares of ``steps``)."""
    uploader = LazyUploader()
    position = 0.0
    uploader.observe_model(vector(position))
    for step in steps:
        position += step
        uploader.observe_model(vector(position))
    return uploader


def test_squared_norm_and_difference():
    a = {"x": np.array([3.0, 4.0], np.float32), "y": np.array([[1.0]], np.float32)}
    b = {"x": np.array([1.0, 1.0], np.float32), "y": np.array([[1.0]], np.float32)}
    assert squared_norm(a) == 26.0
    assert squared_norm(difference(a, b)) == 13.0
    assert squared_norm({}) == 0.0


@pytest.mark.parametrize("enabled", [True, False])
def test_first_upload_always_happens(enabled):
    uploader = moved_uploader(10.0, 10.0)
    assert uploader.should_upload(lazy(enabled=enabled), vector(0.0), error=1e6)
    assert uploader.skips == 0


def test_disabled_rule_always_uploads():
    uploader = moved_uploader(10.0, 10.0)
    settings = lazy(enabled=False)
    update = vector(1.0)
    assert all(uploader.should_upload(settings, update, error=0.0) for _ in range(20))
    assert uploader.skips == 0


def test_an_unchanged_update_is_skipped_when_the_model_moved():
    uploader = moved_uploader(1.0)
    settings = lazy()
    assert uploader.should_upload(settings, vector(5.0, -2.0), error=0.0)
    assert not uploader.should_upload(settings, vector(5.0, -2.0), error=0.0)
    assert uploader.skips == 1


def test_a_large_change_is_uploaded():
    uploader = moved_uploader(1.0, 1.0, 1.0)
    settings = lazy()
    assert uploader.should_upload(settings, vector(0.0, 0.0), error=0.01)
    assert not uploader.should_upload(settings, vector(0.1, 0.0), error=0.01)
    assert uploader.should_upload(settings, vector(10.0, 10.0), error=0.01)
    assert uploader.skips == 0


@pytest.mark.parametrize("max_skips", [0, 1, 3])
def test_upload_is_forced_after_max_skips_skips(max_skips):
    uploader = moved_uploader(1.0)
    settings = lazy(max_skips=max_skips)
    update = vector(2.0)
    assert uploader.should_upload(settings, update, error=0.0)
    for cycle in range(2):  # the count restarts after the forced upload
        decisions = [uploader.should_upload(settings, update, error=0.0) for _ in range(max_skips)]
        assert decisions == [False] * max_skips, cycle
        assert uploader.skips == max_skips
        assert uploader.should_upload(settings, update, error=0.0), cycle
        assert uploader.skips == 0


def test_a_skipped_update_does_not_become_the_reference():
    """The comparison is against the last update *sent*: small drifts add up to an upload."""
    uploader = moved_uploader(1.0)  # threshold: 0.8 * 1 / 10 = 0.08
    settings = lazy()
    assert uploader.should_upload(settings, vector(0.0), error=0.0)
    assert not uploader.should_upload(settings, vector(0.2), error=0.0)  # 0.04 < 0.08
    assert uploader.should_upload(settings, vector(0.4), error=0.0)  # 0.16 vs the sent 0.0


def test_model_versions_with_other_tensors_are_not_a_movement():
    uploader = LazyUploader()
    uploader.observe_model(vector(0.0))
    uploader.observe_model({"other": np.ones(1, np.float32)})
    uploader.observe_model({"other": np.full(1, 3.0, np.float32)})
    assert list(uploader.movements) == [4.0]


# --- the threshold, term by term ---------------------------------------------------------
#
# Movements seen: 30^2 = 900 (old), then 2^2, 3^2, 4^2. With history D = 3 only the last
# three count: sum 29. Threshold = scale * weight / D * 29 + 3 * (error + last_error).
# The base numbers give 2.5 * 0.6 / 3 * 29 + 3 * (0.5 + 1.5) = 14.5 + 6 = 20.5, and dropping
# or misapplying any single term moves the threshold out of the +-5% probes below:
# without the window 2.5*0.2*929 + 6 = 470.5; without /D 43.5 + 6 = 49.5; without the weight
# 24.17 + 6 = 30.2; without the scale 5.8 + 6 = 11.8; without error 16; without last_error 16;
# 1 x errors instead of 3 x 16.5.

STEPS = (30.0, 2.0, 3.0, 4.0)
BASE: dict[str, Any] = {"history": 3, "weight": 0.6, "scale": 2.5, "error": 0.5, "last_error": 1.5}


def threshold(history: int, weight: float, scale: float, error: float, last_error: float) -> float:
    movements = [s * s for s in STEPS][-history:]
    return scale * weight / history * sum(movements) + 3.0 * (error + last_error)


CASES: dict[str, dict[str, Any]] = {
    "base": {},
    "longer history": {"history": 4},
    "all history": {"history": 10},
    "larger weight": {"weight": 1.6},
    "larger scale": {"scale": 7.0},
    "no quantization error": {"error": 0.0, "last_error": 0.0},
    "larger error": {"error": 4.0},
    "larger last error": {"last_error": 6.0},
}


@pytest.mark.parametrize("changed", CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize(("factor", "uploads"), [(0.95, False), (1.05, True)])
def test_threshold_uses_every_term(changed, factor, uploads):
    case = {**BASE, **changed}
    settings = lazy(history=case["history"], weight=case["weight"], scale=case["scale"])
    uploader = moved_uploader(*STEPS)
    assert uploader.should_upload(settings, vector(1.0, 1.0), error=case["last_error"])
    change = math.sqrt(factor * threshold(**case))  # squared norm of the change = factor x T
    probe = vector(1.0 + change, 1.0)
    assert uploader.should_upload(settings, probe, error=case["error"]) is uploads


def test_base_threshold_is_the_worked_example():
    assert threshold(**BASE) == pytest.approx(20.5)
