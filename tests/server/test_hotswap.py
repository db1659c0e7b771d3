"""Hot swap under load: promote a new version through /admin/promote while requests flow; none fail,
requests answered after the promotion get the new version."""

from __future__ import annotations

import asyncio

import httpx

from scoreline.server.app import create_app
from scoreline.server.settings import ServerSettings

from tests.support.server import KEY, MODEL_ID, build_registry, live_server, make_engine


def test_promote_while_requests_flow(tmp_path):
    registry = build_registry(tmp_path / "registry")
    engine = make_engine(registry["root"])
    settings = ServerSettings(admin_keys=("adm",))
    try:
        with live_server(create_app(engine, settings=settings)) as url:

            async def main():
                seen: list[tuple[int, int]] = []  # (status, version)
                promoted = asyncio.Event()
                after: list[int] = []

                async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                    async def worker(w: int) -> None:
                        i = 0
                        while len(after) < 200:
                            sent_after = promoted.is_set()
                            r = await client.post("/v1/score", json={"model-id": MODEL_ID, KEY: 1000 + (w * 31 + i) % 300})
                            version = r.json().get("model-version")
                            seen.append((r.status_code, version))
                            if sent_after:
                                after.append(version)
                            i += 1

                    workers = [asyncio.ensure_future(worker(w)) for w in range(12)]
                    while len(seen) < 150:
                        await asyncio.sleep(0.005)
                    r = await client.post("/admin/promote", headers={"x-api-key": "adm"},
                                          json={"model-id": MODEL_ID, "version": registry["v2"]})
                    assert r.status_code == 200
                    promoted.set()
                    await asyncio.gather(*workers)
                return seen, after

            seen, after = asyncio.run(main())
        assert {status for status, _ in seen} == {200}
        assert {version for _, version in seen} == {1, 2}
        assert set(after) == {2}  # sent after the promotion returned: the new version only
    finally:
        engine.close()
