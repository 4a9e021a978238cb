"""fedmq's codec: compact, versioned, pickle-free model updates.

``get_codec(config)`` gives a ``Codec`` (fp32, fp16, uniform b-bit, qsgd, scaled sign,
top-k); ``encode_update`` / ``decode_update`` (and ``encode_model`` / ``decode_model``) wrap
tensors in the wire envelope. ``BACKEND`` says whether the compiled kernels or the numpy
fallback run (``FEDMQ_CODEC_BACKEND=numpy`` forces the fallback); both give identical bytes.
"""

from codec.backend import BACKEND
from codec.base import Codec
from codec.envelope import (
    FORMAT_VERSION,
    DecodeLimits,
    EncodedTensor,
    GlobalModel,
    Update,
    decode_model,
    decode_update,
    encode_model,
    encode_tensors,
    encode_update,
)
from codec.errors import (
    ChecksumError,
    CodecConfigError,
    CodecError,
    CorruptDataError,
    EnvelopeError,
    InvalidTensorError,
    LimitExceededError,
    UnknownCodecError,
    UnsupportedFormatError,
)
from codec.floating import Float16Codec, Float32Codec
from codec.qsgd import QSGDCodec
from codec.registry import CODECS, PRESETS, get_codec, register_codec
from codec.sign import ScaledSignCodec
from codec.topk import TopKCodec
from codec.uniform import UniformCodec

__all__ = [
    "BACKEND",
    "CODECS",
    "FORMAT_VERSION",
    "PRESETS",
    "ChecksumError",
    "Codec",
    "CodecConfigError",
    "CodecError",
    "CorruptDataError",
    "DecodeLimits",
    "EncodedTensor",
    "EnvelopeError",
    "Float16Codec",
    "Float32Codec",
    "GlobalModel",
    "InvalidTensorError",
    "LimitExceededError",
    "QSGDCodec",
    "ScaledSignCodec",
    "TopKCodec",
    "UniformCodec",
    "UnknownCodecError",
    "UnsupportedFormatError",
    "Update",
    "decode_model",
    "decode_update",
    "encode_model",
    "encode_tensors",
    "encode_update",
    "get_codec",
    "register_codec",
]
