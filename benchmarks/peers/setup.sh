#!/usr/bin/env bash
# Installs the benchmark peers: each one that pins something we cannot share gets its own venv.
#
#   benchmarks/peers/setup.sh [all|main|lleaves|mlserver|wrk]...     (default: all)
#
# - main:     matplotlib, treelite + tl2cgen, onnxmltools + onnxruntime into the project's .venv,
#             constrained to the versions already installed there so no existing package moves.
# - lleaves:  .peers/lleaves-venv. lleaves 1.3.0 still calls llvmlite's legacy pass manager,
#             removed from the llvmlite that our numba needs, so it gets llvmlite==0.44.*.
# - mlserver: .peers/mlserver-venv with mlserver + mlserver-lightgbm 1.7.1; its worker crashes
#             with uvloop >= 0.22 (MLServer issue #2286), and without httptools uvicorn falls back
#             to its pure-Python HTTP parser.
# - wrk:      the HTTP load generator (Debian's package, needs root); without it the suite's load
#             generator falls back to an aiohttp client, which spends far more CPU per request.
# Each step is idempotent and prints one line saying what it did; a failed peer does not stop the
# others (the suite then skips it, saying so).
set -u
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
VENV=${VENV:-$ROOT/.venv}
PEERS=${PEERS_DIR:-$ROOT/.peers}
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
mkdir -p "$PEERS"
status=0

say() { printf 'peers: %s\n' "$*"; }

setup_main() {
    local constraints="$PEERS/main-constraints.txt"
    "$VENV/bin/python" -m pip freeze --exclude-editable | grep -v '^-e ' > "$constraints"
    if "$VENV/bin/python" -m pip install -q -c "$constraints" \
        "matplotlib>=3.8" "treelite>=4.0" "tl2cgen>=1.0" "onnxmltools>=1.12" "onnxruntime>=1.17"; then
        say "main venv: matplotlib, treelite, tl2cgen, onnxmltools, onnxruntime installed"
    else
        say "main venv: install FAILED (see pip's message above)"; status=1
    fi
}

make_venv() {  # make_venv DIR: a fresh venv unless one already works there
    [ -x "$1/bin/python" ] || "$PYTHON" -m venv "$1"
    "$1/bin/python" -m pip install -q --upgrade pip
}

setup_lleaves() {
    local v="$PEERS/lleaves-venv"
    make_venv "$v"
    if "$v/bin/python" -m pip install -q "lleaves==1.3.*" "llvmlite==0.44.*" numpy lightgbm \
        && "$v/bin/python" -c "import lleaves, llvmlite; print(llvmlite.__version__)" >/dev/null; then
        say "lleaves: $v ready"
    else
        say "lleaves: install FAILED"; status=1
    fi
}

setup_mlserver() {
    local v="$PEERS/mlserver-venv"
    make_venv "$v"
    if "$v/bin/python" -m pip install -q "mlserver==1.7.1" "mlserver-lightgbm==1.7.1" "uvloop<0.22" httptools \
        && "$v/bin/python" -c "import mlserver, mlserver_lightgbm" >/dev/null; then
        say "mlserver: $v ready"
    else
        say "mlserver: install FAILED"; status=1
    fi
}

setup_wrk() {
    if command -v wrk >/dev/null; then
        say "wrk: $(command -v wrk) present"
    elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
        && { apt-get install -y -qq wrk >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq wrk >/dev/null 2>&1; }; }; then
        say "wrk: installed from Debian's packages"
    else
        say "wrk: not installed (needs root and apt-get); HTTP load falls back to aiohttp"
    fi
}

targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(all)
for t in "${targets[@]}"; do
    case "$t" in
        all) setup_main; setup_lleaves; setup_mlserver; setup_wrk ;;
        main) setup_main ;;
        lleaves) setup_lleaves ;;
        mlserver) setup_mlserver ;;
        wrk) setup_wrk ;;
        *) say "unknown target '$t' (expected all, main, lleaves, mlserver or wrk)"; status=2 ;;
    esac
done
exit $status
