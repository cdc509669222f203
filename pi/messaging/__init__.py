"""Messages out and commands in: schemas, strict command parsing, the persistent outbox, MQTT transports and TLS."""
