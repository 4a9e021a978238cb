"""The common package's one exception type."""


class ProtocolError(Exception):
    """A message or topic that does not follow fedmq's protocol; the message says which field."""


class TaskError(Exception):
    """A model or dataset that cannot be built or loaded; the message names the problem."""
