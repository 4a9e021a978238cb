"""Fuzzing the envelope decoder: whatever arrives, ``decode_update`` / ``decode_model`` either
return a valid decode or raise a ``CodecError``, never hang, and allocate in proportion to
the payload and the ``DecodeLimits``, never to what a hostile payload merely declares.

Random and truncated bytes mostly die at the trailer or checksum, so mutated payloads here are
also re-sealed with a valid CRC trailer: the mutations reach the msgpack parser, the field checks
and the codecs' content checks. Volume comes from deterministic numpy-RNG loops; the
hypothesis tests give shrunk, readable counterexamples.
"""

from __future__ import annotations

import copy
import math
import re
import tracemalloc
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

import codec
from codec.envelope import CRC_TRAILER

TRAILER = len(CRC_TRAILER) + 4
"""The 11-byte ``crc32`` entry that ends every envelope: fixstr key, 0xce, 4 CRC bytes."""

DEFAULT_LIMITS = codec.DecodeLimits()
SMALL_LIMITS = codec.DecodeLimits(max_payload_bytes=1 << 20, max_total_elements=1 << 16)
MIB = 1 << 20

FUZZ = settings(
    deadline=None,  # no timing in tests; a slow CI runner must not turn into a failure
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

VOLUME: Counter[str] = Counter()
"""Payloads decoded, by the test that made them (checked by the file's last test)."""

VOLUME_SOURCES = (
    "random-bytes",
    "random-msgpack",
    "truncated",
    "truncated-resealed",
    "mutated",
    "mutated-hypothesis",
    "structured",
    "structured-named",
    "structured-memory",
    "hostile-memory",
    "hostile-1mib",
)


# --- sealing -------------------------------------------------------------------------------


def crc_entry(body: bytes) -> bytes:
    return CRC_TRAILER + zlib.crc32(body).to_bytes(4, "big")


def reseal(payload: bytes) -> bytes:
    """Rewrite the last 4 bytes with the CRC of ``payload[:-11]`` (whatever the 7 bytes
    before them hold: a mutated trailer marker stays mutated)."""
    if len(payload) < TRAILER:
        return payload
    return payload[:-4] + zlib.crc32(payload[:-TRAILER]).to_bytes(4, "big")


def seal_body(body: bytes) -> bytes:
    """An envelope from the bytes before its ``crc32`` entry: append a valid trailer."""
    return body + crc_entry(body)


def pack_map(entries: Iterable[tuple[Any, Any]], extra_count: int = 0) -> bytes:
    """A map header counting the entries plus the ``crc32`` entry (plus ``extra_count``,
    to fake a wrong count), then the entries, packed as ``envelope._pack`` packs them."""
    packer = msgpack.Packer(use_bin_type=True)
    items = list(entries)
    header = packer.pack_map_header(max(0, len(items) + 1 + extra_count))
    return header + b"".join(packer.pack(key) + packer.pack(value) for key, value in items)


def seal_map(message: Mapping[Any, Any], extra_count: int = 0) -> bytes:
    """Seal any msgpack-able map as an envelope (``message`` holds no ``crc32`` key, or a
    duplicate is packed before the trailer's)."""
    return seal_body(pack_map(message.items(), extra_count))


class Payload(bytes):
    """bytes with a repr short enough for hypothesis to print as a falsifying example."""

    def __repr__(self) -> str:
        text = self.hex()
        if len(text) <= 8000:
            return f"bytes.fromhex({text!r})"
        return f"<{len(self)} bytes, crc32 {zlib.crc32(self):#010x}: {text[:400]}...>"


def body_of(payload: bytes) -> bytes:
    return payload[:-TRAILER]


# --- checking one payload ------------------------------------------------------------------

DECODERS: dict[str, Callable[..., Any]] = {
    "update": codec.decode_update,
    "model": codec.decode_model,
}


def check_decoded(result: codec.Update | codec.GlobalModel) -> None:
    """An accepted envelope keeps the decoder's promise: every tensor decodes to a finite
    float32 array of its declared shape, and accumulates into a buffer of that shape."""
    for tensor in result.tensors:
        array = tensor.decode()
        assert array.dtype == np.float32
        assert array.shape == tensor.shape
        assert np.isfinite(array).all(), tensor.name
        out = np.zeros(tensor.shape, dtype=np.float32)
        tensor.accumulate_into(out)
        assert np.isfinite(out).all(), tensor.name
        assert np.array_equal(out, array), tensor.name


def check_payload(
    payload: bytes,
    kinds: Iterable[str],
    *,
    source: str,
    limits: codec.DecodeLimits = DEFAULT_LIMITS,
    named: bool = False,
    refusals: Counter[str] | None = None,
) -> bool:
    """Decode with each decoder in ``kinds``: a CodecError or a valid decode, nothing else.
    ``named``: the error must be an EnvelopeError whose ``field`` is a non-empty str.
    ``refusals`` counts the fields errors name (indices as ``#``). Returns whether some
    decoder accepted the payload."""
    VOLUME[source] += 1
    accepted = False
    for kind in kinds:
        try:
            result = DECODERS[kind](payload, limits=limits)
        except codec.CodecError as error:
            if refusals is not None:
                refusals[re.sub(r"\d+", "#", str(getattr(error, "field", "?")))] += 1
            if named:
                assert isinstance(error, codec.EnvelopeError), repr(error)
                assert isinstance(error.field, str), f"field {error.field!r}: {error}"
                assert error.field, f"empty field: {error}"
            continue
        accepted = True
        check_decoded(result)
    return accepted


class Escapes:
    """Collects what escapes the decoder in a volume loop, keeping the smallest payload per
    kind of failure, so one run reports every distinct bug with a minimal reproducer."""

    def __init__(self) -> None:
        self.found: dict[tuple[str, str], tuple[bytes, list[str], str]] = {}

    def check(self, payload: bytes, kinds: list[str], **options: Any) -> bool:
        """``check_payload``, recording an escape instead of raising; whether accepted."""
        try:
            return check_payload(payload, kinds, **options)
        except Exception as error:  # every escape is a finding: keep going, report all
            frame = error.__traceback__
            while frame is not None and frame.tb_next is not None:
                frame = frame.tb_next
            where = f"{frame.tb_frame.f_code.co_filename}:{frame.tb_lineno}" if frame else "?"
            key = (type(error).__name__, where)
            message = f"{type(error).__name__} at {where}: {error}"
            if key not in self.found or len(payload) < len(self.found[key][0]):
                self.found[key] = (payload, kinds, message)
            return False

    def assert_none(self) -> None:
        report = [
            f"{message}\n  decoders: {', '.join(kinds)}; payload ({len(payload)} bytes): "
            f"{payload.hex()}"
            for payload, kinds, message in self.found.values()
        ]
        assert not report, "\n".join(report)


# --- a corpus of valid envelopes -----------------------------------------------------------

EXTRA_CONFIGS: dict[str, dict[str, Any]] = {
    "uniform4-b8-nearest": {"id": "uniform", "bits": 4, "bucket_size": 8, "rounding": "nearest"},
    "uniform2-b3": {"id": "uniform", "bits": 2, "bucket_size": 3},
    "qsgd1-b16": {"id": "qsgd", "levels": 1, "bucket_size": 16},
    "qsgd7-b5": {"id": "qsgd", "levels": 7, "bucket_size": 5},
    "sign-b3": {"id": "sign", "bucket_size": 3},
    "topk-bitmap-fp16": {"id": "topk", "fraction": 0.5, "values": {"id": "fp16"}},
    "topk-varint-sign": {"id": "topk", "fraction": 0.1, "values": {"id": "sign", "bucket_size": 4}},
}


def corpus_tensors(seed: int) -> dict[str, np.ndarray]:
    """Small tensors touching every layout path: several buckets, an all-zero bucket, a 0-d
    tensor, an empty one, float16 and float64 inputs."""
    rng = np.random.default_rng(seed)
    mixed = rng.standard_normal(70).astype(np.float32)
    mixed[10:30] = 0.0
    return {
        "dense/kernel:0": rng.standard_normal((7, 5)).astype(np.float32),
        "dense/bias:0": np.zeros(5, dtype=np.float32),
        "mixed": mixed,
        "scale": np.array(1.5, dtype=np.float16),
        "empty": np.zeros((0, 3), dtype=np.float64),
    }


@lru_cache(maxsize=1)
def corpus() -> tuple[tuple[str, str, bytes], ...]:
    """(label, kind, payload): an update and a model envelope for every preset and a few
    other configs, deterministic (fixed seeds and ids)."""
    configs: dict[str, Any] = {**{name: name for name in codec.PRESETS}, **EXTRA_CONFIGS}
    entries = []
    for index, (label, config) in enumerate(configs.items()):
        update = codec.encode_update(
            corpus_tensors(index),
            job_id="job-1",
            sender_id="edge.7",
            base_version=3,
            num_samples=128,
            codec=config,
            metrics={"loss": 0.25, "accuracy": 1},
            update_id=f"u{index}",
            seed=index,
        )
        model = codec.encode_model(
            corpus_tensors(index + 100),
            job_id="job-1",
            sender_id="coordinator",
            version=4,
            codec=config,
            seed=index + 100,
        )
        entries += [(label, "update", update), (label, "model", model)]
    return tuple(entries)


def test_corpus_decodes_and_covers_every_preset():
    labels = {label for label, _, _ in corpus()}
    assert set(codec.PRESETS) <= labels
    for _, kind, payload in corpus():
        assert check_payload(payload, [kind], source="corpus")


# --- 1. random bytes -----------------------------------------------------------------------


@settings(FUZZ, max_examples=300)
@given(data=st.binary(max_size=600))
def test_random_bytes_raise_only_codec_errors(data):
    check_payload(data, DECODERS, source="random-bytes")
    # The same bytes behind a valid trailer reach the msgpack parser.
    check_payload(seal_body(data), DECODERS, source="random-bytes")


msgpack_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(),
    st.text(max_size=12),
    st.binary(max_size=12),
)
msgpack_objects = st.recursive(
    msgpack_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=6) | st.binary(max_size=3), children, max_size=4)
    ),
    max_leaves=8,
)


