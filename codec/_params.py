"""Validation of codec configuration dicts, with errors that name the parameter."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from codec.errors import CodecConfigError


def check_keys(codec_id: str, config: Mapping[str, Any], allowed: Collection[str]) -> None:
    unknown = sorted((set(config) - set(allowed)), key=repr)

    if unknown:
        raise CodecConfigError(
            f"codec {codec_id!r}: unknown parameter {unknown[0]!r} "
            f"(expected some of {sorted(allowed)})"
        )


def integer(
    codec_id: str,
    name: str,
    value: Any,
    *,
    minimum: int,
    maximum: int,
    choices: Collection[int] | None = None,
) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise CodecConfigError(f"codec {codec_id!r}: {name} must be an integer, got {value!r}")
    if choices is not None and value not in choices:
        raise CodecConfigError(
            f"codec {codec_id!r}: {name} must be one of {sorted(choices)}, got {value}"
        )
    if not minimum <= value <= maximum:
        raise CodecConfigError(
            f"codec {codec_id!r}: {name} must be in [{minimum}, {maximum}], got {value}"
        )
    return value


def number(codec_id: str, name: str, value: Any, *, above: float, maximum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CodecConfigError(f"codec {codec_id!r}: {name} must be a number, got {value!r}")
    if not above < float(value) <= maximum:
        raise CodecConfigError(
            f"codec {codec_id!r}: {name} must be in ({above}, {maximum}], got {value}"
        )
    return float(value)


def choice(codec_id: str, name: str, value: Any, choices: Collection[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise CodecConfigError(
            f"codec {codec_id!r}: {name} must be one of {sorted(choices)}, got {value!r}"
        )
    return value
