"""The fedmq edge agent: receives the global model over MQTT, trains on local data with
Keras, compresses its update (error feedback, codec) and publishes it."""
