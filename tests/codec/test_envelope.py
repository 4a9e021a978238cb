"""The envelope round-trips every field, and refuses bad input naming the field."""

from __future__ import annotations

import zlib
from typing import Any

import msgpack
import numpy as np
import pytest

import codec
from codec import DecodeLimits, decode_model, decode_update, encode_model, encode_update
from codec.envelope import CRC_TRAILER

WEIGHTS = {
    "dense/kernel:0": np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32),
    "dense/bias:0": np.linspace(-1, 1, 4, dtype=np.float32),
    "scale": np.float64(0.5),
    "empty": np.zeros((0, 3), dtype=np.float16),
}


def make_update(**overrides: Any) -> bytes:
    arguments: dict[str, Any] = dict(
        job_id="digits-1",
        sender_id="agent-7",
        base_version=12,
        num_samples=180,
        codec="int8",
        metrics={"loss": 0.25, "epochs": 2},
        update_id="a" * 32,
        seed=99,
    )
    arguments.update(overrides)
    return encode_update(WEIGHTS, **arguments)


def seal(message: dict) -> bytes:
    """Pack ``message`` (without crc32) as a sealed envelope, as the real encoder does."""
    packer = msgpack.Packer(use_bin_type=True)
    body = packer.pack_map_header(len(message) + 1) + b"".join(
        packer.pack(k) + packer.pack(v) for k, v in message.items()
    )
    return body + CRC_TRAILER + zlib.crc32(body).to_bytes(4, "big")


def unsealed(payload: bytes) -> dict:
    message = msgpack.unpackb(payload, raw=False)
    del message["crc32"]
    return message


def test_update_round_trips_every_field():
    update = decode_update(make_update())
    assert (update.job_id, update.sender_id, update.base_version) == ("digits-1", "agent-7", 12)
    assert (update.update_id, update.num_samples) == ("a" * 32, 180)
    assert update.metrics == {"loss": 0.25, "epochs": 2.0}
    assert [t.name for t in update.tensors] == list(WEIGHTS)
    assert [t.shape for t in update.tensors] == [(8, 4), (4,), (), (0, 3)]
    assert [t.dtype for t in update.tensors] == ["float32", "float32", "float64", "float16"]
    arrays = update.arrays()
    for name, original in WEIGHTS.items():
        assert arrays[name].dtype == np.float32
        assert arrays[name].shape == np.shape(original)
        assert np.allclose(arrays[name], original, atol=np.abs(original).max(initial=0) / 100)


def test_model_round_trips_losslessly():
    payload = encode_model(
        WEIGHTS, job_id="digits-1", sender_id="coordinator", version=3, metrics={"accuracy": 0.93}
    )
    model = decode_model(payload)
    assert (model.version, model.metrics) == (3, {"accuracy": 0.93})
    for name, array in model.arrays().items():
        assert np.array_equal(array, np.asarray(WEIGHTS[name], dtype=np.float32))


def test_same_inputs_and_seed_give_the_same_bytes():
    assert make_update() == make_update()
    assert make_update() != make_update(seed=100)


def test_update_ids_are_unique_by_default():
    ids = {decode_update(make_update(update_id=None)).update_id for _ in range(50)}
    assert len(ids) == 50


def test_an_update_is_not_a_model():
    with pytest.raises(codec.EnvelopeError, match="kind"):
        decode_model(make_update())


def test_accumulate_into_adds_the_weighted_tensor():
    update = decode_update(make_update())
    kernel = update.tensors[0]
    out = np.ones((8, 4), dtype=np.float32)
    kernel.accumulate_into(out, 0.5)
    assert np.allclose(out, 1 + 0.5 * kernel.decode(), rtol=1e-6)
    with pytest.raises(codec.InvalidTensorError, match="shape"):
        kernel.accumulate_into(np.ones((4, 8), dtype=np.float32))


