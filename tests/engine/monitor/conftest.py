"""The demo registry and store the monitoring tests score: built once, copied per test."""

from __future__ import annotations

import shutil

import pytest

CUSTOMERS = 20_000


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    pytest.importorskip("lightgbm")
    from scoreline.engine.demo import build_demo

    root = tmp_path_factory.mktemp("demo")
    build_demo(root, customers=CUSTOMERS, train_rows=5000, log=lambda *_: None)
    return root


@pytest.fixture
def root(demo, tmp_path):
    shutil.copytree(demo / "registry", tmp_path / "registry")
    shutil.copytree(demo / "store", tmp_path / "store")
    return tmp_path