@settings(FUZZ, max_examples=200)
@given(
    message=st.dictionaries(
        st.text(max_size=12) | st.binary(max_size=4), msgpack_objects, max_size=6
    ),
    header=st.sampled_from([{}, {"format": 1, "kind": "update"}, {"format": 1, "kind": "model"}]),
)
def test_random_msgpack_maps_raise_only_codec_errors(message, header):
    check_payload(seal_map({**header, **message}), DECODERS, source="random-msgpack")


# --- 2. truncation -------------------------------------------------------------------------


def cut_points(length: int, rng: np.random.Generator, budget: int = 1024) -> list[int]:
    """Every cut for small payloads; for large ones the edges plus a random sample."""
    if length <= budget:
        return list(range(length))
    edges = {*range(64), *range(length - 64, length)}
    sample = rng.choice(length, size=budget - len(edges), replace=False)
    return sorted(edges | {int(i) for i in sample})


@pytest.mark.parametrize("label", [*codec.PRESETS, *EXTRA_CONFIGS])
def test_truncated_envelopes_raise_only_codec_errors(label):
    rng = np.random.default_rng(zlib.crc32(label.encode()))
    escapes = Escapes()
    for entry_label, kind, payload in corpus():
        if entry_label != label:
            continue
        for cut in cut_points(len(payload), rng):
            escapes.check(payload[:cut], [kind], source="truncated")
        body = body_of(payload)
        for cut in cut_points(len(body), rng):
            escapes.check(seal_body(body[:cut]), [kind], source="truncated-resealed")
    escapes.assert_none()


# --- 3. mutation ---------------------------------------------------------------------------

