"""`scoreline registry add` and `promote` refuse versions that cannot load: the entity store is
opened and its key and input columns checked before a version becomes visible or goes live."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scoreline.cli import main
from scoreline.registry import Repository

LINEAR = {"format": "scoreline-linear", "version": 1, "objective": "binary",
          "feature_names": ["balance"], "coefficients": [0.001], "intercept": -0.5}


def manifest(store: dict) -> dict:
    return {
        "model-id": "credit",
        "inputs": [{"name": "balance", "type": "float"}],
        "entity": {"key": "customer-id", "store": store},
        "model": {"format": "linear", "artifact": "model.json"},
        "decision": {"kind": "bands", "bands": [{"label": "accept", "min": 0.5}], "default": "decline"},
    }


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.delenv("SCORELINE_REGISTRY", raising=False)
    (tmp_path / "reg").mkdir()
    pq.write_table(pa.table({"customer-id": [1, 2], "balance": [10.0, 20.0]}), tmp_path / "reg" / "customers.parquet")
    (tmp_path / "model.json").write_text(json.dumps(LINEAR))
    return tmp_path


def add(work, capsys, store: dict):
    (work / "m.json").write_text(json.dumps(manifest(store)))
    code = main(["registry", "add", "credit", "--manifest", str(work / "m.json"), "--artifact",
                 str(work / "model.json"), "--root", str(work / "reg")])
    return code, *capsys.readouterr()


GOOD = {"kind": "parquet", "path": "customers.parquet", "key-column": "customer-id"}


@pytest.mark.parametrize("store, words", [
    ({**GOOD, "key-column": "cust_id"}, ["key column", "cust_id"]),
    ({**GOOD, "path": "/etc/passwd"}, ["entity store", "/etc/passwd"]),
    ({**GOOD, "path": "nowhere.parquet"}, ["entity store"]),
    ({"kind": "sqlite", "path": "customers.parquet", "table": "t", "key-column": "customer-id"}, ["entity store"]),
], ids=["missing-key-column", "etc-passwd", "missing-file", "parquet-as-sqlite"])
def test_add_refuses_a_store_it_cannot_serve_from(work, capsys, store, words):
    code, out, err = add(work, capsys, store)
    assert code == 1 and out == "" and "refused" in err, err
    assert all(w in err for w in words), err
    assert Repository(work / "reg").versions("credit") == []


def test_add_refuses_an_input_the_store_lacks(work, capsys):
    pq.write_table(pa.table({"customer-id": [1, 2], "saldo": [10.0, 20.0]}), work / "reg" / "customers.parquet")
    code, out, err = add(work, capsys, GOOD)
    assert code == 1 and "'balance'" in err and "lacks" in err, err
    assert Repository(work / "reg").versions("credit") == []


def test_add_accepts_a_good_store(work, capsys):
    code, out, err = add(work, capsys, GOOD)
    assert (code, err) == (0, "") and "registered credit version 1" in out


def test_promote_validates_and_leaves_the_alias_where_it_was(work, capsys):
    assert add(work, capsys, GOOD)[0] == 0
    assert add(work, capsys, GOOD)[0] == 0
    reg = str(work / "reg")
    assert main(["registry", "promote", "credit", "1", "--root", reg]) == 0
    capsys.readouterr()
    # the store changes under the registry: version 2 can no longer load
    pq.write_table(pa.table({"id": [1, 2], "balance": [10.0, 20.0]}), work / "reg" / "customers.parquet")
    code = main(["registry", "promote", "credit", "2", "--root", reg])
    out, err = capsys.readouterr()
    assert code == 1 and "refused" in err and "key column" in err, err
    repo = Repository(reg)
    assert repo.aliases("credit") == {"production": 1}
    assert repo.history("credit")[-1]["action"] == "refused"
