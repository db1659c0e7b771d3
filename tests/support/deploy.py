"""Shared by tests/deploy: the repository root and the uv that installs uv.lock."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

__all__ = ["ROOT", "uv_path"]

ROOT = Path(__file__).resolve().parents[2]


def uv_path() -> str:
    """The venv's uv (`make test` installs it from uv.lock), else one on PATH; skips without one,
    fails instead under SCORELINE_REQUIRE_SERVICES=1 (CI) where `make test` must have put it."""
    beside = Path(sys.executable).with_name("uv")
    found = str(beside) if beside.is_file() else shutil.which("uv")
    if found:
        return found
    msg = "uv is not installed (make test installs it from uv.lock's dev group)"
    if os.environ.get("SCORELINE_REQUIRE_SERVICES") == "1":
        pytest.fail(msg)
    pytest.skip(msg)