INTERESTING_BYTES = bytes.fromhex(  # fix/empty containers, nil, bools, sized headers
    "00017f80ff8f909fa0bfc0c1c2c3c4c5c6c7cacbcccdcecfd0d3d4d9dadbdcdddedfe0"
)
INTERESTING_INTS = (0, 1, 2**7, 2**8 - 1, 2**15, 2**16 - 1, 2**31, 2**32 - 1)


def mutate(rng: np.random.Generator, data: bytes, other: bytes) -> bytes:
    """One to four random edits: bit flips, random or msgpack-significant bytes, big-endian
    boundary integers, insertions, deletions, duplicated ranges, splices with ``other``."""
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 5))):
        size = len(out)
        op = int(rng.integers(0, 9))
        at = int(rng.integers(0, size)) if size else 0
        if op == 0 and size:
            out[at] ^= 1 << int(rng.integers(0, 8))
        elif op == 1 and size:
            out[at] = int(rng.integers(0, 256))
        elif op == 2 and size:
            out[at] = INTERESTING_BYTES[int(rng.integers(0, len(INTERESTING_BYTES)))]
        elif op == 3 and size >= 4:
            width = (1, 2, 4)[int(rng.integers(0, 3))]
            value = INTERESTING_INTS[int(rng.integers(0, len(INTERESTING_INTS)))]
            value = value & ((1 << (8 * width)) - 1)
            start = min(at, size - width)
            out[start : start + width] = value.to_bytes(width, "big")
        elif op == 4:
            out[at:at] = rng.bytes(int(rng.integers(1, 9)))
        elif op == 5 and size:
            del out[at : at + int(rng.integers(1, 17))]
        elif op == 6 and size:
            start = int(rng.integers(0, size))
            out[at:at] = out[start : start + int(rng.integers(1, 33))]
        elif op == 7:
            cut = int(rng.integers(0, len(other) + 1))
            out = out[:at] + other[cut:]
        elif op == 8 and size >= 2:
            stop = int(rng.integers(at, size + 1))
            out[at:stop] = out[at:stop][::-1]
    return bytes(out)


def data_regions(payload: bytes) -> list[tuple[int, int]]:
    """Where each tensor's data bytes sit in ``payload``."""
    regions = []
    for tensor in msgpack.unpackb(payload, raw=False)["tensors"]:
        data = tensor["data"]
        start = payload.find(data) if data else -1
        if start >= 0:
            regions.append((start, start + len(data)))
    return regions


def mutate_in_place(rng: np.random.Generator, data: bytes, regions: list[tuple[int, int]]) -> bytes:
    """One or two edits that move no byte, so the msgpack structure mostly survives: half
    inside tensor data (any new byte: the codecs' content checks), half anywhere but
    flipping one of the low 7 bits (ASCII stays ASCII: keys, names, ids, codec parameters,
    shapes and headers change while str stays valid UTF-8)."""
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 3))):
        if regions and rng.random() < 0.5:
            start, stop = regions[int(rng.integers(0, len(regions)))]
            out[int(rng.integers(start, stop))] = int(rng.integers(0, 256))
        elif out:
            out[int(rng.integers(0, len(out)))] ^= 1 << int(rng.integers(0, 7))
    return bytes(out)


MUTATIONS = 5000


def test_mutated_envelopes_decode_validly_or_raise_codec_errors():
    rng = np.random.default_rng(20240601)
    entries = corpus()
    regions = [data_regions(payload) for _, _, payload in entries]
    escapes = Escapes()
    refusals: Counter[str] = Counter()
    accepted = 0
    for round_ in range(MUTATIONS):
        _, kind, payload = entries[round_ % len(entries)]
        _, other_kind, other = entries[int(rng.integers(0, len(entries)))]
        style = int(rng.integers(0, 10))
        if style < 4:  # overwrite a byte or two of the body, then a fresh trailer
            mutated = seal_body(
                mutate_in_place(rng, body_of(payload), regions[round_ % len(entries)])
            )
        elif style < 7:  # any edits to the body, then a fresh trailer
            mutated = seal_body(mutate(rng, body_of(payload), body_of(other)))
        elif style < 9:  # edit anywhere (trailer marker included), rewrite the CRC bytes only
            mutated = reseal(mutate(rng, payload, other))
        else:  # splice two envelopes' bodies at random points
            left = body_of(payload)[: int(rng.integers(0, len(payload) - TRAILER + 1))]
            right = body_of(other)[int(rng.integers(0, len(other) - TRAILER + 1)) :]
            mutated = seal_body(left + right)
        kinds = [kind] if kind == other_kind else [kind, other_kind]
        accepted += escapes.check(mutated, kinds, source="mutated", refusals=refusals)
    escapes.assert_none()
    # The mutations must not all die in the parser: they reach the field checks and the
    # codecs' content checks, and some stay valid envelopes (edits inside tensor data).
    assert accepted > 0
    deep = {field for field in refusals if field.startswith("tensors[#].")}
    assert {"tensors[#].data", "tensors[#].codec", "tensors[#].dtype"} <= deep, refusals
    assert refusals["payload"] < 0.8 * sum(refusals.values()), refusals


MUTATION_OPS = ("flip", "set", "insert", "delete", "splice", "truncate")


