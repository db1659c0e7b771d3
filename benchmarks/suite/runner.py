"""Runs the suite's sections under one configuration and writes results.json, results.md and plots.

    cfg = Config.for_run(quick=True, out=Path("bench-results"))
    results = run(cfg)          # also writes the files under cfg.out

`quick` trims models, rows and rounds so the run ends in a few minutes on 2 cores; `timing=False`
runs every measurement once on tiny inputs so tests can check the plumbing without timing.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.suite import models as bench_models
from benchmarks.suite.kernels import default_threads
from benchmarks.suite.peers import ENGINES, REPO

__all__ = ["Config", "SECTIONS", "run"]

SECTIONS = ("kernels", "pipeline", "http", "bulk", "scaling")


@dataclass
class Config:
    """Everything a run needs to know; `for_run` fills the quick/full defaults."""

    out: Path
    quick: bool = False
    timing: bool = True
    only: tuple[str, ...] = SECTIONS
    models: tuple[bench_models.ModelSpec, ...] = bench_models.KERNEL_MODELS
    engines: tuple[str, ...] = ENGINES
    cache: Path = REPO / ".cache"
    peers_dir: Path = REPO / ".peers"  # the peers' own venvs (benchmarks/peers/setup.sh)
    batch_sizes: tuple[int, ...] = (1, 16, 256)
    bulk_rows: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    threads: tuple[int, ...] = field(default_factory=default_threads)
    rounds: int = 5
    budget_s: float = 0.2  # seconds per engine per round for the per-call latency blocks
    fixed_calls: int | None = None  # timing off: this many calls instead of a time budget
    # Bulk sizes whose rows x node visits per row exceed this are skipped (said so): LightGBM on
    # one thread scores the 1000 x 255 model (~13k visits a row) at 1M rows in about 3 minutes a
    # call. None keeps every size.
    bulk_visit_cap: float | None = 2e9
    # Bulk sizes whose float64 matrix is larger than this many bytes are skipped too (said so):
    # real-grants' 1,502 features make 1M rows 12 GB, copied again by each peer's worker process
    # on a 23 GB machine. 1.5e9 keeps 100k of its rows and 1M of every other model's.
    bulk_bytes_cap: float | None = 1.5e9
    agreement_rows: int = 2_000
    # peer -> most leaves it may compile in this run when no cached build exists (see peers.Context)
    compile_leaf_limit: dict = field(default_factory=lambda: {"lleaves": 40_000, "treelite": 300_000,
                                                              "scoreline-model": 40_000})
    command: str = ""
    skipped: list[str] = field(default_factory=list)
    log_stream: object = sys.stderr

    @classmethod
    def for_run(cls, *, quick: bool, out: Path, timing: bool = True, **overrides) -> "Config":
        cfg = cls(out=Path(out), quick=quick, timing=timing)
        if quick:
            cfg.models = tuple(m for m in bench_models.KERNEL_MODELS if m.in_quick)
            cfg.bulk_rows = (10_000, 100_000)
            cfg.bulk_visit_cap = 2e8
            cfg.rounds = 3
            cfg.budget_s = 0.05
            cfg.compile_leaf_limit = {"lleaves": 16_000, "treelite": 40_000, "scoreline-model": 16_000}
        if not timing:
            cfg.rounds = 1
            cfg.fixed_calls = 3
            cfg.bulk_rows = (500,)
            cfg.agreement_rows = 200
        for key, value in overrides.items():
            if not hasattr(cfg, key):
                raise TypeError(f"unknown Config field {key!r}")
            setattr(cfg, key, value)
        return cfg

    def bulk_sizes(self, visits_per_row: float, features: int = 0) -> tuple[int, ...]:
        """The bulk row counts to time on a model whose rows make `visits_per_row` node visits."""
        return tuple(n for n in self.bulk_rows if not self.over_caps(n, visits_per_row, features)) or self.bulk_rows[:1]

    def over_caps(self, rows: int, visits_per_row: float, features: int) -> str | None:
        """Why `rows` bulk rows are over this run's caps (None when they are not)."""
        if self.bulk_visit_cap is not None and rows * visits_per_row > self.bulk_visit_cap:
            return (f"{rows:,} rows x ~{visits_per_row:,.0f} node visits a row is over this run's cap of "
                    f"{self.bulk_visit_cap:.0e} (the slowest engine would take minutes a call)")
        if self.bulk_bytes_cap is not None and rows * features * 8 > self.bulk_bytes_cap:
            return (f"{rows:,} rows x {features:,} float64 features is {rows * features * 8 / 1e9:.1f} GB, over "
                    f"this run's cap of {self.bulk_bytes_cap / 1e9:.1f} GB (each peer's process holds a copy)")
        return None

    def log(self, message: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=self.log_stream, flush=True)

    def skip(self, line: str) -> None:
        """A peer or section that did not run: said out loud now and listed in the results."""
        self.skipped.append(line)
        self.log(f"SKIPPED {line}")


