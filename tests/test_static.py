"""Static checks as tests: `ruff check` and mypy (pyproject.toml's [tool.ruff] and [tool.mypy]) come out clean.

Run alone with `python tests/test_static.py [ruff|mypy]`. mypy cannot follow setuptools' editable import hook
(engine/ is installed as scoreline.engine), so the package layout is linked under .cache/mypy/src and mypy checks
`-p scoreline` there; its incremental cache stays in .cache/mypy/cache so repeat runs only re-read what changed.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINKS = ROOT / ".cache" / "mypy" / "src" / "scoreline"
# import name -> folder, as [tool.setuptools] package-dir maps them
SUBPACKAGES = {"engine": "engine", "kernels": "kernels", "server": "server", "registry": "registry"}
REQUIRE_SERVICES = os.environ.get("SCORELINE_REQUIRE_SERVICES") == "1"


def _tool(module: str) -> None:
    """Skip when the checker is not installed (`pip install -e '.[test]'` brings it); fail in CI."""
    if importlib.util.find_spec(module) is None:
        msg = f"{module} is not installed (it comes with scoreline[test])"
        if REQUIRE_SERVICES:
            pytest.fail(msg + " and SCORELINE_REQUIRE_SERVICES=1 makes the static checks mandatory")
        pytest.skip(msg)


def link_package() -> Path:
    """The installed layout of the package as links into the checkout (idempotent); returns mypy's search root."""
    LINKS.mkdir(parents=True, exist_ok=True)
    wanted = {p.name: p for p in (ROOT / "scoreline").iterdir() if p.name != "__pycache__"}
    wanted.update({name: ROOT / folder for name, folder in SUBPACKAGES.items()})
    for name, target in wanted.items():
        link = LINKS / name
        if link.is_symlink() and Path(os.readlink(link)) == target:
            continue
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target, target_is_directory=target.is_dir())
    for link in LINKS.iterdir():  # a file removed from scoreline/ must not linger
        if link.name not in wanted:
            link.unlink()
    return LINKS.parent


def run_ruff() -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise", "."],
                          cwd=ROOT, capture_output=True, text=True)


def run_mypy() -> subprocess.CompletedProcess:
    link_package()
    return subprocess.run([sys.executable, "-m", "mypy", "-p", "scoreline"], cwd=ROOT, capture_output=True, text=True)


def _report(result: subprocess.CompletedProcess) -> str:
    """The findings, with the linked paths turned back into the checkout's own (what a reader opens)."""
    text = result.stdout + result.stderr
    for name, folder in SUBPACKAGES.items():
        text = text.replace(f".cache/mypy/src/scoreline/{name}/", f"{folder}/")
    return text.replace(".cache/mypy/src/scoreline/", "scoreline/")


def test_ruff_is_clean():
    _tool("ruff")
    result = run_ruff()
    if result.returncode != 0:
        pytest.fail("ruff check found problems:\n" + _report(result), pytrace=False)


def test_mypy_is_clean():
    _tool("mypy")
    result = run_mypy()
    if result.returncode != 0:
        pytest.fail("mypy found problems:\n" + _report(result), pytrace=False)


if __name__ == "__main__":
    which = sys.argv[1:] or ["ruff", "mypy"]
    status = 0
    for name in which:
        result = {"ruff": run_ruff, "mypy": run_mypy}[name]()
        print(_report(result), end="")
        status |= result.returncode
    sys.exit(status)
