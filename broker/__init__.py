"""The MQTT broker side of fedmq: Mosquitto configuration, ACL, account provisioning and a
private development broker (``fedmq-broker``)."""
