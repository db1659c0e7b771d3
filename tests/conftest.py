"""Shared test configuration: Hypothesis profile, service availability, fresh LightGBM models."""

from __future__ import annotations

import os
import socket

import pytest
from hypothesis import HealthCheck, settings

# Compilation is slow and this machine is small: no deadlines, modest example counts.
settings.register_profile(
    "scoreline",
    deadline=None,
    max_examples=int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "40")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=bool(os.environ.get("CI")),
)
settings.load_profile("scoreline")

REQUIRE_SERVICES = os.environ.get("SCORELINE_REQUIRE_SERVICES") == "1"
POSTGRES_URI = os.environ.get("SCORELINE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def postgres_uri() -> str:
    """A PostgreSQL URI on 127.0.0.1:5432; skips (or fails under .ci/run) when none is listening."""
    _require("PostgreSQL", 5432)
    return POSTGRES_URI


def _require(service: str, port: int) -> None:
    """Skip when `service` is not listening on loopback `port` (fail under SCORELINE_REQUIRE_SERVICES=1)."""
    if not _port_open("127.0.0.1", port):
        msg = f"{service} is not listening on 127.0.0.1:{port}"
        if REQUIRE_SERVICES:
            pytest.fail(msg + " and SCORELINE_REQUIRE_SERVICES=1 makes it mandatory")
        pytest.skip(msg + " (these tests skip on machines without it)")


REDIS_URL = os.environ.get("SCORELINE_TEST_REDIS", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A Redis URL on 127.0.0.1:6379; skips (or fails under .ci/run) when none is listening."""
    _require("Redis", 6379)
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url):
    """A key prefix of this test's own; every key under it is deleted afterwards."""
    import uuid

    import redis

    prefix = f"scoreline-test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
