"""Tests for registry/repository.py: versions, aliases, history, atomic and validated registration."""

from __future__ import annotations

import json
import multiprocessing
import os

import pytest

from scoreline.errors import NotFoundError, RegistrationError, SchemaError
from scoreline.registry import Repository, decode_manifest


def manifest_json(model_id: str = "credit", artifact: str = "model.txt") -> bytes:
    return json.dumps({
        "model-id": model_id,
        "inputs": [{"name": "balance", "type": "float"}],
        "entity": {"key": "customer-id"},
        "model": {"format": "lightgbm", "artifact": artifact},
        "decision": {"kind": "bands", "bands": [{"label": "accept", "min": 0.5}], "default": "decline"},
    }).encode()


@pytest.fixture
def artifact(tmp_path):
    path = tmp_path / "src" / "model.txt"
    path.parent.mkdir()
    path.write_text("tree\nversion=v4\n")
    return path


@pytest.fixture
def repo(tmp_path):
    return Repository(tmp_path / "registry")


def test_add_assigns_increasing_versions_and_copies_files(repo, artifact):
    assert repo.add("credit", manifest_json(), artifact, "first") == 1
    assert repo.add("credit", decode_manifest(manifest_json()), artifact) == 2
    vdir = repo.version_dir("credit", 2)
    assert vdir == repo.root / "credit" / "2"
    assert (vdir / "model.txt").read_text() == artifact.read_text()
    assert repo.load_manifest("credit", 1).model_id == "credit"
    assert repo.versions("credit") == [1, 2]
    assert [e["action"] for e in repo.history("credit")] == ["registered", "registered"]
    assert repo.history("credit")[0]["message"] == "first"
    assert repo.history("credit")[0]["who"]


def test_add_reads_manifest_from_a_path(repo, artifact, tmp_path):
    path = tmp_path / "m.json"
    path.write_bytes(manifest_json(artifact="nested/model.txt"))
    v = repo.add("credit", path, artifact)
    assert (repo.version_dir("credit", v) / "nested" / "model.txt").is_file()


@pytest.mark.parametrize("bad", ["", "Credit", "../x", "a/b", "..", ".hidden", "a..b", "x" * 129, "a b"])
def test_unsafe_model_ids_are_refused(repo, artifact, bad, tmp_path):
    with pytest.raises(SchemaError, match="invalid model id"):
        repo.add(bad, manifest_json(), artifact)
    assert not (tmp_path / "x").exists() and not repo.root.exists()


def test_manifest_model_id_must_match(repo, artifact):
    with pytest.raises(SchemaError, match="not 'other'") as info:
        repo.add("other", manifest_json("credit"), artifact)
    assert info.value.path == "$.model-id"


@pytest.mark.parametrize("name", ["../escape.txt", "/abs/model.txt", "manifest.json", ".tmp-x"])
def test_artifact_name_must_stay_inside_the_version(repo, artifact, name):
    with pytest.raises(SchemaError) as info:
        repo.add("credit", manifest_json(artifact=name), artifact)
    assert info.value.path == "$.model.artifact"


def test_missing_artifact_is_not_found(repo, tmp_path):
    with pytest.raises(NotFoundError, match="does not exist"):
        repo.add("credit", manifest_json(), tmp_path / "nope.txt")


def test_validation_sees_the_full_folder_before_it_is_visible(repo, artifact):
    seen = {}

    def validate(version_dir, manifest):
        seen["files"] = sorted(p.name for p in version_dir.iterdir())
        seen["visible"] = repo.versions("credit")
        seen["manifest"] = manifest.model_id

    repo.add("credit", manifest_json(), artifact, validate=validate)
    assert seen == {"files": ["manifest.json", "model.txt"], "visible": [], "manifest": "credit"}


def test_refused_version_leaves_the_repository_as_it_was(repo, artifact):
    repo.add("credit", manifest_json(), artifact)
    repo.promote("credit", 1)
    before = (repo.versions("credit"), repo.aliases("credit"), repo.state_token())

    def broken(version_dir, manifest):
        raise ValueError("tree 3 lacks num_leaves")

    with pytest.raises(RegistrationError, match="tree 3 lacks num_leaves"):
        repo.add("credit", manifest_json(), artifact, "try v2", validate=broken)
    assert (repo.versions("credit"), repo.aliases("credit"), repo.state_token()) == before
    assert sorted(os.listdir(repo.root / "credit")) == [".add.lock", ".lock", "1", "aliases.json",
                                                        "history.jsonl"]
    last = repo.history("credit")[-1]
    assert last["action"] == "refused" and "num_leaves" in last["reason"] and last["message"] == "try v2"
    # the next accepted version does not reuse a number
    assert repo.add("credit", manifest_json(), artifact) == 2


def test_stale_temp_dirs_are_invisible_and_cleaned(repo, artifact):
    repo.add("credit", manifest_json(), artifact)
    stale = repo.root / "credit" / ".tmp-crashed"
    stale.mkdir()
    (stale / "manifest.json").write_bytes(manifest_json())
    assert repo.versions("credit") == [1]
    assert repo.add("credit", manifest_json(), artifact) == 2
    assert not stale.exists()


