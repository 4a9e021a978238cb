"""The configs package's one exception type."""


class ConfigError(Exception):
    """An invalid or unreadable configuration; the message names the file and the field."""

    EXIT_CODE = 2
