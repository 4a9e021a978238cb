"""The coordinator package's one exception type."""


class CoordinatorError(Exception):
    """A coordinator failure with a message naming the cause."""


class StateError(CoordinatorError):
    """The coordinator's persisted state cannot be used (the message names the file)."""
