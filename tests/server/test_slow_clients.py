"""Slow and greedy clients on raw loopback sockets: a request that does not arrive whole within the
read timeout (half a body, half the headers, nothing at all) is answered 408 and closed, and one
address cannot hold more than its share of connections; well-behaved clients are served meanwhile."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from scoreline.server.app import create_app
from scoreline.server.connections import guarded_protocol
from scoreline.server.settings import ServerSettings

from tests.support.server import build_registry, live_server, make_engine

SETTINGS = ServerSettings(read_timeout_s=0.5, max_connections_per_client=40)
GOOD = {"model-id": "credit-risk", "customer-id": 1000}


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    registry = build_registry(tmp_path_factory.mktemp("slow") / "registry")
    engine = make_engine(registry["root"])
    app = create_app(engine, settings=SETTINGS)
    with live_server(app, http=guarded_protocol(SETTINGS)) as base:
        yield base
    engine.close()


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    return sock


def read_all(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything the server sends until it closes the connection (raises if it never does)."""
    sock.settimeout(timeout)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


HALF_BODY = (b"POST /v1/score HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
             b"content-length: 100\r\n\r\n{\"model-id\": \"cre")
HALF_HEADERS = b"POST /v1/score HTTP/1.1\r\nhost: x\r\ncontent-le"


@pytest.mark.parametrize("sent", [HALF_BODY, HALF_HEADERS, b""], ids=["half-body", "half-headers", "nothing"])
def test_a_request_that_never_arrives_whole_is_answered_408_and_closed(url, sent):
    sock = connect(url)
    started = time.monotonic()
    sock.sendall(sent)
    answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"did not arrive whole" in answer and b"/" not in answer.split(b"\r\n\r\n", 1)[1]
    assert 0.4 < time.monotonic() - started < 3.0
    sock.close()


def test_many_slow_clients_are_all_closed_and_good_clients_served_meanwhile(url):
    slow = [connect(url) for _ in range(30)]
    for sock in slow:
        sock.sendall(HALF_BODY)
    with httpx.Client(base_url=url, timeout=5) as client:
        assert all(client.post("/v1/score", json=GOOD).status_code == 200 for _ in range(20))
    for sock in slow:
        assert read_all(sock).startswith(b"HTTP/1.1 408")
        sock.close()


def test_connections_past_the_per_address_cap_are_refused(url):
    held = [connect(url) for _ in range(SETTINGS.max_connections_per_client)]
    time.sleep(0.1)
    extra = connect(url)
    answer = read_all(extra)
    assert answer.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in answer.lower(), answer
    extra.close()
    for sock in held:
        sock.close()
    time.sleep(0.2)  # the server sees them go
    with httpx.Client(base_url=url, timeout=5) as client:
        assert client.post("/v1/score", json=GOOD).status_code == 200


def test_a_slow_but_steady_client_within_the_deadline_is_served(url):
    body = b'{"model-id": "credit-risk", "customer-id": 1000}'
    sock = connect(url)
    sock.sendall(b"POST /v1/score HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                 b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body))
    for i in range(0, len(body), 10):
        sock.sendall(body[i:i + 10])
        time.sleep(0.03)
    assert read_all(sock).startswith(b"HTTP/1.1 200")
    sock.close()