@settings(FUZZ, max_examples=300)
@given(
    entry=st.integers(min_value=0),
    other=st.integers(min_value=0),
    edits=st.lists(
        st.tuples(
            st.sampled_from(MUTATION_OPS),
            st.floats(0, 1),
            st.binary(min_size=1, max_size=8),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_mutated_envelopes_shrink_to_minimal_cases(entry, other, edits):
    entries = corpus()
    _, _, payload = entries[entry % len(entries)]
    other_body = body_of(entries[other % len(entries)][2])
    body = bytearray(body_of(payload))
    for op, where, data in edits:
        at = min(int(where * len(body)), max(len(body) - 1, 0))
        if op == "flip" and body:
            body[at] ^= data[0] or 1
        elif op == "set" and body:
            body[at : at + len(data)] = data
        elif op == "insert":
            body[at:at] = data
        elif op == "delete":
            del body[at : at + len(data)]
        elif op == "splice":
            body[at:] = other_body[int(where * len(other_body)) :]
        elif op == "truncate":
            del body[at:]
    check_payload(seal_body(bytes(body)), DECODERS, source="mutated-hypothesis")


# --- 4. structure-aware fuzzing ------------------------------------------------------------

HUGE_INTS = (
    2**31,
    2**32 - 1,
    2**32,
    2**53 + 1,
    2**62,
    2**63 - 1,
    2**63,
    2**64 - 1,
    -1,
    -(2**31),
    -(2**63),
)
NEAR_VALID: tuple[Any, ...] = (
    0,
    1,
    2,
    3,
    2**40,
    2**40 + 1,
    True,
    False,
    1.0,
    0.5,
    float("nan"),
    float("inf"),
    "",
    "a",
    "a" * 128,
    "a" * 129,
    "-a",
    "a/b",
    "a+b",
    "\u00e9t\u00e9",
    "update",
    "model",
    "float32",
    None,
    b"",
    b"update",
    [],
    {},
    [1],
    {"id": "fp32"},
)
hostile_scalars = st.one_of(
    st.sampled_from(HUGE_INTS),
    st.sampled_from(NEAR_VALID),
    msgpack_scalars,
)
hostile = st.recursive(
    hostile_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=6) | st.binary(max_size=3), children, max_size=4)
    ),
    max_leaves=12,
)

SHAPES = (
    [2**31, 2**31],
    [2**32 - 1] * 8,
    [2**32] * 2,
    [2**62, 4],
    [2**63 - 1, 2],
    [2**64 - 1],
    [2**16, 2**16 + 1],
    [2**28 + 1],
    [0, 2**32 - 1, 2**32 - 1],
    [2**32 - 1, 0],
    [1] * 9,
    [0] * 9,
    [1] * 300,
    [-1],
    [3, -5],
    [1.0],
    [True],
    [None],
    [[3]],
    ["3"],
)
shapes = st.one_of(
    st.sampled_from(SHAPES),
    st.lists(st.integers(0, 9), max_size=4),
    st.lists(st.integers(-(2**63), 2**64 - 1) | st.sampled_from(HUGE_INTS), max_size=10),
    st.lists(hostile, max_size=3),
    hostile,
)

CODEC_IDS = ("fp32", "fp16", "uniform", "qsgd", "sign", "topk", "", "FP32", "zstd", "int8")
PARAM_NAMES = ("id", "bits", "bucket_size", "rounding", "levels", "fraction", "values", "x", "")
PARAM_VALUES = (
    0,
    1,
    2,
    3,
    4,
    7,
    8,
    127,
    128,
    512,
    1 << 24,
    (1 << 24) + 1,
    2**31,
    2**63 - 1,
    2**64 - 1,
    -1,
    0.5,
    1.0,
    1.5,
    8.0,
    1e-320,
    float("nan"),
    float("inf"),
    "8",
    "stochastic",
    "nearest",
    "fp32",
    "int8",
    True,
    None,
    {"id": "fp16"},
    {"id": "topk"},
    {"id": "uniform", "bits": 4},
    {"id": "sign", "bucket_size": 512},
    {"id": "uniform", "bits": 2, "bucket_size": 1 << 24, "rounding": "nearest"},
)


def canonical_configs() -> list[dict[str, Any]]:
    configs: list[Any] = [*codec.PRESETS, *EXTRA_CONFIGS.values()]
    return [codec.get_codec(config).get_config() for config in configs]


def nested_topk(depth: int) -> dict[str, Any]:
    config: dict[str, Any] = {"id": "uniform", "bits": 8, "bucket_size": 512, "rounding": "nearest"}
    for _ in range(depth):
        config = {"id": "topk", "fraction": 0.5, "values": config}
    return config


configs = st.one_of(
    st.deferred(lambda: st.sampled_from(canonical_configs())),
    st.builds(
        lambda base, key, value: {**base, key: value},
        st.deferred(lambda: st.sampled_from(canonical_configs())),
        st.sampled_from(PARAM_NAMES) | st.text(max_size=6),
        st.sampled_from(PARAM_VALUES) | hostile,
    ),
    st.dictionaries(
        st.sampled_from(PARAM_NAMES) | st.text(max_size=6) | st.binary(max_size=3),
        st.sampled_from(CODEC_IDS) | st.sampled_from(PARAM_VALUES) | hostile,
        max_size=5,
    ),
    (st.sampled_from([2, 100, 250, 400]) | st.integers(1, 400)).map(nested_topk),
    hostile,
)
names = st.one_of(
    st.sampled_from(
        ["", " ", "\u00e9", "\u540d\u524d", "x\x00y", "tab\t", "a" * 256, "a" * 257, "\u00e9" * 600]
    ),
    st.text(max_size=300),
    hostile,
)
metrics = st.one_of(
    st.dictionaries(
        st.text(max_size=70) | st.binary(max_size=4) | st.sampled_from(["loss", "a" * 65, ""]),
        st.floats() | st.integers(-(2**63), 2**64 - 1) | hostile,
        max_size=5,
    ),
    st.just({f"m{i}": float(i) for i in range(65)}),
    st.just({"loss": float("nan")}),
    hostile,
)
TOP_FIELDS = (
    "format",
    "kind",
    "job",
    "sender",
    "base_version",
    "update_id",
    "num_samples",
    "version",
    "metrics",
    "tensors",
    "crc32",
)
TENSOR_FIELDS = ("name", "shape", "dtype", "codec", "data")
EDITS = (  # shape, codec and data twice: they lead deepest into the decoder
    "shape",
    "codec",
    "data",
    "top",
    "drop",
    "extra",
    "tensor",
    "tensor-drop",
    "tensor-extra",
    "shape",
    "codec",
    "data",
    "name",
    "dtype",
    "metrics",
    "tensors",
)


