"""Tests for `scoreline registry ...` and `scoreline log ...` (scoreline/commands/registry.py, log.py)."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from scoreline.cli import main
from scoreline.registry import DecisionLog, Repository

MANIFEST = {
    "model-id": "credit",
    "inputs": [{"name": "balance", "type": "float"}],
    "entity": {"key": "customer-id"},
    "model": {"format": "linear", "artifact": "model.json"},
    "decision": {"kind": "bands", "bands": [{"label": "accept", "min": 0.5}], "default": "decline"},
}
LINEAR = {"format": "scoreline-linear", "version": 1, "objective": "binary",
          "feature_names": ["balance"], "coefficients": [0.001], "intercept": -0.5}


@pytest.fixture
def files(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps(MANIFEST))
    (tmp_path / "model.json").write_text(json.dumps(LINEAR))
    broken = dict(LINEAR)
    del broken["intercept"]
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    return tmp_path


@pytest.fixture
def root(files, monkeypatch):
    """A registry with two versions of `credit`, added without validation (fast)."""
    root = files / "reg"
    repo = Repository(root)
    for msg in ("first", "second"):
        repo.add("credit", files / "m.json", files / "model.json", msg)
    monkeypatch.delenv("SCORELINE_REGISTRY", raising=False)
    monkeypatch.delenv("SCORELINE_LOG", raising=False)
    return root


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_add_validates_end_to_end_and_refuses_a_broken_version(files, capsys):
    root = str(files / "new")
    code, out, err = run(capsys, "registry", "add", "credit", "--manifest", str(files / "m.json"),
                         "--artifact", str(files / "model.json"), "-m", "v1", "--root", root)
    assert (code, err) == (0, "") and "registered credit version 1" in out
    code, out, err = run(capsys, "registry", "add", "credit", "--manifest", str(files / "m.json"),
                         "--artifact", str(files / "broken.json"), "--root", root)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "refused" in err and "intercept" in err
    repo = Repository(root)
    assert repo.versions("credit") == [1]
    assert [e["action"] for e in repo.history("credit")] == ["registered", "refused"]


def test_promote_rollback_and_reading_commands(root, capsys):
    r = str(root)
    assert run(capsys, "registry", "promote", "credit", "1", "--root", r)[0] == 0
    code, out, _ = run(capsys, "registry", "promote", "credit", "2", "-m", "go", "--root", r, "--json")
    assert code == 0 and json.loads(out) == {"model_id": "credit", "alias": "production",
                                             "version": 2, "previous": 1}
    code, out, _ = run(capsys, "registry", "rollback", "credit", "--root", r)
    assert code == 0 and "2 -> 1" in out
    code, out, _ = run(capsys, "registry", "promote", "credit", "2", "--alias", "staging", "--root", r)
    assert code == 0
    code, out, _ = run(capsys, "registry", "list", "--root", r, "--json")
    assert json.loads(out) == [{"model_id": "credit", "versions": [1, 2], "latest": 2,
                                "aliases": {"production": 1, "staging": 2}}]
    code, out, _ = run(capsys, "registry", "list", "--root", r)
    assert "credit" in out and "production=1, staging=2" in out
    code, out, _ = run(capsys, "registry", "show", "credit", "--root", r)
    assert code == 0 and "second" in out and "linear" in out
    shown = json.loads(run(capsys, "registry", "show", "credit", "--root", r, "--json")[1])
    assert [v["aliases"] for v in shown["versions"]] == [["production"], ["staging"]]
    code, out, _ = run(capsys, "registry", "history", "credit", "--root", r)
    assert code == 0 and "rolled-back" in out
    history = json.loads(run(capsys, "registry", "history", "credit", "--root", r, "--json")[1])
    assert [e["action"] for e in history] == ["registered", "registered", "promoted", "promoted",
                                              "rolled-back", "promoted"]


def test_errors_are_one_line_and_exit_1(root, capsys, monkeypatch):
    monkeypatch.setenv("SCORELINE_REGISTRY", str(root))      # the default root
    for argv, words in [
        (("registry", "show", "nope"), "unknown model 'nope'"),
        (("registry", "promote", "credit", "9"), "no version 9"),
        (("registry", "promote", "credit", "canary"), "no version or alias 'canary'"),
        (("registry", "rollback", "credit"), "no alias 'production'"),
        (("registry", "add", "credit", "--manifest", "missing.json", "--artifact", "x"), "missing.json"),
    ]:
        code, out, err = run(capsys, *argv)
        assert code == 1 and out == "" and err.count("\n") == 1 and words in err, (argv, err)
    with pytest.raises(SystemExit) as exc:
        main(["registry"])
    assert exc.value.code == 2


def test_log_tail_and_stats(root, capsys, monkeypatch):
    with DecisionLog(f"sqlite:///{root}/decisions.db") as log:
        log.append(pa.table({
            "model_id": ["credit", "credit", "other"], "model_version": [1, 1, 3],
            "entity_key": ["5973628", "12", "7"], "score": [0.8653, None, 0.5],
            "decision": ["accept", None, "refer"], "latency_us": [10.0, 30.0, 5.0],
            "error": [None, "entity 12 not found", None], "request_id": ["a", "b", "c"],
        }))
    r = str(root)
    code, out, _ = run(capsys, "log", "tail", "--root", r)
    assert code == 0 and "0.8653" in out and "entity 12 not found" in out
    code, out, _ = run(capsys, "log", "tail", "-n", "5", "--model", "credit", "--root", r, "--json")
    assert [row["request_id"] for row in json.loads(out)] == ["a", "b"]
    code, out, _ = run(capsys, "log", "stats", "--root", r, "--json")
    stats = json.loads(out)
    assert [(s["model_id"], s["model_version"], s["calls"], s["errors"]) for s in stats] == [
        ("credit", 1, 2, 1), ("other", 3, 1, 0)]
    code, out, _ = run(capsys, "log", "stats", "--root", r)
    assert code == 0 and "credit" in out and "20.0" in out             # mean latency
    assert len(json.loads(run(capsys, "log", "stats", "--since", "1h", "--root", r, "--json")[1])) == 2
    future = json.loads(run(capsys, "log", "stats", "--since", "2999-01-01", "--root", r, "--json")[1])
    assert future == []
    code, out, err = run(capsys, "log", "stats", "--since", "yesterday", "--root", r)
    assert code == 1 and "--since" in err
    monkeypatch.setenv("SCORELINE_LOG", f"sqlite:///{root}/decisions.db")
    assert json.loads(run(capsys, "log", "tail", "-n", "1", "--json")[1])[0]["request_id"] == "c"
    monkeypatch.delenv("SCORELINE_LOG")
    code, out, err = run(capsys, "log", "tail", "--root", str(root / "elsewhere"))
    assert code == 1 and "no decision log" in err
    assert not (root / "elsewhere").exists()