def run(cfg: Config) -> dict:
    """Run the selected sections, write the outputs under cfg.out, return the results dict."""
    from benchmarks.suite import report

    cfg.out.mkdir(parents=True, exist_ok=True)
    results = {"meta": machine_meta(cfg), "skipped": cfg.skipped}
    started = time.perf_counter()
    for section in cfg.only:
        if section not in SECTIONS:
            raise ValueError(f"unknown section {section!r}; expected some of {', '.join(SECTIONS)}")
        t0 = time.perf_counter()
        cfg.log(f"section {section}: start")
        results[section] = _section(section)(cfg, cfg.log)
        results.setdefault("section_seconds", {})[section] = round(time.perf_counter() - t0, 1)
    results["meta"]["wall_s"] = round(time.perf_counter() - started, 1)
    results["targets"] = report.targets(results) if cfg.timing else [
        {"target": "all targets", "reached": None, "figure": None, "why": "timing off: nothing was measured"}]
    report.write_all(results, cfg.out)
    cfg.log(f"wrote {cfg.out / 'results.json'}, {cfg.out / 'results.md'} and plots")
    return results


def _section(name: str):
    if name == "kernels":
        from benchmarks.suite.kernels import run_kernels

        return run_kernels
    if name == "http":
        from benchmarks.suite.httpbench import run_http

        return run_http
    if name == "scaling":
        from benchmarks.suite.scaling import run_scaling

        return run_scaling
    from benchmarks.suite import sections

    return getattr(sections, f"run_{name}")


def machine_meta(cfg: Config) -> dict:
    """Machine, versions and command: what a reader needs to compare a run with their own."""
    versions = {"python": platform.python_version()}
    for module in ("scoreline", "numpy", "numba", "llvmlite", "pyarrow", "lightgbm", "treelite", "tl2cgen",
                   "onnxruntime", "onnxmltools", "matplotlib"):
        try:
            versions[module] = __import__(module).__version__
        except Exception:  # not installed: the skipped lines say what that removed
            versions[module] = None
    for venv, pkg in (("lleaves-venv", "lleaves"), ("mlserver-venv", "mlserver")):
        versions[pkg] = _venv_version(REPO / ".peers" / venv, pkg)
    return {
        "started": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": cfg.command or "scoreline bench" + (" --quick" if cfg.quick else ""),
        "quick": cfg.quick,
        "timing": cfg.timing,
        "machine": {
            "cpu": _cpu_name(), "cores": os.cpu_count(), "platform": platform.platform(),
            "memory_gib": _memory_gib(),
            "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "versions": versions,
        "rounds": cfg.rounds,
        "threads": list(cfg.threads),
    }


def _venv_version(venv: Path, pkg: str) -> str | None:
    found = sorted(venv.glob(f"lib/python*/site-packages/{pkg}-*.dist-info"))
    return found[-1].name[len(pkg) + 1: -len(".dist-info")] if found else None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None
