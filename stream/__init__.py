"""Kafka I/O and the scoring loop: schemas, validation, broker, producer, worker."""
