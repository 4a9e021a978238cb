"""The edge agent package's one exception type."""


class AgentError(Exception):
    """An agent failure with a message naming the cause (also published as its status)."""
