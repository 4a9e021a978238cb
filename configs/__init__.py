"""Settings for every fedmq process, defined once as pydantic models, loaded from YAML with
environment-variable overrides (``configs.loading``). Examples live beside this file."""