@lru_cache(maxsize=1)
def base_messages() -> tuple[tuple[str, dict[str, Any]], ...]:
    """The corpus as decoded msgpack maps (without their ``crc32`` entry)."""
    bases = []
    for _, kind, payload in corpus():
        message = msgpack.unpackb(payload, raw=False)
        del message["crc32"]
        bases.append((kind, message))
    return tuple(bases)


def fitting_data(config: Any, shape: Any) -> bytes | None:
    """Zero bytes of the length ``config`` needs for ``shape``, when both make sense and it
    is small: lets a hostile shape or config pass the length check and reach the content
    checks (and the decode of an accepted envelope)."""
    try:
        size = math.prod(shape)
        length = codec.get_codec(config).encoded_size(size)
    except Exception:
        return None
    if not isinstance(length, int) or not 0 <= length <= 1 << 16:
        return None
    return bytes(length)


@st.composite
def structured_envelopes(draw: st.DrawFn) -> tuple[str, bytes]:
    """A valid envelope's map with one to three fields replaced by hostile values, removed,
    or joined by extra keys; re-packed and sealed with a valid trailer."""

    def fresh(strategy: st.SearchStrategy[Any]) -> Any:
        # Strategies may return shared objects (sampled_from): copy before later edits.
        return copy.deepcopy(draw(strategy))

    bases = base_messages()
    kind, base = bases[draw(st.integers(0, len(bases) - 1))]
    message: dict[Any, Any] = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        edit = draw(st.sampled_from(EDITS))
        tensors = message.get("tensors")
        tensor_maps = (
            [t for t in tensors if isinstance(t, dict)] if isinstance(tensors, list) else []
        )
        tensor = draw(st.sampled_from(tensor_maps)) if tensor_maps else None
        if edit == "top":
            message[draw(st.sampled_from(TOP_FIELDS))] = fresh(hostile)
        elif edit == "drop" and message:
            del message[draw(st.sampled_from(sorted(message, key=repr)))]
        elif edit == "extra":
            message[draw(st.text(max_size=8) | st.binary(max_size=4))] = fresh(hostile)
        elif edit == "metrics":
            message["metrics"] = fresh(metrics)
        elif edit == "tensors":
            how = draw(st.sampled_from(["empty", "list", "doubled", "too-many", "hostile"]))
            if how == "empty":
                message["tensors"] = []
            elif how == "list":
                message["tensors"] = fresh(st.lists(hostile, max_size=3))
            elif how == "doubled":  # every name twice
                message["tensors"] = tensors + tensors if isinstance(tensors, list) else []
            elif how == "too-many":  # one more than max_tensors
                message["tensors"] = tensor_maps[-1:] * 4097
            else:
                message["tensors"] = fresh(hostile)
        elif tensor is None:
            continue
        elif edit == "tensor":
            tensor[draw(st.sampled_from(TENSOR_FIELDS))] = fresh(hostile)
        elif edit == "tensor-drop" and tensor:
            del tensor[draw(st.sampled_from(sorted(tensor, key=repr)))]
        elif edit == "tensor-extra":
            tensor[draw(st.text(max_size=8) | st.binary(max_size=4))] = fresh(hostile)
        elif edit == "shape":
            tensor["shape"] = fresh(shapes)
            if draw(st.booleans()):
                tensor["data"] = fitting_data(tensor.get("codec"), tensor["shape"]) or b""
        elif edit == "codec":
            tensor["codec"] = fresh(configs)
            if draw(st.booleans()):
                tensor["data"] = fitting_data(tensor["codec"], tensor.get("shape")) or b""
        elif edit == "data":
            data = tensor.get("data")
            old = data if isinstance(data, bytes) else b""
            how = draw(st.sampled_from(["content", "length", "any", "hostile"]))
            if how == "content":  # the right length, any bytes: the content checks run
                tensor["data"] = draw(st.binary(min_size=len(old), max_size=len(old)))
            elif how == "length":
                delta = draw(st.integers(-len(old), 8))
                tensor["data"] = old[: len(old) + delta] + bytes(max(delta, 0))
            elif how == "any":
                tensor["data"] = draw(st.binary(max_size=64))
            else:
                tensor["data"] = fresh(hostile)
        elif edit == "name":
            if len(tensor_maps) > 1 and draw(st.booleans()):
                tensor["name"] = tensor_maps[0].get("name")  # duplicate name
            else:
                tensor["name"] = fresh(names)
        elif edit == "dtype":
            tensor["dtype"] = draw(
                st.sampled_from(["float16", "float32", "float64", "int8", "FLOAT32", ""]) | hostile
            )
    extra_count = {8: 1, 9: -1}.get(draw(st.integers(0, 9)), 0)  # a wrong map count, rarely
    shown = repr(message)
    shown = shown if len(shown) <= 2000 else f"{shown[:2000]}... ({len(shown)} characters)"
    note(f"message: {shown}, extra map entries counted: {extra_count}")
    return kind, Payload(seal_map(message, extra_count))


STRUCTURED_SETTINGS = settings(FUZZ, max_examples=1000)


@STRUCTURED_SETTINGS
@given(case=structured_envelopes())
def test_structure_aware_fuzz_raises_only_codec_errors(case):
    kind, payload = case
    check_payload(payload, [kind], source="structured")


# The same cases, checking what the error names; a separate test so that a bug in the naming
# does not stop the search above (hypothesis stops exploring at its first failure).
@settings(STRUCTURED_SETTINGS, max_examples=400)
@given(case=structured_envelopes())
def test_structure_aware_fuzz_errors_name_their_field(case):
    kind, payload = case
    check_payload(payload, [kind], source="structured-named", named=True)


# --- 5. memory -----------------------------------------------------------------------------

