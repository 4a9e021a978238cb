"""Codecs are found by config, configs round-trip through JSON, bad configs are named."""

from __future__ import annotations

import json

import pytest

import codec
from codec import CODECS, PRESETS, Codec, get_codec


def all_subclasses(cls: type[Codec]) -> set[type[Codec]]:
    found: set[type[Codec]] = set()
    for sub in cls.__subclasses__():
        found |= {sub} | all_subclasses(sub)
    return found


def test_every_concrete_codec_is_registered():
    concrete = {
        c
        for c in all_subclasses(Codec)  # type: ignore[type-abstract]
        if not c.__name__.startswith("_") and "codec_id" in c.__dict__
    }
    assert concrete == set(CODECS.values())
    assert {c.codec_id for c in concrete} == set(CODECS)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_config_round_trips_through_json(preset):
    original = get_codec(preset)
    config = json.loads(json.dumps(original.get_config()))
    assert config["id"] == original.codec_id
    restored = get_codec(config)
    assert restored == original
    assert restored.get_config() == original.get_config()
    assert hash(restored) == hash(original)


def test_codecs_with_different_parameters_differ():
    assert get_codec("int8") != get_codec("int4")
    assert get_codec({"id": "uniform"}) == get_codec("int8")


def test_unknown_id_is_named():
    with pytest.raises(codec.UnknownCodecError, match="'zstd'"):
        get_codec({"id": "zstd"})
    with pytest.raises(codec.UnknownCodecError, match="'int7'"):
        get_codec("int7")


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"id": "uniform", "bits": 3}, "bits"),
        ({"id": "uniform", "bits": "8"}, "bits"),
        ({"id": "uniform", "bits": True}, "bits"),
        ({"id": "uniform", "bucket_size": 0}, "bucket_size"),
        ({"id": "uniform", "rounding": "up"}, "rounding"),
        ({"id": "uniform", "bitz": 8}, "bitz"),
        ({"id": "qsgd", "levels": 128}, "levels"),
        ({"id": "sign", "bucket_size": -1}, "bucket_size"),
        ({"id": "topk", "fraction": 0}, "fraction"),
        ({"id": "topk", "fraction": 1.5}, "fraction"),
        ({"id": "topk", "values": {"id": "topk"}}, "cannot be topk"),
        ({"id": "topk", "values": {"id": "nope"}}, "nope"),
        ({"id": "fp32", "level": 1}, "level"),
        ({"bits": 8}, "'id'"),
        ({"id": 5}, "'id'"),
    ],
)
def test_bad_parameters_are_named(config, named):
    with pytest.raises(codec.CodecError, match=named):
        get_codec(config)


def test_get_codec_passes_a_codec_through():
    int4 = get_codec("int4")
    assert get_codec(int4) is int4


def test_repr_shows_parameters():
    assert repr(get_codec("int4")) == (
        "UniformCodec(bits=4, bucket_size=512, rounding='stochastic')"
    )
