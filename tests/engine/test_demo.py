"""`scoreline demo`: the store and registry it builds, the story it tells, and its guard rails."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

pytest.importorskip("lightgbm")

from scoreline.cli import main  # noqa: E402
from scoreline.engine.demo import FIRST_CUSTOMER_ID, SEGMENTS, STATES  # noqa: E402
from scoreline.engine.pipeline.router import Engine  # noqa: E402
from scoreline.registry.repository import Repository  # noqa: E402


def test_demo_command_builds_store_and_registry(tmp_path, capsys):
    root = tmp_path / "demo"
    assert main(["demo", "--root", str(root), "--customers", "1500"]) == 0
    assert "scoreline serve --registry" in capsys.readouterr().out

    store = pq.read_table(root / "store" / "customers.parquet")
    assert store.num_rows == 1500
    assert store.column_names == ["customer-id", "date-of-birth", "state", "postcode",
                                  "account-balance"]
    assert set(store.column("state").to_pylist()) <= set(STATES)

    repo = Repository(root / "registry")
    assert {m["model_id"]: m["versions"] for m in repo.list()} == {
        "credit-risk": [1], "customer-segmentation": [1, 2]}
    assert repo.aliases("customer-segmentation") == {"production": 2}
    assert "postcode" in repo.show("customer-segmentation")["versions"][1]["inputs"]
    assert "postcode" not in repo.show("customer-segmentation")["versions"][0]["inputs"]
    actions = [h["action"] for h in repo.history("customer-segmentation")]
    assert actions == ["registered", "promoted", "registered", "promoted", "experiment-set"]

    with Engine(root / "registry", preload=True) as engine:
        keys = [FIRST_CUSTOMER_ID + i for i in range(0, 1500, 7)]
        segments = [engine.score("customer-segmentation", {"customer-id": k}) for k in keys]
        assert {s["product-sku"] for s in segments} <= set(SEGMENTS.values())
        assert len({s["segment"] for s in segments}) >= 3  # the models really separate customers
        assert all(SEGMENTS[s["segment"]] == s["product-sku"] for s in segments)
        decisions = {engine.score("credit-risk", {"customer-id": k})["application-decision"]
                     for k in keys}
        assert "accept" in decisions and len(decisions) >= 2

    # Running it again replaces the earlier demo; a folder it did not make is refused.
    assert main(["demo", "--root", str(root), "--customers", "1000"]) == 0
    assert pq.read_metadata(root / "store" / "customers.parquet").num_rows == 1000
    other = tmp_path / "other"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    assert main(["demo", "--root", str(other), "--customers", "1000"]) == 1
    assert "not empty" in capsys.readouterr().err
    assert (other / "precious.txt").read_text() == "keep me"
