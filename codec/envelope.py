"""The envelope: what crosses the wire for an update or a global model (format v1).

A msgpack map with a format version, the message kind, job and sender ids, the model
version, metadata and a list of tensors (name, shape, dtype, codec config, data bytes). Its
last entry is ``"crc32"``: a CRC-32 of every payload byte before that entry, so metadata and
data are both covered and corruption is caught before parsing. ``docs/wire-format.md``
specifies it byte for byte.

Decoding trusts nothing: the payload size and checksum are checked before parsing, msgpack
runs with length limits and refuses duplicate keys, then every field is checked for type and
range, every codec config must be complete and canonical, every declared shape must match
the byte length its codec implies, and finally each tensor's content is checked (scales in
range, codes in range, one valid encoding). Any violation raises an ``EnvelopeError`` (or a
subclass) naming the field.
"""

from __future__ import annotations

import math
import re
import secrets
import uuid
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import numpy.typing as npt

from codec.base import (
    MAX_TENSOR_ELEMENTS,
    Codec,
    Float32Array,
    element_count,
    writable_float32_view,
)
from codec.errors import (
    ChecksumError,
    CodecError,
    EnvelopeError,
    InvalidTensorError,
    LimitExceededError,
    UnsupportedFormatError,
)
from codec.registry import get_codec

FORMAT_VERSION = 1
KIND_UPDATE = "update"
KIND_MODEL = "model"
DTYPES = ("float16", "float32", "float64")
IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
"""Job, sender and update ids: safe as MQTT topic levels (no ``/``, ``+``, ``#``)."""
METRIC_NAME = re.compile(r"[A-Za-z0-9_.:/-]{1,64}")
TENSOR_NAME = re.compile(r"[\x20-\x7e]+")
"""Printable ASCII: Keras names like ``dense/kernel:0`` fit, and every language agrees."""
CRC_TRAILER = b"\xa5crc32\xce"
"""The last entry's key (fixstr "crc32") and the uint32 marker; its 4 bytes follow."""

_UPDATE_FIELDS = (
    "format",
    "kind",
    "job",
    "sender",
    "base_version",
    "update_id",
    "num_samples",
    "metrics",
    "tensors",
    "crc32",
)
_MODEL_FIELDS = ("format", "kind", "job", "sender", "version", "metrics", "tensors", "crc32")
_TENSOR_FIELDS = ("name", "shape", "dtype", "codec", "data")
_MAX_INT = 2**63 - 1
_MAX_SAMPLES = 2**40
_MASK64 = 2**64 - 1


@dataclass(frozen=True)
class DecodeLimits:
    """Bounds applied before anything is allocated; a violation raises LimitExceededError."""

    max_payload_bytes: int = 256 * 2**20
    max_tensors: int = 4096
    max_total_elements: int = 2**28
    max_dims: int = 8
    max_name_length: int = 256
    max_metrics: int = 64


@dataclass(frozen=True)
class EncodedTensor:
    """One tensor as it travels: codec bytes plus what is needed to decode them."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    codec: Codec
    data: bytes = field(repr=False)

    @property
    def size(self) -> int:
        return element_count(self.shape)

    def decode(self) -> Float32Array:
        """A new float32 array of the tensor's shape (``dtype`` records the sender's dtype;
        casting is the receiver's choice, so a float16 cast can never overflow here)."""
        out = np.empty(self.size, dtype=np.float32)
        self.codec._decode_into(np.frombuffer(self.data, dtype=np.uint8), out, 1.0, False)
        return out.reshape(self.shape)

    def accumulate_into(self, out: Float32Array, weight: float = 1.0) -> None:
        """``out += weight * decoded`` in one pass, into a caller-owned float32 buffer of the
        tensor's shape: the coordinator's aggregation fast path (releases the GIL)."""
        flat = writable_float32_view(out)
        if tuple(out.shape) != self.shape:
            raise InvalidTensorError(
                f"tensor {self.name!r}: buffer shape {tuple(out.shape)} != {self.shape}"
            )
        self.codec._decode_into(np.frombuffer(self.data, dtype=np.uint8), flat, weight, True)


@dataclass(frozen=True)
class Update:
    """An agent's model update (a delta from ``base_version``)."""

    job_id: str
    sender_id: str
    base_version: int
    update_id: str
    num_samples: int
    metrics: Mapping[str, float]
    tensors: tuple[EncodedTensor, ...]

    @property
    def data_bytes(self) -> int:
        return sum(len(t.data) for t in self.tensors)

    def arrays(self) -> dict[str, Float32Array]:
        return {t.name: t.decode() for t in self.tensors}


