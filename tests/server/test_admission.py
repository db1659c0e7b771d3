"""Admission control in front of the scoring endpoints: a bounded number of requests is worked on,
the next ones wait in arrival order, and beyond that a request is refused with 503 + Retry-After
before its body is even decoded (so refusing costs next to nothing)."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import pytest

from scoreline.errors import OverloadedError
from scoreline.server.app import create_app
from scoreline.server.batcher import Admission
from scoreline.server.settings import ServerSettings

from tests.support.server import build_registry, live_server, make_engine


def requester(gate: Admission, order: list):
    """A request through `gate` holding its turn `hold` seconds; appends its name, or name:503."""

    async def request(name: str, hold: float) -> None:
        try:
            async with gate:
                order.append(name)
                await asyncio.sleep(hold)
        except OverloadedError:
            order.append(f"{name}:503")

    return request


def test_admission_order_limits_and_refusals():
    async def main():
        gate = Admission(limit=2, max_waiting=2, wait=0.3)
        order = []
        request = requester(gate, order)

        first = [asyncio.create_task(request(n, 0.1)) for n in ("a", "b", "c", "d")]
        await asyncio.sleep(0)
        await request("e", 0)  # two working, two waiting: refused at once
        assert order == ["a", "b", "e:503"]
        await asyncio.gather(*first)
        assert order == ["a", "b", "e:503", "c", "d"]  # the waiting ones in arrival order
        assert gate.active == 0
        # a wait past the budget is refused, and the slot it never got is not lost
        gate = Admission(limit=1, max_waiting=1, wait=0.2)
        timed = requester(gate, order)

        holder = asyncio.create_task(timed("long", 0.6))
        await asyncio.sleep(0)
        await timed("late", 0)
        assert order[-2:] == ["long", "late:503"]
        await holder
        await timed("next", 0)
        assert order[-1] == "next" and gate.active == 0

    asyncio.run(main())


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    registry = build_registry(tmp_path_factory.mktemp("admission") / "registry")
    engine = make_engine(registry["root"])
    settings = ServerSettings(max_active_requests=1, max_waiting_requests=1, request_timeout_s=20)
    with live_server(create_app(engine, settings=settings)) as base:
        yield base
    engine.close()


def half_request(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.sendall(b"POST /v1/score HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                 b"content-length: 100\r\n\r\n{\"model-id\"")
    return sock


def test_over_capacity_is_refused_before_the_body_is_decoded(url):
    working, waiting = half_request(url), half_request(url)  # one in progress, one waiting
    time.sleep(0.3)
    try:
        answer = httpx.post(f"{url}/v1/score", content=b"{not json", timeout=5)
        assert answer.status_code == 503, answer.text  # not 400: the body was never decoded
        assert answer.json()["error"] == "overloaded" and answer.headers["retry-after"] == "1"
        v2 = httpx.post(f"{url}/v2/models/credit-risk/infer", content=b"[", timeout=5)
        assert v2.status_code == 503 and "error" in v2.json()
        assert httpx.get(f"{url}/healthz").status_code == 200  # only scoring is gated
    finally:
        working.close()
        waiting.close()
    time.sleep(0.3)
    assert httpx.post(f"{url}/v1/score", json={"model-id": "credit-risk", "customer-id": 1000}).status_code == 200
