"""Codec lookup by config, as numcodecs' registry: ``get_codec({"id": ..., **params})``.

Presets name the common configurations (``"int8"``, ``"sign"``, ...) so configs and the CLI
can say ``codec: int8`` instead of spelling out every parameter.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from codec.base import Codec
from codec.errors import CodecConfigError, UnknownCodecError
from codec.floating import Float16Codec, Float32Codec
from codec.qsgd import QSGDCodec
from codec.sign import ScaledSignCodec
from codec.topk import TopKCodec
from codec.uniform import UniformCodec

CODECS: dict[str, type[Codec]] = {}

PRESETS: dict[str, dict[str, Any]] = {
    "fp32": {"id": "fp32"},
    "fp16": {"id": "fp16"},
    "int8": {"id": "uniform", "bits": 8},
    "int4": {"id": "uniform", "bits": 4},
    "int2": {"id": "uniform", "bits": 2},
    "qsgd": {"id": "qsgd"},
    "sign": {"id": "sign"},
    "topk": {"id": "topk"},
}


def register_codec(cls: type[Codec]) -> type[Codec]:
    """Make ``cls`` reachable from ``get_codec`` under its ``codec_id``."""
    existing = CODECS.get(cls.codec_id)
    if existing is not None and existing is not cls:
        raise CodecConfigError(f"codec id {cls.codec_id!r} is already registered")
    CODECS[cls.codec_id] = cls
    return cls


for _cls in (Float32Codec, Float16Codec, UniformCodec, QSGDCodec, ScaledSignCodec, TopKCodec):
    register_codec(_cls)


def get_codec(config: Mapping[str, Any] | str | Codec) -> Codec:
    """A codec from its config dict (``{"id": ..., **params}``), a preset name, or a codec."""
    if isinstance(config, Codec):
        return config
    if isinstance(config, str):
        if config not in PRESETS:
            raise UnknownCodecError(config)
        config = PRESETS[config]
    if not isinstance(config, Mapping):
        raise CodecConfigError(f"a codec config must be a mapping, got {type(config).__name__}")
    params = dict(config)
    codec_id = params.get("id")
    if not isinstance(codec_id, str):
        raise CodecConfigError(f"codec config needs a string 'id', got {codec_id!r}")
    cls = CODECS.get(codec_id)
    if cls is None:
        raise UnknownCodecError(codec_id)
    try:
        return cls.from_config(params)
    except TypeError as error:  # a parameter the constructor does not take
        raise CodecConfigError(f"codec {codec_id!r}: {error}") from error