def test_per_tensor_codec_overrides():
    tensors = codec.encode_tensors(WEIGHTS, "int4", overrides={"dense/bias:0": "fp32"}, seed=1)
    update = decode_update(
        encode_update(tensors, job_id="j", sender_id="a", base_version=0, num_samples=1)
    )
    assert [t.codec.codec_id for t in update.tensors] == ["uniform", "fp32", "uniform", "uniform"]
    assert np.array_equal(update.tensors[1].decode(), WEIGHTS["dense/bias:0"])


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda m: m.update(format=2), "format"),
        (lambda m: m.update(format=1.0), "format"),
        (lambda m: m.update(format=True), "format"),
        (lambda m: m.pop("format"), "format"),
        (lambda m: m.update(kind="model"), "kind"),
        (lambda m: m.update(extra=1), "extra"),
        (lambda m: m.pop("num_samples"), "num_samples"),
        (lambda m: m.update(job="a/b"), "job"),
        (lambda m: m.update(job="+"), "job"),
        (lambda m: m.update(sender=""), "sender"),
        (lambda m: m.update(sender=7), "sender"),
        (lambda m: m.update(base_version=-1), "base_version"),
        (lambda m: m.update(base_version=True), "base_version"),
        (lambda m: m.update(base_version="3"), "base_version"),
        (lambda m: m.update(num_samples=0), "num_samples"),
        (lambda m: m.update(update_id="#1"), "update_id"),
        (lambda m: m.update(metrics=[1]), "metrics"),
        (lambda m: m.update(metrics={"loss": "low"}), "metrics.loss"),
        (lambda m: m.update(metrics={"loss": float("nan")}), "metrics.loss"),
        (lambda m: m.update(metrics={"a b": 1.0}), "metrics"),
        (lambda m: m.update(metrics={b"loss": 1.0}), "metrics"),
        (lambda m: m.update(tensors={}), "tensors"),
        (lambda m: m["tensors"][0].update(name=""), "tensors[0].name"),
        (lambda m: m["tensors"][0].update(name="tab\there"), "tensors[0].name"),
        (lambda m: m["tensors"][1].update(name="dense/kernel:0"), "tensors[1].name"),
        (lambda m: m["tensors"][0].update(shape=[8, -4]), "tensors[0].shape[1]"),
        (lambda m: m["tensors"][0].update(shape=[4, 4]), "tensors[0].data"),
        (lambda m: m["tensors"][0].update(shape="8x4"), "tensors[0].shape"),
        (lambda m: m["tensors"][0].update(dtype="int8"), "tensors[0].dtype"),
        (lambda m: m["tensors"][0].update(codec={"id": "lz4"}), "tensors[0].codec"),
        (lambda m: m["tensors"][0].update(codec="int8"), "tensors[0].codec"),
        (lambda m: m["tensors"][0].update(codec={"id": "uniform", "bits": 8}), "tensors[0].codec"),
        (lambda m: m["tensors"][0]["codec"].update(bits=4), "tensors[0].data"),
        (lambda m: m["tensors"][0].update(data="text"), "tensors[0].data"),
        (lambda m: m["tensors"][0].update(data=m["tensors"][0]["data"][:-1]), "tensors[0].data"),
        (lambda m: m["tensors"][0].pop("dtype"), "tensors[0].dtype"),
        (lambda m: m["tensors"][0].update(extra=1), "tensors[0].extra"),
    ],
)
def test_invalid_field_is_refused_by_name(change, field):
    message = unsealed(make_update())
    change(message)
    with pytest.raises(codec.EnvelopeError) as caught:
        decode_update(seal(message))
    assert caught.value.field.startswith(field)
    assert field.split("[")[0].split(".")[0] in str(caught.value)


def test_corruption_anywhere_fails_the_checksum():
    payload = bytearray(make_update())
    for position in range(0, len(payload) - 4, 7):
        corrupted = bytearray(payload)
        corrupted[position] ^= 0x10
        with pytest.raises(codec.CodecError):
            decode_update(bytes(corrupted))
    payload[40] ^= 0x01
    with pytest.raises(codec.ChecksumError, match="crc32"):
        decode_update(bytes(payload))


@pytest.mark.parametrize("cut", [0, 1, 10, -12, -5, -1])
def test_truncated_payload_is_refused(cut):
    payload = make_update()
    with pytest.raises(codec.EnvelopeError):
        decode_update(payload[:cut] if cut else b"")


def test_crc_entry_must_be_last():
    message = unsealed(make_update())
    reordered = {"crc32": 0, **message}
    packed = msgpack.packb(reordered, use_bin_type=True)
    with pytest.raises(codec.EnvelopeError, match="crc32"):
        decode_update(packed)


def test_duplicate_keys_are_refused():
    message = unsealed(make_update())
    packer = msgpack.Packer(use_bin_type=True)
    items = [*message.items(), ("job", "other")]
    body = packer.pack_map_header(len(items) + 1) + b"".join(
        packer.pack(k) + packer.pack(v) for k, v in items
    )
    with pytest.raises(codec.EnvelopeError, match="duplicate"):
        decode_update(body + CRC_TRAILER + zlib.crc32(body).to_bytes(4, "big"))


@pytest.mark.parametrize("payload", [b"", "text", None, 5, [1]])
def test_non_bytes_or_empty_payload_is_refused(payload):
    with pytest.raises(codec.EnvelopeError):
        decode_update(payload)


@pytest.mark.parametrize(
    ("limits", "field"),
    [
        (DecodeLimits(max_payload_bytes=100), "payload"),
        (DecodeLimits(max_tensors=3), "tensors"),
        (DecodeLimits(max_total_elements=36), "tensors[2].shape"),
        (DecodeLimits(max_dims=1), "tensors[0].shape"),
        (DecodeLimits(max_metrics=1), "metrics"),
        (DecodeLimits(max_name_length=5), "tensors[0].name"),
    ],
)
def test_limits_are_enforced_by_name(limits, field):
    with pytest.raises(codec.LimitExceededError) as caught:
        decode_update(make_update(), limits=limits)
    assert caught.value.field == field


