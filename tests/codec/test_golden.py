"""Golden files freeze wire format v1: they must keep decoding to the same values, and the
encoder must keep producing them byte for byte (which also freezes the random generator)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import codec

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "v1"
sys.path.insert(0, str(FIXTURES.parent))

import make_v1_fixtures as golden  # noqa: E402

SCHEMES = json.loads((FIXTURES / "manifest.json").read_text())["schemes"]


def load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as stored:
        return {k.replace("|", "/"): stored[k] for k in stored.files}


def test_every_scheme_has_a_fixture():
    assert set(SCHEMES) == set(golden.SCHEMES)
    assert SCHEMES == golden.SCHEMES, "fixture parameters changed: v1 fixtures are frozen"
    ids = {config["id"] for config in SCHEMES.values()}
    assert ids == set(codec.CODECS)


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_v1_fixture_decodes_to_the_frozen_values(scheme):
    update = codec.decode_update((FIXTURES / f"{scheme}.msgpack").read_bytes())
    assert update.job_id == "golden-v1" and update.base_version == 41
    expected = load(FIXTURES / f"{scheme}.expected.npz")
    decoded = update.arrays()
    assert list(decoded) == list(expected)
    for name, values in expected.items():
        assert decoded[name].dtype == values.dtype
        assert decoded[name].tobytes() == values.tobytes(), name


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_encoder_reproduces_the_v1_fixture(scheme):
    payload = golden.envelope(scheme, SCHEMES[scheme], load(FIXTURES / "inputs.npz"))
    assert payload == (FIXTURES / f"{scheme}.msgpack").read_bytes()


def test_model_fixture_round_trips():
    stored = (FIXTURES / "model.msgpack").read_bytes()
    inputs = load(FIXTURES / "inputs.npz")
    assert golden.model_envelope(inputs) == stored
    model = codec.decode_model(stored)
    assert model.version == 42
    for name, values in model.arrays().items():
        assert np.array_equal(values, inputs[name].astype(np.float32))


@pytest.mark.parametrize(("scheme", "mode"), [("topk-varint", 1), ("topk-bitmap", 0)])
def test_topk_fixtures_cover_both_index_forms(scheme, mode):
    update = codec.decode_update((FIXTURES / f"{scheme}.msgpack").read_bytes())
    assert update.tensors[1].data[0] == mode