def test_resolve(repo, artifact):
    for _ in range(3):
        repo.add("credit", manifest_json(), artifact)
    assert repo.resolve("credit") == 3          # no production alias: latest
    repo.promote("credit", 2)
    repo.promote("credit", "1", alias="staging")
    assert repo.resolve("credit") == 2
    assert repo.resolve("credit", None) == 2
    assert repo.resolve("credit", 3) == 3
    assert repo.resolve("credit", "3") == 3
    assert repo.resolve("credit", "staging") == 1
    with pytest.raises(NotFoundError, match=r"no version 7 \(versions: 1, 2, 3\)"):
        repo.resolve("credit", 7)
    with pytest.raises(NotFoundError, match=r"'canary'.*aliases: production, staging"):
        repo.resolve("credit", "canary")
    with pytest.raises(NotFoundError, match=r"unknown model 'nope' .*credit"):
        repo.resolve("nope")
    with pytest.raises(SchemaError):
        repo.resolve("credit", True)


def test_promote_and_rollback_walk_back_through_history(repo, artifact):
    for _ in range(3):
        repo.add("credit", manifest_json(), artifact)
    for v in (1, 2, 3):
        repo.promote("credit", v, message=f"go {v}")
    assert repo.rollback("credit", message="bad") == 2
    assert repo.aliases("credit") == {"production": 2}
    assert repo.rollback("credit") == 1
    with pytest.raises(NotFoundError, match="no earlier version"):
        repo.rollback("credit")
    repo.promote("credit", 3)
    assert repo.rollback("credit") == 1
    actions = [(e["action"], e["version"], e["previous"]) for e in repo.history("credit")[3:]]
    assert actions == [("promoted", 1, None), ("promoted", 2, 1), ("promoted", 3, 2),
                       ("rolled-back", 2, 3), ("rolled-back", 1, 2), ("promoted", 3, 1),
                       ("rolled-back", 1, 3)]


def test_aliases_are_independent(repo, artifact):
    for _ in range(2):
        repo.add("credit", manifest_json(), artifact)
    repo.promote("credit", 1)
    repo.promote("credit", 2, alias="staging")
    repo.promote("credit", 1, alias="staging")
    assert repo.rollback("credit", alias="staging") == 2
    assert repo.aliases("credit") == {"production": 1, "staging": 2}
    with pytest.raises(NotFoundError, match="no alias 'canary'"):
        repo.rollback("credit", alias="canary")
    with pytest.raises(SchemaError, match="invalid alias"):
        repo.promote("credit", 1, alias="12")


def test_list_and_show(repo, artifact):
    assert repo.list() == []
    repo.add("credit", manifest_json(), artifact, "initial")
    repo.add("segments", manifest_json("segments"), artifact)
    repo.promote("credit", 1)
    (repo.root / "decisions.db").write_bytes(b"")   # files in the root are not models
    assert [m["model_id"] for m in repo.list()] == ["credit", "segments"]
    assert repo.list()[0] == {"model_id": "credit", "versions": [1], "latest": 1,
                              "aliases": {"production": 1}}
    shown = repo.show("credit")
    assert shown["versions"][0]["format"] == "lightgbm"
    assert shown["versions"][0]["aliases"] == ["production"]
    assert shown["versions"][0]["message"] == "initial"
    assert [e["action"] for e in shown["history"]] == ["registered", "promoted"]


def test_state_token_changes_on_versions_and_aliases(repo, artifact):
    t0 = repo.state_token()
    repo.add("credit", manifest_json(), artifact)
    t1 = repo.state_token()
    assert t1 != t0 and repo.state_token() == t1
    repo.promote("credit", 1)
    t2 = repo.state_token()
    assert t2 != t1
    repo.promote("credit", 1, alias="staging")
    assert repo.state_token() != t2


def test_torn_history_line_is_skipped(repo, artifact):
    repo.add("credit", manifest_json(), artifact)
    with open(repo.root / "credit" / "history.jsonl", "a") as f:
        f.write('{"time": "2026-')
    assert len(repo.history("credit")) == 1


def _add_many(root, artifact, n):
    repo = Repository(root)
    return [repo.add("credit", manifest_json(), artifact) for _ in range(n)]


def test_concurrent_writers_never_share_a_version(repo, artifact):
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        results = pool.starmap(_add_many, [(repo.root, artifact, 5)] * 2)
    got = sorted(results[0] + results[1])
    assert got == list(range(1, 11))
    assert repo.versions("credit") == got
    assert len(repo.history("credit")) == 10


def test_a_crash_mid_registration_leaves_no_version(repo, artifact, tmp_path):
    import subprocess
    import sys

    (tmp_path / "m.json").write_bytes(manifest_json())
    code = (
        "import os, sys\n"
        "from scoreline.registry import Repository\n"
        "def die(version_dir, manifest):\n"
        "    os._exit(3)   # the process dies with the version written but not yet renamed\n"
        "Repository(sys.argv[1]).add('credit', sys.argv[2], sys.argv[3], validate=die)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(repo.root), str(tmp_path / "m.json"),
                           str(artifact)], timeout=60)
    assert done.returncode == 3
    assert repo.versions("credit") == [] and repo.history("credit") == []
    assert any(p.name.startswith(".tmp-") for p in (repo.root / "credit").iterdir())
    assert repo.add("credit", manifest_json(), artifact) == 1      # the dead writer's lock is gone
    assert not any(p.name.startswith(".tmp-") for p in (repo.root / "credit").iterdir())