def test_msgpack_level_limits_are_limit_errors():
    message = unsealed(make_update())
    message["tensors"] = message["tensors"] * 40
    with pytest.raises(codec.LimitExceededError):
        decode_update(seal(message), limits=DecodeLimits(max_tensors=16))


def test_the_encoder_refuses_what_the_decoder_would():
    with pytest.raises(codec.EnvelopeError, match="job"):
        make_update(job_id="fedmq/#")
    with pytest.raises(codec.EnvelopeError, match="num_samples"):
        make_update(num_samples=0)
    with pytest.raises(codec.LimitExceededError):
        make_update(limits=DecodeLimits(max_tensors=2))
    with pytest.raises(codec.EnvelopeError, match="metrics"):
        make_update(metrics={"loss": float("inf")})


def test_numpy_metric_values_are_accepted():
    update = decode_update(make_update(metrics={"loss": np.float32(0.5), "n": np.int64(3)}))
    assert update.metrics == {"loss": 0.5, "n": 3.0}


def test_bad_tensor_is_refused_naming_it():
    with pytest.raises(codec.InvalidTensorError, match=r"'bad'.*flat index 1"):
        encode_update(
            {"bad": np.array([0.0, np.nan], dtype=np.float32)},
            job_id="j",
            sender_id="a",
            base_version=0,
            num_samples=1,
        )
    with pytest.raises(codec.InvalidTensorError, match=r"'ints'.*dtype"):
        encode_update(
            {"ints": np.arange(3)}, job_id="j", sender_id="a", base_version=0, num_samples=1
        )


@pytest.mark.parametrize(
    ("preset", "corrupt"),
    [
        ("fp32", lambda d: d[:4] + np.float32(np.nan).tobytes() + d[8:]),
        ("int8", lambda d: d[:4] + b"\x80" + d[5:]),  # code -128 is outside +-127
        ("int8", lambda d: np.float32(-1.0).tobytes() + d[4:]),  # negative scale
        ("int8", lambda d: np.float32(-0.0).tobytes() + d[4:]),
        ("int8", lambda d: np.float32(np.inf).tobytes() + d[4:]),
        ("int8", lambda d: np.float32(0.0).tobytes() + d[4:]),  # zero bucket, non-zero codes
        ("sign", lambda d: np.float32(np.nan).tobytes() + d[4:]),
    ],
)
def test_tensor_content_is_validated(preset, corrupt):
    values = np.linspace(-1, 1, 32, dtype=np.float32)
    message = unsealed(
        encode_update(
            {"w": values},
            codec=preset,
            job_id="j",
            sender_id="a",
            base_version=0,
            num_samples=1,
            seed=3,
        )
    )
    message["tensors"][0]["data"] = corrupt(message["tensors"][0]["data"])
    with pytest.raises(codec.EnvelopeError) as caught:
        decode_update(seal(message))
    assert caught.value.field == "tensors[0].data"


def test_non_canonical_topk_index_form_is_refused():
    from codec.topk import TopKCodec

    values = np.zeros(1000, dtype=np.float32)
    values[[3, 500]] = [1.0, -2.0]
    topk = TopKCodec(fraction=0.002, values={"id": "fp32"})
    data = topk.encode(values)
    assert data[0] == 1  # varint: 2 indices in 3 bytes beat a 125-byte bitmap
    bitmap = np.zeros(1000, dtype=bool)
    bitmap[[3, 500]] = True
    as_bitmap = b"\x00" + np.packbits(bitmap, bitorder="little").tobytes() + data[-8:]
    assert np.array_equal(topk.decode(data, (1000,)), values)
    with pytest.raises(codec.CorruptDataError, match="varint indices are smaller"):
        topk.decode(as_bitmap, (1000,))


def test_a_later_format_is_named_even_with_another_seal():
    later = msgpack.packb({"format": 2, "kind": "update", "anything": b"new"}, use_bin_type=True)
    with pytest.raises(codec.UnsupportedFormatError, match="version 2"):
        decode_update(later)


def test_pre_encoded_tensors_are_validated_before_sending():
    good = codec.encode_tensors({"w": np.ones(4, dtype=np.float32)}, "fp32")[0]
    bad = codec.EncodedTensor("w", (4,), "float32", good.codec, np.full(4, np.nan, "<f4").tobytes())
    with pytest.raises(codec.EnvelopeError, match=r"tensors\[0\]\.data"):
        encode_update([bad], job_id="j", sender_id="a", base_version=0, num_samples=1)


def test_sign_of_a_bucket_that_rounds_to_zero_decodes():
    values = np.array([-1e-45, 0.0], dtype=np.float32)  # mean |x| rounds to +0
    update = decode_update(
        encode_update(
            {"w": values}, codec="sign", job_id="j", sender_id="a", base_version=0, num_samples=1
        )
    )
    assert not update.arrays()["w"].any()
