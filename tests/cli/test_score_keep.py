"""`scoreline score --keep` never writes a file with two columns of one name: keeping a column named
like a rejects column (source, row, reason), or one column twice, is refused before anything runs."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scoreline.cli import main

LINEAR = {"format": "scoreline-linear", "version": 1, "objective": "binary",
          "feature_names": ["a"], "coefficients": [1.0], "intercept": 0.0}


@pytest.mark.parametrize("keep", ["row", "reason", "source", "a,a"])
def test_a_keep_clash_is_refused_up_front(tmp_path, capsys, keep):
    (tmp_path / "model.json").write_text(json.dumps(LINEAR))
    pq.write_table(pa.table({"a": [1.0, None], "row": [1, 2], "reason": ["x", "y"], "source": ["s", "t"]}),
                   tmp_path / "in.parquet")
    code = main(["score", str(tmp_path / "model.json"), str(tmp_path / "in.parquet"), "-o",
                 str(tmp_path / "out.parquet"), "--keep", keep])
    err = capsys.readouterr().err
    assert code == 1 and "cannot keep column" in err and err.count("\n") == 1, err
    assert sorted(os.listdir(tmp_path)) == ["in.parquet", "model.json"]


def test_other_kept_columns_are_readable_in_both_files(tmp_path, capsys):
    (tmp_path / "model.json").write_text(json.dumps(LINEAR))
    pq.write_table(pa.table({"a": [1.0, float("nan"), None], "id": [1, 2, 3]}), tmp_path / "in.parquet")
    assert main(["score", str(tmp_path / "model.json"), str(tmp_path / "in.parquet"), "-o",
                 str(tmp_path / "out.parquet"), "--keep", "id", "-q"]) == 0
    for name in ("out.parquet", "out.rejects.parquet"):
        names = pq.read_table(tmp_path / name).column_names
        assert len(names) == len(set(names)) and names[0] == "id"
