"""The coordinator package's one exception type."""


class CoordinatorError(Exception):
    """A coordinator failure with a message naming the cause."""