@dataclass(frozen=True)
class GlobalModel:
    """The coordinator's model at ``version``."""

    job_id: str
    sender_id: str
    version: int
    metrics: Mapping[str, float]
    tensors: tuple[EncodedTensor, ...]

    def arrays(self) -> dict[str, Float32Array]:
        return {t.name: t.decode() for t in self.tensors}


# --- encoding ----------------------------------------------------------------------------


def _tensor_seed(seed: int, index: int) -> int:
    """Independent per-tensor seeds from one envelope seed (SplitMix64 stream)."""
    z = (seed + (index + 1) * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def encode_tensors(
    tensors: Mapping[str, npt.ArrayLike] | Iterable[tuple[str, npt.ArrayLike]],
    codec: Codec | Mapping[str, Any] | str = "fp32",
    *,
    overrides: Mapping[str, Codec | Mapping[str, Any] | str] | None = None,
    seed: int | None = None,
) -> list[EncodedTensor]:
    """Encode named tensors with ``codec`` (``overrides`` by name), deterministically for a
    given ``seed``. Raises InvalidTensorError naming the tensor."""
    default = get_codec(codec)
    chosen = {name: get_codec(c) for name, c in (overrides or {}).items()}
    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    if seed is None:
        seed = secrets.randbits(64)
    encoded = []
    for index, (name, array) in enumerate(items):
        values = np.asarray(array)
        if values.dtype.name not in DTYPES:
            raise InvalidTensorError(
                f"tensor {name!r}: dtype {values.dtype} is not one of {', '.join(DTYPES)}"
            )
        tensor_codec = chosen.get(name, default)
        try:
            data = tensor_codec.encode(values, seed=_tensor_seed(seed, index))
        except CodecError as error:
            raise InvalidTensorError(f"tensor {name!r}: {error}") from error
        encoded.append(
            EncodedTensor(
                name, tuple(int(d) for d in values.shape), values.dtype.name, tensor_codec, data
            )
        )
    return encoded


def _as_encoded(
    tensors: Sequence[EncodedTensor] | Mapping[str, npt.ArrayLike],
    codec: Codec | Mapping[str, Any] | str,
    seed: int | None,
) -> list[EncodedTensor]:
    if isinstance(tensors, Mapping):
        return encode_tensors(tensors, codec, seed=seed)
    return list(tensors)


def _metrics(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    """Plain floats for msgpack (numpy scalars included); validated with the rest."""
    out: dict[str, float] = {}
    for key, value in (metrics or {}).items():
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
            raise EnvelopeError(f"metrics.{key}", f"expected a number, got {value!r}")
        out[key] = float(value)
    return out


def _pack(
    header: dict[str, Any],
    tensors: Sequence[EncodedTensor] | Mapping[str, npt.ArrayLike],
    codec: Codec | Mapping[str, Any] | str,
    seed: int | None,
    limits: DecodeLimits,
) -> bytes:
    # Tensors encoded here are trusted; pre-encoded ones are checked like received ones.
    check_content = not isinstance(tensors, Mapping)
    tensors = _as_encoded(tensors, codec, seed)
    message = {
        **header,
        "tensors": [
            {
                "name": t.name,
                "shape": list(t.shape),
                "dtype": t.dtype,
                "codec": t.codec.get_config(),
                "data": t.data,
            }
            for t in tensors
        ],
    }
    # Refuse to send what a decoder with the same limits would refuse.
    _parse_fields({**message, "crc32": 0}, (*message, "crc32"), limits, check_content=check_content)
    packer = msgpack.Packer(use_bin_type=True)
    body: bytes = packer.pack_map_header(len(message) + 1) + b"".join(
        packer.pack(key) + packer.pack(value) for key, value in message.items()
    )
    size = len(body) + len(CRC_TRAILER) + 4
    if size > limits.max_payload_bytes:
        raise LimitExceededError(
            "payload", f"{size} bytes exceed the limit of {limits.max_payload_bytes}"
        )
    return body + CRC_TRAILER + zlib.crc32(body).to_bytes(4, "big")


def encode_update(
    tensors: Sequence[EncodedTensor] | Mapping[str, npt.ArrayLike],
    *,
    job_id: str,
    sender_id: str,
    base_version: int,
    num_samples: int,
    codec: Codec | Mapping[str, Any] | str = "fp32",
    metrics: Mapping[str, float] | None = None,
    update_id: str | None = None,
    seed: int | None = None,
    limits: DecodeLimits = DecodeLimits(),
) -> bytes:
    """An update envelope: pre-encoded tensors, or arrays encoded here with ``codec``.
    Raises EnvelopeError (naming the field) for anything ``decode_update`` would refuse."""
    header = {
        "format": FORMAT_VERSION,
        "kind": KIND_UPDATE,
        "job": job_id,
        "sender": sender_id,
        "base_version": base_version,
        "update_id": update_id if update_id is not None else uuid.uuid4().hex,
        "num_samples": num_samples,
        "metrics": _metrics(metrics),
    }
    return _pack(header, tensors, codec, seed, limits)


def encode_model(
    tensors: Sequence[EncodedTensor] | Mapping[str, npt.ArrayLike],
    *,
    job_id: str,
    sender_id: str,
    version: int,
    codec: Codec | Mapping[str, Any] | str = "fp32",
    metrics: Mapping[str, float] | None = None,
    seed: int | None = None,
    limits: DecodeLimits = DecodeLimits(),
) -> bytes:
    """A global-model envelope (fp32, lossless, unless told otherwise)."""
    header = {
        "format": FORMAT_VERSION,
        "kind": KIND_MODEL,
        "job": job_id,
        "sender": sender_id,
        "version": version,
        "metrics": _metrics(metrics),
    }
    return _pack(header, tensors, codec, seed, limits)


# --- decoding ----------------------------------------------------------------------------


def _unique_keys(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    mapping = dict(pairs)
    if len(mapping) != len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise EnvelopeError(str(key), "duplicate key")
            seen.add(key)
    return mapping


def _refuse_other_format(payload: bytes, limits: DecodeLimits) -> None:
    """A later format may seal its payload differently: name its version rather than blame
    a checksum (only on this error path, with the same parser limits)."""
    try:
        message = msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=False,
            max_bin_len=len(payload),
            max_str_len=4 * max(limits.max_name_length, 256),
            max_array_len=max(limits.max_tensors, limits.max_dims, 16),
            max_map_len=max(limits.max_metrics, 16),
            max_ext_len=0,
        )
    except Exception:
        return
    version = message.get("format") if isinstance(message, dict) else None
    if type(version) is int and version != FORMAT_VERSION:
        raise UnsupportedFormatError(
            "format", f"version {version} is not supported (this decoder reads {FORMAT_VERSION})"
        )


def _unpack(payload: bytes, limits: DecodeLimits) -> Any:
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise EnvelopeError("payload", f"expected bytes, got {type(payload).__name__}")
    payload = bytes(payload) if not isinstance(payload, bytes) else payload
    if len(payload) > limits.max_payload_bytes:
        raise LimitExceededError(
            "payload", f"{len(payload)} bytes exceed the limit of {limits.max_payload_bytes}"
        )
    trailer = len(CRC_TRAILER) + 4
    if len(payload) < trailer or payload[-trailer:-4] != CRC_TRAILER:
        _refuse_other_format(payload, limits)
        raise EnvelopeError("crc32", "the payload does not end with its crc32 entry")
    declared = int.from_bytes(payload[-4:], "big")
    actual = zlib.crc32(memoryview(payload)[:-trailer])
    if actual != declared:
        raise ChecksumError(
            "crc32", f"payload checksum {actual:#010x} != declared {declared:#010x}"
        )
    try:
        return msgpack.unpackb(
            payload,
            raw=False,
            use_list=True,
            strict_map_key=True,
            object_pairs_hook=_unique_keys,
            max_bin_len=len(payload),
            max_str_len=4 * max(limits.max_name_length, 256),  # UTF-8: <= 4 bytes a character
            max_array_len=max(limits.max_tensors, limits.max_dims, 16),
            max_map_len=max(limits.max_metrics, 16),
            max_ext_len=0,
        )
    except EnvelopeError:
        raise
    except ValueError as error:
        if "exceeds max_" in str(error):
            raise LimitExceededError("payload", f"msgpack limit: {error}") from error
        raise EnvelopeError("payload", f"not a valid msgpack message ({error})") from error
    except Exception as error:  # msgpack raises several unrelated types: convert them all
        raise EnvelopeError("payload", f"not a valid msgpack message ({error})") from error


def _require_int(name: str, value: Any, minimum: int, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise EnvelopeError(name, f"expected an integer, got {type(value).__name__}")
    if not minimum <= value <= maximum:
        raise EnvelopeError(name, f"{value} is outside [{minimum}, {maximum}]")
    return value


def _require_identifier(name: str, value: Any) -> str:
    if not isinstance(value, str) or not IDENTIFIER.fullmatch(value):
        raise EnvelopeError(
            name,
            f"{value!r} is not an identifier (1-128 of A-Z a-z 0-9 _ . -, no leading punctuation)",
        )
    return value


def _require_fields(name: str, message: Any, expected: Sequence[str]) -> dict[str, Any]:
    if not isinstance(message, dict):
        raise EnvelopeError(name, f"expected a map, got {type(message).__name__}")
    unknown = [k for k in message if k not in expected]
    if unknown:
        key = unknown[0] if isinstance(unknown[0], str) and unknown[0] else repr(unknown[0])
        raise EnvelopeError(f"{name}.{key}" if name != "envelope" else key, "unknown field")
    missing = [k for k in expected if k not in message]
    if missing:
        raise EnvelopeError(
            f"{name}.{missing[0]}" if name != "envelope" else missing[0], "missing field"
        )
    return message


def _parse_metrics(value: Any, limits: DecodeLimits) -> dict[str, float]:
    if not isinstance(value, dict):
        raise EnvelopeError("metrics", f"expected a map, got {type(value).__name__}")
    if len(value) > limits.max_metrics:
        raise LimitExceededError(
            "metrics", f"{len(value)} entries exceed the limit of {limits.max_metrics}"
        )
    metrics = {}
    for key, number in value.items():
        if not isinstance(key, str) or not METRIC_NAME.fullmatch(key):
            raise EnvelopeError(f"metrics.{key!r}", "metric names are 1-64 of A-Z a-z 0-9 _.:/-")
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise EnvelopeError(f"metrics.{key}", f"expected a number, got {number!r}")
        if not math.isfinite(number):
            raise EnvelopeError(f"metrics.{key}", f"{number} is not finite")
        metrics[key] = float(number)
    return metrics


def _parse_tensor(
    index: int, message: Any, limits: DecodeLimits, total: int
) -> tuple[EncodedTensor, int]:
    where = f"tensors[{index}]"
    message = _require_fields(where, message, _TENSOR_FIELDS)
    name = message["name"]
    if not isinstance(name, str) or not name:
        raise EnvelopeError(f"{where}.name", "expected a non-empty string")
    if len(name) > limits.max_name_length:
        raise LimitExceededError(
            f"{where}.name", f"{len(name)} characters exceed the limit of {limits.max_name_length}"
        )
    if not TENSOR_NAME.fullmatch(name):
        raise EnvelopeError(f"{where}.name", f"{name!r} is not printable ASCII")
    shape = message["shape"]
    if not isinstance(shape, list):
        raise EnvelopeError(f"{where}.shape", f"expected a list, got {type(shape).__name__}")
    if len(shape) > limits.max_dims:
        raise LimitExceededError(
            f"{where}.shape", f"{len(shape)} dimensions exceed the limit of {limits.max_dims}"
        )
    dims = tuple(
        _require_int(f"{where}.shape[{d}]", extent, 0, MAX_TENSOR_ELEMENTS)
        for d, extent in enumerate(shape)
    )
    size = element_count(dims)
    extent = element_count([d for d in dims if d])
    if extent > MAX_TENSOR_ELEMENTS:  # even an empty tensor must be an allocatable shape
        raise LimitExceededError(
            f"{where}.shape", f"dimensions {list(dims)} exceed {MAX_TENSOR_ELEMENTS} elements"
        )
    if size > MAX_TENSOR_ELEMENTS:
        raise LimitExceededError(
            f"{where}.shape", f"{size} elements exceed the codec's {MAX_TENSOR_ELEMENTS}"
        )
    total += size
    if total > limits.max_total_elements:
        raise LimitExceededError(
            f"{where}.shape",
            f"{total} elements in all exceed the limit of {limits.max_total_elements}",
        )
    dtype = message["dtype"]
    if dtype not in DTYPES:
        raise EnvelopeError(f"{where}.dtype", f"{dtype!r} is not one of {', '.join(DTYPES)}")
    config = message["codec"]
    if not isinstance(config, dict):
        raise EnvelopeError(f"{where}.codec", f"expected a map, got {type(config).__name__}")
    try:
        codec = get_codec(config)
    except CodecError as error:
        raise EnvelopeError(f"{where}.codec", str(error)) from error
    if codec.get_config() != config:
        # Defaults may change between releases: the wire carries every parameter.
        raise EnvelopeError(
            f"{where}.codec", f"not in canonical form: expected {codec.get_config()}"
        )
    data = message["data"]
    if not isinstance(data, bytes):
        raise EnvelopeError(f"{where}.data", f"expected bytes, got {type(data).__name__}")
    expected = codec.encoded_size(size)
    if expected is not None and len(data) != expected:
        raise EnvelopeError(
            f"{where}.data",
            f"{len(data)} bytes, but {codec.codec_id} needs {expected} for shape {list(dims)}",
        )
    if expected is None and len(data) > codec.max_encoded_size(size):
        raise EnvelopeError(
            f"{where}.data",
            f"{len(data)} bytes exceed the {codec.max_encoded_size(size)} that "
            f"{codec.codec_id} can produce for shape {list(dims)}",
        )
    return EncodedTensor(name, dims, dtype, codec, data), total


def _parse_fields(
    message: Any, expected: Sequence[str], limits: DecodeLimits, *, check_content: bool
) -> tuple[dict[str, Any], tuple[EncodedTensor, ...]]:
    message = _require_fields("envelope", message, expected)
    for key in ("job", "sender"):
        _require_identifier(key, message[key])
    if "base_version" in message:
        _require_int("base_version", message["base_version"], 0, _MAX_INT)
        _require_identifier("update_id", message["update_id"])
        _require_int("num_samples", message["num_samples"], 1, _MAX_SAMPLES)
    else:
        _require_int("version", message["version"], 0, _MAX_INT)
    message["metrics"] = _parse_metrics(message["metrics"], limits)
    raw_tensors = message["tensors"]
    if not isinstance(raw_tensors, list):
        raise EnvelopeError("tensors", f"expected a list, got {type(raw_tensors).__name__}")
    if len(raw_tensors) > limits.max_tensors:
        raise LimitExceededError(
            "tensors", f"{len(raw_tensors)} tensors exceed the limit of {limits.max_tensors}"
        )
    tensors = []
    names = set()
    total = 0
    for index, raw in enumerate(raw_tensors):
        tensor, total = _parse_tensor(index, raw, limits, total)
        if tensor.name in names:
            raise EnvelopeError(f"tensors[{index}].name", f"duplicate name {tensor.name!r}")
        names.add(tensor.name)
        tensors.append(tensor)
    _require_int("crc32", message["crc32"], 0, 2**32 - 1)
    if list(message)[-1] != "crc32":
        raise EnvelopeError("crc32", "must be the last entry")
    if check_content:
        for index, tensor in enumerate(tensors):
            try:
                tensor.codec.validate(tensor.data, tensor.size)
            except CodecError as error:
                raise EnvelopeError(
                    f"tensors[{index}].data", f"{tensor.name!r}: {error}"
                ) from error
    return message, tuple(tensors)


def _parse_envelope(
    payload: bytes, kind: str, limits: DecodeLimits
) -> tuple[dict[str, Any], tuple[EncodedTensor, ...]]:
    message = _unpack(payload, limits)
    if not isinstance(message, dict):
        raise EnvelopeError("envelope", f"expected a map, got {type(message).__name__}")
    version = message.get("format")
    if type(version) is not int or version != FORMAT_VERSION:
        raise UnsupportedFormatError(
            "format", f"version {version!r} is not supported (this decoder reads {FORMAT_VERSION})"
        )
    if message.get("kind") != kind:
        raise EnvelopeError("kind", f"expected {kind!r}, got {message.get('kind')!r}")
    expected = _UPDATE_FIELDS if kind == KIND_UPDATE else _MODEL_FIELDS
    return _parse_fields(message, expected, limits, check_content=True)


def decode_update(payload: bytes, *, limits: DecodeLimits = DecodeLimits()) -> Update:
    """Validate and decode an update envelope (tensor data stays encoded until used)."""
    fields, tensors = _parse_envelope(payload, KIND_UPDATE, limits)
    return Update(
        job_id=fields["job"],
        sender_id=fields["sender"],
        base_version=fields["base_version"],
        update_id=fields["update_id"],
        num_samples=fields["num_samples"],
        metrics=fields["metrics"],
        tensors=tensors,
    )


def decode_model(payload: bytes, *, limits: DecodeLimits = DecodeLimits()) -> GlobalModel:
    """Validate and decode a global-model envelope."""
    fields, tensors = _parse_envelope(payload, KIND_MODEL, limits)
    return GlobalModel(
        job_id=fields["job"],
        sender_id=fields["sender"],
        version=fields["version"],
        metrics=fields["metrics"],
        tensors=tensors,
    )