# The bound on tracemalloc's peak while decoding a payload of L bytes under SMALL_LIMITS,
# which allow E = 2**16 elements in all:
#   8 * L    the decoder may copy the payload a few times (a bytes() of a bytearray, msgpack's
#            bin and str objects, aligned copies of bucket scales) and unpack 1-bit fields to
#            one byte per bit: at most 8 bytes per payload byte;
#   S * E    per-element scratch, for elements the limits allow. The most a legitimate
#            envelope needs is topk's: int64 indices, gaps and their varint re-encoding,
#            ~24 bytes an element compiled (S = 32) and ~67 on the numpy fallback, whose
#            varint encoder keeps several int64/uint64 temporaries (S = 80);
#   1 MiB    interpreter noise (frames, small objects, numpy's caches).
# That is 3 MiB (compiled) or 6 MiB (numpy) plus 8 * L, and legitimate envelopes at these
# limits fit (see the control test below). Anything above is an allocation driven by a size
# the payload declares but does not contain (a 2**31 array or bin header, a huge shape, a codec
# parameter such as bucket_size): the bug class these tests exist for, which runs to GiB, or
# to 16-64 MiB for a 200-byte payload. Decoding an accepted envelope's tensors may in addition
# allocate its float32 output: 4 bytes per element.
SCRATCH_PER_ELEMENT = 32 if codec.BACKEND == "cython" else 80


def memory_bound(payload: bytes) -> int:
    return 8 * len(payload) + SCRATCH_PER_ELEMENT * SMALL_LIMITS.max_total_elements + MIB


def peak_while(action: Callable[[], Any]) -> tuple[int, Any]:
    """tracemalloc's peak (bytes) during ``action()``, and its result or raised exception."""
    already = tracemalloc.is_tracing()  # e.g. PYTHONTRACEMALLOC: leave it running
    if not already:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        baseline = tracemalloc.get_traced_memory()[0]
        try:
            outcome: Any = action()
        except Exception as error:
            outcome = error
        return tracemalloc.get_traced_memory()[1] - baseline, outcome
    finally:
        if not already:
            tracemalloc.stop()


def check_memory(payload: bytes, kind: str, source: str) -> Any:
    """Decode under SMALL_LIMITS: a CodecError or a decode, within the memory bound."""
    VOLUME[source] += 1
    peak, outcome = peak_while(lambda: DECODERS[kind](payload, limits=SMALL_LIMITS))
    if isinstance(outcome, Exception) and not isinstance(outcome, codec.CodecError):
        raise outcome
    assert peak < memory_bound(payload), (
        f"decoding {len(payload)} bytes peaked at {peak} bytes (bound {memory_bound(payload)}); "
        f"outcome {outcome!r}; payload: {payload[:512].hex()}"
    )
    return outcome


@settings(FUZZ, max_examples=200)
@given(case=structured_envelopes())
def test_structure_aware_fuzz_memory_is_bounded(case):
    kind, payload = case
    check_memory(payload, kind, "structured-memory")


def small_message() -> dict[str, Any]:
    """A valid one-tensor update map (fp32, shape [2]) to build hostile payloads on."""
    message = copy.deepcopy(dict(base_messages()[0][1]))
    assert message["kind"] == "update"
    message["tensors"] = [
        {
            "name": "w",
            "shape": [2],
            "dtype": "float32",
            "codec": {"id": "fp32"},
            "data": bytes(8),
        }
    ]
    return message


def with_tensor(**fields: Any) -> bytes:
    message = small_message()
    message["tensors"][0].update(fields)
    return seal_map(message)


def with_raw_value(key: str, raw: bytes) -> bytes:
    """An envelope whose ``key`` entry (top level, or ``tensors[0].<key>``) is ``raw``
    msgpack bytes: headers that claim lengths the payload does not have."""
    message = small_message()
    packer = msgpack.Packer(use_bin_type=True)
    parts = []
    for top, value in message.items():
        if top == key:
            parts.append(packer.pack(top) + raw)
        elif top == "tensors" and key in message["tensors"][0]:
            tensor = message["tensors"][0]
            entries = b"".join(
                packer.pack(k) + (raw if k == key else packer.pack(v)) for k, v in tensor.items()
            )
            parts.append(
                packer.pack(top)
                + packer.pack_array_header(1)
                + packer.pack_map_header(len(tensor))
                + entries
            )
        else:
            parts.append(packer.pack(top) + packer.pack(value))
    return seal_body(packer.pack_map_header(len(message) + 1) + b"".join(parts))


def many_tensors(count: int, **fields: Any) -> bytes:
    message = small_message()
    template = {**message["tensors"][0], **fields}
    message["tensors"] = [{**template, "name": f"t{i}"} for i in range(count)]
    return seal_map(message)


def nested_arrays(depth: int) -> bytes:
    """``metrics`` holding ``depth`` nested one-element arrays (msgpack's stack limit)."""
    return with_raw_value("metrics", b"\x91" * depth + b"\x00")


BIG_BUCKET = 1 << 24  # the largest bucket_size a codec config accepts


