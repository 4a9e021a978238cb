"""What the coordinator and the edge agents share, so that neither imports the other: the
MQTT topic tree and JSON messages (``protocol``), and the learning task: models and data
(``tasks``). Tensors themselves travel in ``codec`` envelopes."""
