"""Fixtures every test module may use."""

from tests.support.kafka_broker import kafka_broker, private_kafka_broker

__all__ = ["kafka_broker", "private_kafka_broker"]


def pytest_configure(config: object) -> None:
    """The parsed-rules cache (``eventd.engine.yamlcache``) of every eventd
    command the tests start goes to a directory of this run, not the home
    of whoever runs them."""
    import os
    import tempfile

    os.environ.setdefault("EVENTD_CACHE_DIR", tempfile.mkdtemp(prefix="eventd-test-cache-"))