@lru_cache(maxsize=1)
def hostile_payloads() -> dict[str, bytes]:
    """Payloads declaring far more than they hold, all sealed with a valid CRC."""
    zero_bucket = bytes(5)  # one float32 scale of +0.0 and one 8-bit code 0: 1 element
    unit_bucket = np.float32(1).tobytes() + b"\x01"  # scale 1.0, code 1
    return {
        "shape-2^31x2^31": with_tensor(shape=[2**31, 2**31], data=b""),
        "shape-int64-overflow": with_tensor(shape=[2**32 - 1] * 8, data=b""),
        "shape-uint64-max": with_tensor(shape=[2**64 - 1], data=b""),
        "shape-over-total-elements": with_tensor(shape=[(1 << 16) + 1], data=b""),
        "shape-4096-dims": with_tensor(shape=[1] * 4096),
        "shape-9-dims": with_tensor(shape=[1] * 9),
        "tensors-4097": many_tensors(4097, shape=[0], data=b""),
        "tensors-4096-at-element-limit": many_tensors(4096, shape=[16], data=bytes(64)),
        "array-header-2^31": with_raw_value("tensors", b"\xdd" + (2**31).to_bytes(4, "big")),
        "array-header-4096-empty": with_raw_value("tensors", b"\xdd" + (4096).to_bytes(4, "big")),
        "bin-header-2^31": with_raw_value("data", b"\xc6" + (2**31).to_bytes(4, "big")),
        "bin-header-2^32-1": with_raw_value("data", b"\xc6" + (2**32 - 1).to_bytes(4, "big")),
        "str-header-2^31": with_raw_value("name", b"\xdb" + (2**31).to_bytes(4, "big")),
        "map-header-2^31": with_raw_value("metrics", b"\xdf" + (2**31).to_bytes(4, "big")),
        "ext-header-2^31": with_raw_value("metrics", b"\xc9" + (2**31).to_bytes(4, "big") + b"\1"),
        "top-array-header-2^31": seal_body(b"\xdd" + (2**31).to_bytes(4, "big")),
        "top-map-header-2^32-1": seal_body(b"\xdf" + (2**32 - 1).to_bytes(4, "big")),
        "nested-arrays-100000": nested_arrays(100_000),
        "long-name": with_tensor(name="a" * 1000),
        "long-non-ascii-name": with_tensor(name="\u00e9" * 600),
        "long-metric-names": seal_map({**small_message(), "metrics": {"a" * 1000: 1.0}}),
        "metrics-65": seal_map({**small_message(), "metrics": {f"m{i}": 1.0 for i in range(65)}}),
        "topk-k-2^16-unterminated-varints": with_tensor(
            shape=[1 << 16],
            codec={"id": "topk", "fraction": 1.0, "values": {"id": "sign", "bucket_size": 512}},
            data=b"\x01" + b"\x80" * 100 + bytes(4 * 128 + (1 << 13)),
        ),
        "topk-k-2^16-bitmap": with_tensor(
            shape=[1 << 16],
            codec={"id": "topk", "fraction": 1.0, "values": {"id": "sign", "bucket_size": 512}},
            data=b"\x00" + b"\xff" * (1 << 13) + bytes(4 * 128 + (1 << 13)),
        ),
        "uniform-bucket-2^24-zero-scale": with_tensor(
            shape=[1],
            codec={"id": "uniform", "bits": 8, "bucket_size": BIG_BUCKET, "rounding": "nearest"},
            data=zero_bucket,
        ),
        "sign-bucket-2^24-zero-scale": with_tensor(
            shape=[1], codec={"id": "sign", "bucket_size": BIG_BUCKET}, data=zero_bucket
        ),
        "qsgd-bucket-2^24-zero-scale": with_tensor(
            shape=[1],
            codec={"id": "qsgd", "levels": 127, "bucket_size": BIG_BUCKET},
            data=zero_bucket,
        ),
        "uniform-bucket-2^24-unit-scale": with_tensor(
            shape=[1],
            codec={"id": "uniform", "bits": 8, "bucket_size": BIG_BUCKET, "rounding": "nearest"},
            data=unit_bucket,
        ),
        "sign-bucket-2^24-unit-scale": with_tensor(
            shape=[1], codec={"id": "sign", "bucket_size": BIG_BUCKET}, data=unit_bucket
        ),
    }


HOSTILE = (  # the keys of hostile_payloads(), built lazily (not at collection)
    "shape-2^31x2^31",
    "shape-int64-overflow",
    "shape-uint64-max",
    "shape-over-total-elements",
    "shape-4096-dims",
    "shape-9-dims",
    "tensors-4097",
    "tensors-4096-at-element-limit",
    "array-header-2^31",
    "array-header-4096-empty",
    "bin-header-2^31",
    "bin-header-2^32-1",
    "str-header-2^31",
    "map-header-2^31",
    "ext-header-2^31",
    "top-array-header-2^31",
    "top-map-header-2^32-1",
    "nested-arrays-100000",
    "long-name",
    "long-non-ascii-name",
    "long-metric-names",
    "metrics-65",
    "topk-k-2^16-unterminated-varints",
    "topk-k-2^16-bitmap",
    "uniform-bucket-2^24-zero-scale",
    "sign-bucket-2^24-zero-scale",
    "qsgd-bucket-2^24-zero-scale",
    "uniform-bucket-2^24-unit-scale",
    "sign-bucket-2^24-unit-scale",
)


def test_hostile_case_lists_match_their_builders():
    assert set(HOSTILE) == set(hostile_payloads())
    assert set(ONE_MIB) == set(one_mib_payloads())


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_payload_decode_memory_is_bounded(case):
    check_memory(hostile_payloads()[case], "update", "hostile-memory")


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_payload_accepted_then_decoded_in_bounded_memory(case):
    """What the decoder accepts must also decode (finite float32, declared shape), and its
    decode may allocate the float32 output on top of the bound."""
    payload = hostile_payloads()[case]
    try:
        result = codec.decode_update(payload, limits=SMALL_LIMITS)
    except codec.CodecError:
        return
    check_decoded(result)
    elements = sum(t.size for t in result.tensors)
    peak, outcome = peak_while(result.arrays)
    if isinstance(outcome, Exception):
        raise outcome
    assert peak < memory_bound(payload) + 4 * elements, (
        f"decoding the tensors of {case} ({elements} elements) peaked at {peak} bytes"
    )
    buffers = [np.zeros(t.shape, dtype=np.float32) for t in result.tensors]

    def accumulate() -> None:
        for tensor, buffer in zip(result.tensors, buffers, strict=True):
            tensor.accumulate_into(buffer, 0.5)

    peak, outcome = peak_while(accumulate)
    if isinstance(outcome, Exception):
        raise outcome
    assert peak < memory_bound(payload), (
        f"accumulating the tensors of {case} ({elements} elements) peaked at {peak} bytes"
    )


