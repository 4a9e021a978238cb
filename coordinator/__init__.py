"""The fedmq coordinator: an asyncio service that validates agents' updates, aggregates them
with a strategy (FedBuff, FedAsync, FedAvg) and publishes new global model versions."""
