#!/usr/bin/env bash
# Every build step of the serving image (deploy/Dockerfile), runnable outside Docker:
#
#   deploy/build.sh install PREFIX            the locked runtime set (uv.lock, no extras, no dev
#                                             tools) and scoreline itself, as a wheel, into a new
#                                             venv at PREFIX
#   deploy/build.sh warm PREFIX REGISTRY      compile and warm every live version of REGISTRY with
#                                             PREFIX's scoreline, filling PREFIX/cache (Numba's
#                                             cache and the compiled-model tier's object files)
#
# tests/deploy/test_build.py runs both into a fresh prefix, then serves from it. uv comes from $UV,
# else from PATH, else it is bootstrapped from uv-bootstrap.txt (hashed) into a temporary venv.
# The Python of the prefix is $PYTHON (default python3); the caches are keyed on the CPU, so a
# machine with another CPU compiles again at start (same answers, slower readiness).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
export UV_PYTHON_DOWNLOADS=never  # the prefix uses the Python that is there, never a downloaded one
unset VIRTUAL_ENV                 # the caller's venv is not the prefix

die() { printf 'deploy/build.sh: %s\n' "$*" >&2; exit 2; }

cleanup=()
trap 'rm -rf "${cleanup[@]}"' EXIT

find_uv() {
    if [ -n "${UV:-}" ]; then printf '%s\n' "$UV"; return; fi
    if command -v uv >/dev/null; then command -v uv; return; fi
    local tools
    tools=$(mktemp -d); cleanup+=("$tools")
    "$PYTHON" -m venv "$tools" >&2
    "$tools/bin/python" -m pip install -q --require-hashes --no-deps -r "$ROOT/uv-bootstrap.txt" >&2
    printf '%s\n' "$tools/bin/uv"
}

# What the wheel build reads, copied out of the source tree: setuptools would otherwise write
# build/ into it, and a module left in an old build/lib would ship in the wheel.
stage_source() {
    local stage=$1
    "$PYTHON" - "$ROOT" "$stage" <<'EOF'
import shutil, sys, tomllib
from pathlib import Path

root, stage = Path(sys.argv[1]), Path(sys.argv[2])
config = tomllib.loads((root / "pyproject.toml").read_text())
folders = {Path(d).parts[0] for d in config["tool"]["setuptools"]["package-dir"].values()}
for name in ("pyproject.toml", "uv.lock", config["project"]["readme"]):
    shutil.copy2(root / name, stage / name)
for folder in sorted(folders):
    shutil.copytree(root / folder, stage / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
EOF
}

install() {
    local prefix=$1 uv stage
    [ -e "$prefix" ] && [ -n "$(ls -A "$prefix")" ] && die "$prefix exists and is not empty: install into a fresh prefix"
    uv=$(find_uv)
    stage=$(mktemp -d); cleanup+=("$stage")
    stage_source "$stage"
    # --locked: refuse a uv.lock out of step with pyproject.toml; --no-dev --no-extra: the runtime
    # set alone; --no-editable: the prefix does not need the source tree afterwards.
    UV_PROJECT_ENVIRONMENT=$prefix "$uv" sync --project "$stage" --python "$PYTHON" --locked \
        --no-dev --no-editable --quiet
    "$prefix/bin/scoreline" --help >/dev/null
    printf 'deploy/build.sh: installed scoreline and the locked runtime set into %s\n' "$prefix"
}

warm() {
    local prefix=$1 registry=$2
    [ -x "$prefix/bin/python" ] || die "no installed prefix at $prefix (run: deploy/build.sh install $prefix)"
    [ -d "$registry" ] || die "no registry folder at $registry"
    # serve reads the same NUMBA_CACHE_DIR (the Dockerfile sets it); the compiled tier keeps its
    # object files beside it, in PREFIX/cache/treecode.
    NUMBA_CACHE_DIR=${NUMBA_CACHE_DIR:-$prefix/cache/numba} "$prefix/bin/python" -I - "$registry" <<'EOF'
import sys

import scoreline

engine = scoreline.Engine(sys.argv[1], preload=True)
try:
    failed = [f"{m['model-id']} v{v['version']}: {v.get('error', v['state'])}"
              for m in engine.models() for v in m["versions"] if v["state"] == "failed"]
    if failed or not engine.ready:
        sys.exit("deploy/build.sh: the registry does not load:\n  " + "\n  ".join(failed or ["not ready"]))
    live = sum(v["state"] == "ready" for m in engine.models() for v in m["versions"])
    print(f"deploy/build.sh: compiled and warmed {live} live versions of {sys.argv[1]}")
finally:
    engine.close()
EOF
}

case "${1:-}" in
    install) [ $# -eq 2 ] || die "usage: deploy/build.sh install PREFIX"; install "$2" ;;
    warm) [ $# -eq 3 ] || die "usage: deploy/build.sh warm PREFIX REGISTRY"; warm "$2" "$3" ;;
    *) die "usage: deploy/build.sh install PREFIX | warm PREFIX REGISTRY" ;;
esac