@pytest.mark.parametrize(
    "config",
    [
        *codec.PRESETS,
        {"id": "topk", "fraction": 1.0, "values": {"id": "uniform", "bits": 2}},
        {"id": "topk", "fraction": 0.1, "values": {"id": "sign", "bucket_size": 512}},
        {"id": "uniform", "bits": 2, "bucket_size": 1, "rounding": "nearest"},
        {"id": "sign", "bucket_size": 1},
    ],
    ids=str,
)
def test_memory_bound_admits_legitimate_envelopes_at_the_limits(config):
    """Control: the bound is not too tight for real envelopes of 2**16 elements."""
    rng = np.random.default_rng(7)
    values = rng.standard_normal(1 << 16).astype(np.float32)
    values[:600] = 0.0  # a zero bucket: the zero-bucket checks run
    for kind, encode in (("update", codec.encode_update), ("model", codec.encode_model)):
        fields: dict[str, Any] = (
            {"base_version": 0, "num_samples": 1} if kind == "update" else {"version": 0}
        )
        payload = encode(
            {"w": values},
            job_id="j",
            sender_id="s",
            codec=config,
            seed=1,
            limits=SMALL_LIMITS,
            **fields,
        )
        result = check_memory(payload, kind, "control")
        assert isinstance(result, (codec.Update, codec.GlobalModel)), result
        peak, arrays = peak_while(result.arrays)
        assert peak < memory_bound(payload) + 4 * values.size, peak
        assert arrays["w"].shape == values.shape


# --- 6. 1 MiB hostile payloads -------------------------------------------------------------


@lru_cache(maxsize=1)
def one_mib_payloads() -> dict[str, bytes]:
    """Payloads of about 1 MiB (at most SMALL_LIMITS.max_payload_bytes) whose refusal
    needs a full scan. No timing assertion (project rule): a hang would stall pytest."""
    rng = np.random.default_rng(11)
    budget = SMALL_LIMITS.max_payload_bytes
    random_body = rng.integers(0, 256, size=budget - TRAILER, dtype=np.uint8).tobytes()

    def fp32_tensors(pad: int) -> dict[str, Any]:
        message = small_message()
        message["tensors"] = [
            {
                "name": f"t{i}".ljust(pad, "n"),
                "shape": [16],
                "dtype": "float32",
                "codec": {"id": "fp32"},
                "data": np.full(16, np.nan if i == 4095 else 1.0, dtype="<f4").tobytes(),
            }
            for i in range(4096)
        ]
        return message

    unpadded = len(seal_map(fp32_tensors(0)))
    many = fp32_tensors((budget - unpadded) // 4096 - 1)  # names fill the payload to ~1 MiB
    bins = small_message()
    bins_body = pack_map([(k, v) for k, v in bins.items() if k != "tensors"], extra_count=1)
    bins_tensors = msgpack.packb("tensors") + b"\xdc" + (4096).to_bytes(2, "big")
    bins_tensors += (b"\xc5" + (250).to_bytes(2, "big") + bytes(250)) * 4096
    return {
        "random": seal_body(random_body),
        "random-map": seal_body(b"\xdf" + (2**32 - 1).to_bytes(4, "big") + random_body[5:]),
        "data-1mib-for-2-elements": with_tensor(data=bytes(budget - 300)),
        "4096-fp32-tensors-nan-in-last": seal_map(many),
        "4096-bins-as-tensors": seal_body(bins_body + bins_tensors),
        "nested-arrays": nested_arrays(budget - 400),
        "str-1mib": with_raw_value(
            "job", b"\xdb" + (budget - 300).to_bytes(4, "big") + b"a" * (budget - 300)
        ),
    }


ONE_MIB = (  # the keys of one_mib_payloads()
    "random",
    "random-map",
    "data-1mib-for-2-elements",
    "4096-fp32-tensors-nan-in-last",
    "4096-bins-as-tensors",
    "nested-arrays",
    "str-1mib",
)


@pytest.mark.parametrize("case", ONE_MIB)
def test_one_mib_hostile_payloads_are_refused_in_bounded_memory(case):
    payload = one_mib_payloads()[case]
    assert len(payload) <= SMALL_LIMITS.max_payload_bytes
    outcome = check_memory(payload, "update", "hostile-1mib")
    assert isinstance(outcome, codec.CodecError), outcome


# --- regressions: minimal reproducers of what the fuzzers found -----------------------------


def test_deeply_nested_topk_values_config_raises_a_codec_error():
    """A 4 KiB payload: 300 ``topk`` configs nested through ``values``."""
    payload = with_tensor(codec=nested_topk(300))
    with pytest.raises(codec.EnvelopeError) as caught:
        codec.decode_update(payload)
    assert caught.value.field == "tensors[0].codec"


def test_accepted_zero_size_tensor_with_huge_dimensions_decodes():
    """``n = 0`` passes every limit, but the shape still has to be one an array can have."""
    payload = with_tensor(shape=[0, 2**32 - 1, 2**32 - 1], data=b"")
    try:
        result = codec.decode_update(payload)
    except codec.CodecError:
        return
    check_decoded(result)


@pytest.mark.parametrize("key", ["", b"", b"format"], ids=["empty-str", "empty-bin", "bin"])
def test_unknown_envelope_key_is_named_by_a_nonempty_str(key):
    message: dict[Any, Any] = small_message()
    message[key] = 1
    with pytest.raises(codec.EnvelopeError) as caught:
        codec.decode_update(seal_map(message))
    assert isinstance(caught.value.field, str)
    assert caught.value.field


# --- volume --------------------------------------------------------------------------------


def test_zz_fuzz_volume():
    """Runs last in file order: the file exercised at least 10,000 payloads."""
    missing = [source for source in VOLUME_SOURCES if not VOLUME[source]]
    if missing:
        pytest.skip(f"run the whole file to count its payloads (not run: {missing})")
    total = sum(VOLUME.values())
    print(f"\nfuzz payloads decoded: {total} {dict(sorted(VOLUME.items()))}")
    assert total >= 10_000
