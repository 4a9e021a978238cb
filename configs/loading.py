"""Load settings from YAML with environment overrides, and fail with one clear line.

Override any field with ``<PREFIX>__<FIELD>__<SUBFIELD>=value`` (``__`` separates levels;
the value is parsed as YAML, so ``3``, ``0.5``, ``true`` and ``[a, b]`` work), e.g.
``FEDMQ_COORDINATOR__STRATEGY__BUFFER_SIZE=4``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from common.validation import first_problem
from configs.errors import ConfigError

S = TypeVar("S", bound=BaseModel)


def _env_overrides(prefix: str, environ: Mapping[str, str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    head = prefix + "__"
    for key, raw in environ.items():
        if not key.startswith(head):
            continue
        path = [part.lower() for part in key[len(head) :].split("__") if part]
        if not path:
            continue
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = overrides
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: conflicts with another override")
        node[path[-1]] = value
    return overrides


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def default_tag(tag: str, default: str) -> Any:
    """A before-validator for a discriminated union field: a mapping without the tag gets
    the default variant's, so ``strategy: {buffer_size: 8}`` means the default strategy."""

    def fill(value: Any) -> Any:
        if isinstance(value, Mapping) and tag not in value:
            return {**value, tag: default}
        return value

    return fill


def load_settings(
    kind: type[S],
    path: Path | None = None,
    *,
    env_prefix: str | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> S:
    """Settings from an optional YAML file, then environment variables, then ``overrides``
    (later wins). Raises ConfigError naming the file and the field."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as error:
            raise ConfigError(f"{path}: cannot read ({error.strerror})") from error
        except UnicodeDecodeError as error:
            raise ConfigError(f"{path}: not UTF-8 text ({error.reason})") from error
        except yaml.YAMLError as error:
            one_line = " ".join(str(error).split())
            raise ConfigError(f"{path}: not valid YAML ({one_line})") from error
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        data = loaded
    if env_prefix is not None:
        data = _merge(data, _env_overrides(env_prefix, os.environ if environ is None else environ))
    if overrides:
        data = _merge(data, overrides)
    try:
        return kind.model_validate(data)
    except ValidationError as error:
        raise ConfigError(f"{source}: {first_problem(error)}") from error


def exit_on_config_error(error: ConfigError) -> NoReturn:
    """The one line a person sees for a bad config, and exit code 2 (systemd does not
    restart-loop on it)."""
    print(f"configuration error: {error}", file=sys.stderr)
    raise SystemExit(ConfigError.EXIT_CODE)
