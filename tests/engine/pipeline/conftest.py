"""The demo registry the router and golden-row tests share: built once per session, with a private
copy for each test that changes it."""

from __future__ import annotations

import shutil

import pytest

DEMO_CUSTOMERS = 2000


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    pytest.importorskip("lightgbm")
    from scoreline.engine.demo import build_demo

    root = tmp_path_factory.mktemp("demo")
    build_demo(root, customers=DEMO_CUSTOMERS, train_rows=DEMO_CUSTOMERS, log=lambda *_: None)
    return root


@pytest.fixture
def registry(demo, tmp_path):
    """A private copy of the demo registry (and its store) for tests that change it."""
    shutil.copytree(demo / "registry", tmp_path / "registry")
    shutil.copytree(demo / "store", tmp_path / "store")
    return tmp_path / "registry"
