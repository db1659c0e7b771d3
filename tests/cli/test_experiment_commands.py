"""`scoreline experiment ...`, `scoreline log compare` and `scoreline log drift` over a demo registry
with logged traffic."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pytest

pytest.importorskip("lightgbm")

from scoreline.cli import main  # noqa: E402
from scoreline.engine.demo import FIRST_CUSTOMER_ID, build_demo  # noqa: E402
from scoreline.engine.pipeline.router import Engine  # noqa: E402

MODEL = "customer-segmentation"


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """The demo (v1 in v2's shadow) after 600 requests were scored and logged."""
    root = tmp_path_factory.mktemp("demo")
    build_demo(root, customers=3000, train_rows=3000, log=lambda *_: None)
    registry = root / "registry"
    with Engine(registry, log=f"sqlite:///{registry / 'decisions.db'}") as engine:
        keys = FIRST_CUSTOMER_ID + np.arange(3000)
        engine.score_batch(MODEL, pa.record_batch({"customer-id": keys[:500]}))
        for k in keys[500:600].tolist():
            engine.score(MODEL, {"customer-id": k})
        engine.flush()
    return registry


def _json(capsys, argv) -> object:
    capsys.readouterr()
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_experiment_set_show_canary_stop(logged, tmp_path, capsys):
    registry = tmp_path / "registry"
    shutil.copytree(logged, registry)
    root = ["--root", str(registry), "--json"]
    shown = _json(capsys, ["experiment", "show", MODEL, *root])
    assert shown["name"] == "v1-shadow" and shown["shadows"] == [1]
    made = _json(capsys, ["experiment", "set", MODEL, "--name", "ab", "--challenger", "1:0.25",
                          "-m", "try v1 on a quarter", *root])
    assert made["challengers"] == [{"version": 1, "share": 0.25}] and made["champion"] is None
    assert main(["experiment", "canary", MODEL, "1", "--share", "0.1", *root]) == 1  # v1 is taken
    assert "appears twice" in capsys.readouterr().err
    assert _json(capsys, ["experiment", "stop", MODEL, *root]) is None
    assert _json(capsys, ["experiment", "canary", MODEL, "1", "--share", "0.05", *root])["canary"] \
        == {"version": 1, "share": 0.05}
    assert main(["experiment", "set", MODEL, "--name", "x", "--challenger", "one", *root]) == 1
    assert "VERSION:SHARE" in capsys.readouterr().err
    capsys.readouterr()
    assert main(["experiment", "show", MODEL, "--root", str(registry)]) == 0
    assert "canary" in capsys.readouterr().out


def test_log_compare_pairs_shadows_with_the_champion(logged, capsys):
    result = _json(capsys, ["log", "compare", MODEL, "--root", str(logged), "--json"])
    assert result["experiment"] == "v1-shadow"
    champion, shadow = result["variants"]
    assert (champion["version"], champion["role"], champion["rows"]) == (2, "champion", 600)
    assert (shadow["version"], shadow["role"], shadow["rows"]) == (1, "shadow", 600)
    pairs = sum(n for row in shadow["confusion"].values() for n in row.values())
    agree = sum(shadow["confusion"][a].get(a, 0) for a in shadow["confusion"])
    assert pairs == 600 and 0.5 < shadow["agreement"] == agree / pairs < 1.0
    assert shadow["score_psi"] >= 0 and shadow["p99_latency_us"] >= shadow["p50_latency_us"] > 0
    capsys.readouterr()
    assert main(["log", "compare", MODEL, "--root", str(logged)]) == 0
    assert "agrees with champion" in capsys.readouterr().out


def test_log_drift_table_json_and_html(logged, tmp_path, capsys):
    page = tmp_path / "drift.html"
    report = _json(capsys, ["log", "drift", MODEL, "--root", str(logged), "--json",
                            "--html", str(page)])
    assert [v["version"] for v in report] == [1, 2]
    v2 = report[1]
    names = [c["name"] for c in v2["columns"]]
    assert names == ["date-of-birth", "state", "account-balance", "postcode", "score"]
    assert all(c["psi"] < 0.1 for c in v2["columns"])  # the same customers as the reference's
    text = page.read_text()
    assert text.count("<svg") == 9 and "<script" not in text and "href=" not in text
    capsys.readouterr()
    assert main(["log", "drift", MODEL, "--root", str(logged)]) == 0
    assert "stable" in capsys.readouterr().out
