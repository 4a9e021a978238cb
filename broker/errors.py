"""The broker package's one exception type."""


class BrokerError(Exception):
    """Provisioning, configuration or development-broker failure, with a message naming it."""
