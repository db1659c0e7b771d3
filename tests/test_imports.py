"""Every module imports on its own, first: an import cycle between modules (one that only works
when another module happens to be imported first) fails here, naming the module."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import scoreline

_CHECK = r"""
import importlib, sys, traceback
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "scoreline" or m.startswith("scoreline.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ": " + traceback.format_exc().strip().splitlines()[-1])
print("\n".join(failed))
"""


def _modules() -> list[str]:
    names = []
    for package in ("scoreline.engine", "scoreline.server", "scoreline.registry", "scoreline.kernels"):
        module = __import__(package, fromlist=["__path__"])
        names += [m.name for m in pkgutil.walk_packages(module.__path__, package + ".")
                  if "cuda" not in m.name]  # numba.cuda imports need a CUDA toolkit
    return sorted(names) + ["scoreline.errors", "scoreline.cli"]


def test_every_module_imports_first():
    out = subprocess.run([sys.executable, "-c", _CHECK, *_modules()], capture_output=True,
                         text=True, timeout=300, cwd=scoreline.__path__[0])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
