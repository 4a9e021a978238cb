"""The codec's exceptions: everything it raises on bad input is a ``CodecError``."""

from __future__ import annotations


class CodecError(Exception):
    """Base of every error the codec raises for bad input, configuration or data."""


class UnknownCodecError(CodecError, ValueError):
    """A codec id that is not registered."""

    def __init__(self, codec_id: object) -> None:
        super().__init__(f"unknown codec id {codec_id!r}")
        self.codec_id = codec_id


class CodecConfigError(CodecError, ValueError):
    """A codec parameter that is missing, unknown, of the wrong type or out of range."""


class InvalidTensorError(CodecError, ValueError):
    """A tensor the codec refuses to encode (NaN/Inf, non-float dtype, too large)."""


class CorruptDataError(CodecError, ValueError):
    """Encoded tensor bytes that do not match their codec, shape or value ranges."""


class EnvelopeError(CodecError, ValueError):
    """A malformed envelope; ``field`` names the offending field (``tensors[2].shape``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class UnsupportedFormatError(EnvelopeError):
    """An envelope whose format version this decoder does not know."""


class LimitExceededError(EnvelopeError):
    """An envelope that exceeds a caller-configured decode limit."""


class ChecksumError(EnvelopeError):
    """Tensor data whose CRC32 does not match the envelope's checksum."""
