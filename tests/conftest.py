"""Fixtures every test module may use."""

from tests.support.kafka_broker import kafka_broker, private_kafka_broker

__all__ = ["kafka_broker", "private_kafka_broker"]
