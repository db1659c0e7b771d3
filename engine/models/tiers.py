"""Kernel choice at load: time each exact candidate tier on representative rows, per batch size; cache the choice.

Tiers (all bit-identical on raw scores, docs/lightgbm-semantics.md):
  "generic"  the shared walk over packed node records (kernels/trees.py); for a batch of fewer
             than eight rows it is the serial one-row path (eight trees in lockstep per row);
  "simd"     branch-free full evaluation of 32/64-row blocks (engine/models/simd.py);
  "bins"     the same on 16-bit bins of the thresholds, 128-row blocks (engine/models/simd_bins.py;
             models without categorical splits);
  "model"    the model's own trees as machine code (engine/models/treecode.py).
No single one wins everywhere (walking code wins where rows leave trees after a few predictable
branches, the SIMD tier where branches are unpredictable or trees bushy), so each candidate is
timed on rows drawn from the model's own thresholds (or given sample rows) at a few batch sizes,
after checking that it reproduces the generic kernel's raw scores on those rows; a batch of n
rows then takes the tier that was fastest at the largest measured size <= n.

The choice is kept as JSON in load_lightgbm's ``cache_dir`` (or ``default_cache_dir()``), named
by the sha256 of the model's packed arrays, the host CPU and this module's version, so a second
load of the same model on the same machine measures nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scoreline.engine.models import codegen, treecode
from scoreline.engine.models.packing import PackedEnsemble
from scoreline.kernels import trees as layout

from scoreline.errors import InputError

__all__ = [
    "BATCH_SIZES",
    "TIERS",
    "TierChoice",
    "TierSet",
    "choice_key",
    "default_cache_dir",
    "load_choice",
    "measure",
    "representative_rows",
    "save_choice",
]

TIERS = ("generic", "simd", "bins", "model")
# Batch sizes timed at load; a batch uses the ranking of the largest size <= its rows.
BATCH_SIZES = (1, 8, 64, 512, 2048)
# Bump when the measurement or a tier's code changes enough to redo every choice.
CHOICE_VERSION = 5  # 2: the SIMD tier tiles forests over a few L2 caches; 3: the binned SIMD tier;
# 4: timed on changing rows, the median; 5: the SIMD tier's category tables
# Time spent per candidate and batch size (seconds of repeated calls, after one warm-up call).
_BUDGET = 0.002
_LONG = 0.02
_MAX_REPEATS = 200


@dataclass
class TierChoice:
    """Per batch size, the exact candidate tiers fastest first, with their ns per row.

    rankings: ((rows, (tier, ...)), ...) ascending by rows; ns_per_row: {tier: {rows: ns}};
    excluded: {tier: why it does not take part}; source: "measured", "cached" or "pinned".
    """

    rankings: tuple
    ns_per_row: dict = field(default_factory=dict)
    excluded: dict = field(default_factory=dict)
    source: str = "measured"
    seconds: float = 0.0

    def best(self, rows: int, ready: frozenset) -> str:
        """The fastest ready tier for a batch of ``rows`` (generic is always ready)."""
        ranking = self.rankings[0][1]
        for size, order in self.rankings:
            if rows >= size:
                ranking = order
        for tier in ranking:
            if tier in ready:
                return tier
        return "generic"

    def as_dict(self, ready: frozenset) -> dict:
        """What ``registry show`` and ``/v1/models`` print: the tier per batch size and why."""
        return {
            "by_batch_rows": {str(size): self.best(size, ready) for size, _ in self.rankings},
            "ns_per_row": {tier: {str(k): round(v, 1) for k, v in sizes.items()}
                           for tier, sizes in self.ns_per_row.items()},
            "excluded": dict(self.excluded),
            "source": self.source,
            "seconds": round(self.seconds, 4),
        }

    def to_json(self) -> str:
        return json.dumps({"rankings": [[size, list(order)] for size, order in self.rankings],
                           "ns_per_row": {t: {str(k): v for k, v in s.items()} for t, s in self.ns_per_row.items()},
                           "excluded": self.excluded})

    @classmethod
    def from_json(cls, text: str) -> TierChoice:
        data = json.loads(text)
        return cls(rankings=tuple((int(size), tuple(order)) for size, order in data["rankings"]),
                   ns_per_row={t: {int(k): float(v) for k, v in s.items()} for t, s in data["ns_per_row"].items()},
                   excluded=dict(data["excluded"]), source="cached")


def representative_rows(packed: PackedEnsemble, rows: int = BATCH_SIZES[-1], seed: int = 0) -> np.ndarray:
    """float64 C-order rows drawn from the model's own split thresholds, each column on its own.

    A feature's value falls uniformly in one of the intervals its thresholds cut (the outer two
    one interval-width wide), so every split sees both sides about as often as the model's
    structure allows; categorical features draw categories their sets name, and 1% of values
    are NaN. Columns independent: the branch predictor cannot learn the rows.
    """
    rng = np.random.default_rng(seed)
    X = np.zeros((rows, packed.num_features), dtype=np.float64)
    words = packed.nodes.view(np.int64)[:, 1]
    split = packed.nodes[:, 0] != np.inf
    feature = (words >> layout.FEATURE_SHIFT) & ((1 << 24) - 1)
    categorical = (words & layout.CATEGORICAL) != 0
    for f in np.unique(feature[split]):
        numeric = np.unique(packed.nodes[split & ~categorical & (feature == f), 0])
        numeric = numeric[np.isfinite(numeric)]
        if numeric.size:
            width = max(float(numeric[-1] - numeric[0]), 1.0) / max(numeric.size, 1)
            edges = np.concatenate(([numeric[0] - width], numeric, [numeric[-1] + width]))
            pick = rng.integers(0, edges.size - 1, rows)
            X[:, f] = edges[pick] + (edges[pick + 1] - edges[pick]) * rng.random(rows)
        else:
            X[:, f] = rng.integers(0, 64, rows).astype(np.float64)
    X[rng.random(X.shape) < 0.01] = np.nan
    return X


def measure(candidates: dict[str, Callable[[np.ndarray, np.ndarray], None]], X: np.ndarray,
            out: np.ndarray) -> TierChoice:
    """Time every candidate ``run(X_part, out_part)`` at each BATCH_SIZES size, interleaved.

    The first candidate is the reference: one whose raw scores on X differ from it by a single
    bit is excluded. Returns the rankings (the median of repeated calls on changing rows, ns per
    row).
    """
    started = time.perf_counter()
    reference_name = next(iter(candidates))
    candidates[reference_name](X, out)
    reference = out.copy()
    exact, excluded = {}, {}
    for name, run in candidates.items():
        run(X, out)
        if np.array_equal(out, reference, equal_nan=True):
            exact[name] = run
        else:
            excluded[name] = "differs from the generic kernel on the measurement rows"
    ns: dict[str, dict[int, float]] = {name: {} for name in exact}
    for size in BATCH_SIZES:
        rows = min(size, X.shape[0])
        samples: dict[str, list[float]] = {name: [] for name in exact}
        spent = dict.fromkeys(exact, 0.0)
        for repeat in range(_MAX_REPEATS):
            # Each call takes the next rows (every candidate the same ones): on one row called again
            # and again the branch predictor learns it, and branchy code looks 2.5x faster than it
            # is on a stream of requests (the compiled tier on real-flights: 6.6 us against 16.5).
            start = repeat * rows % (X.shape[0] - rows + 1)
            part, part_out = X[start:start + rows], out[start:start + rows]
            for name, run in exact.items():
                tick = time.perf_counter()
                run(part, part_out)
                took = time.perf_counter() - tick
                samples[name].append(took)
                spent[name] += took
            if min(spent.values()) >= _BUDGET and (len(samples[reference_name]) >= 3 or max(spent.values()) >= _LONG):
                break  # three calls each, or one where a call is long (large models stay fast to load)
        for name, values in samples.items():
            # The median, not the fastest: calls differ in their rows, and the least disturbed one
            # would be the one on the easiest rows.
            ns[name][rows] = float(np.median(values)) / rows * 1e9
    rankings = tuple((size, tuple(sorted(ns, key=lambda name: ns[name][min(size, X.shape[0])])))
                     for size in BATCH_SIZES)
    return TierChoice(rankings=rankings, ns_per_row=ns, excluded=excluded, source="measured",
                      seconds=time.perf_counter() - started)


def default_cache_dir() -> Path:
    """``$NUMBA_CACHE_DIR/../tiers``, or ~/.cache/scoreline/tiers without NUMBA_CACHE_DIR."""
    numba_dir = os.environ.get("NUMBA_CACHE_DIR")
    if numba_dir:
        return Path(numba_dir).resolve().parent / "tiers"
    return Path.home() / ".cache" / "scoreline" / "tiers"


def choice_key(packed: PackedEnsemble, candidates: tuple[str, ...], host: str) -> str:
    """sha256 of what the choice depends on: the model's arrays, the candidates, the host, the version."""
    key = hashlib.sha256(f"{CHOICE_VERSION}|{host}|{','.join(candidates)}|{packed.num_class}\n".encode())
    for array in (packed.nodes, packed.leaf_value, packed.trees, packed.cat_bits):
        key.update(np.ascontiguousarray(array).tobytes())
    return key.hexdigest()[:40]


def load_choice(key: str, cache_dir: Path | None = None) -> TierChoice | None:
    path = (cache_dir or default_cache_dir()) / f"choice_{key}.json"
    try:
        return TierChoice.from_json(path.read_text())
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent or unreadable: measure again


def save_choice(key: str, choice: TierChoice, cache_dir: Path | None = None) -> None:
    directory = cache_dir or default_cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"choice_{key}.json"
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp")
        tmp.write_text(choice.to_json())
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs a measurement on the next load


class TierSet:
    """One model's tiers at run time: which are ready, the choice, and a background compile.

    run(tier, X, divisor, link, out, threads) scores with one tier (the model's dispatch);
    spec is the compiled tier's ``treecode.model_spec`` (None: the tier cannot hold the model).
    ``load()`` does the work: pinned modes load their tier; "auto" loads what is ready at once (the compiled tier only
    from its cached object file), measures or reads the cached choice, and compiles a missing
    compiled tier in a thread, after which it measures again and switches. Reads of the choice
    are single attribute loads, so requests never wait on the thread.
    """

    def __init__(self, run, packed: PackedEnsemble, *, mode: str, ready: frozenset, spec: tuple | None,
                 cache_dir, sample_rows, excluded: dict, choice_json: str | None):
        self._run = run
        self._num_class = packed.num_class
        self._spec = spec
        self._cache_dir = cache_dir
        self.compiled: treecode.CompiledTrees | None = None  # the compiled tier, once loaded
        self.excluded = dict(excluded)
        self._thread: threading.Thread | None = None
        self._rows = _sample(packed, sample_rows)
        self._packed, self._mode, self._loaded, self._choice_json = packed, mode, ready, choice_json

    def load(self) -> None:
        """Load the ready tiers and make (or read) the choice; ``run`` may ask for ``compiled``."""
        spec, cache_dir, mode = self._spec, self._cache_dir, self._mode
        ready = {"generic"} | set(self._loaded)
        if mode != "auto":
            if mode == "model" and spec is not None:
                self.compiled = treecode.compile_spec(spec, cache_dir)
                ready.add("model")
            order = (mode, "generic") if mode in ready else ("generic",)
            self._set(frozenset(ready), TierChoice(rankings=((1, order),), source="pinned"))
            self._warm()
            return
        eventual = tuple(t for t in TIERS if t in ready or (t == "model" and spec is not None))
        self._key = choice_key(self._packed, eventual, codegen.host_key())
        self._dir = Path(cache_dir) if cache_dir is not None else None
        compiled = spec is not None and treecode.cached_path(spec, cache_dir).exists()
        if compiled:
            self.compiled = treecode.compile_spec(spec, cache_dir)
            ready.add("model")
        choice = TierChoice.from_json(self._choice_json) if self._choice_json else load_choice(self._key, self._dir)
        if choice is not None:
            self._set(frozenset(ready), choice)
            self._warm()
        else:
            self._set(frozenset(ready), self._measure(ready))
            if spec is None or compiled:
                save_choice(self._key, self._choice, self._dir)
        wanted = choice is None or any(order[0] == "model" for _, order in choice.rankings)
        if spec is not None and not compiled and wanted:
            # Measure again once compiled only when the choice was not already made with it.
            self._thread = threading.Thread(target=self._compile, args=(choice is None,),
                                            name="scoreline-treecode", daemon=False)
            self._thread.start()

    def _set(self, ready: frozenset, choice: TierChoice) -> None:
        # Largest batch sizes first: pick() stops at the first size a batch reaches.
        by_rows = tuple((size, choice.best(size, ready)) for size, _ in reversed(choice.rankings))
        self._ready, self._choice, self._by_rows = ready, choice, by_rows

    def pick(self, rows: int) -> str:
        """The tier for a batch of ``rows``."""
        for size, tier in self._by_rows:
            if rows >= size:
                return tier
        return self._by_rows[-1][1]

    @property
    def tier(self) -> str:
        return self.pick(BATCH_SIZES[-1])

    @property
    def used(self) -> frozenset:
        """Every tier the choice gives some batch size to."""
        return frozenset(tier for _, tier in self._by_rows)

    def _runner(self, tier: str):
        run = self._run
        return lambda X, out: run(tier, X, 0.0, 0, out, 1)

    def _measure(self, ready) -> TierChoice:
        candidates = {tier: self._runner(tier) for tier in TIERS if tier in ready}
        out = np.empty((self._rows.shape[0], self._num_class), dtype=np.float64)
        return measure(candidates, self._rows, out)

    def _warm(self) -> None:
        """Call every tier the choice uses once, so its machine code is loaded before traffic
        (from Numba's cache the generic kernel's first call alone takes 0.6-1.7 s here)."""
        out = np.empty((1, self._num_class), dtype=np.float64)
        for tier in self.used:
            self._runner(tier)(self._rows[:1], out)

    def _compile(self, remeasure: bool) -> None:
        try:
            self.compiled = treecode.compile_spec(self._spec, self._cache_dir)
        except Exception as exc:  # noqa: BLE001 -- the other tiers keep serving; the report says why
            self.excluded["model"] = f"compile failed: {exc}"
            return
        # Every input layout a request may bring, loaded before the tier serves (the drivers
        # copy float32 and F-order tiles: other Numba specializations).
        out = np.empty((1, self._num_class), dtype=np.float64)
        for dtype in (np.float64, np.float32):
            for order in "CF":
                self._runner("model")(np.zeros((1, self._rows.shape[1]), dtype=dtype, order=order), out)
        ready = self._ready | {"model"}
        choice = self._measure(ready) if remeasure else self._choice
        self._set(ready, choice)
        save_choice(self._key, choice, self._dir)

    def wait(self, timeout: float | None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def choice_json(self) -> str | None:
        return None if self._choice.source == "pinned" else self._choice.to_json()

    def report(self) -> dict:
        report = self._choice.as_dict(self._ready)
        report["tier"] = self.tier
        report["ready"] = sorted(self._ready)
        report["pending"] = self._thread is not None and self._thread.is_alive()
        report["excluded"] = {**self.excluded, **report["excluded"]}
        return report


def _sample(packed: PackedEnsemble, sample_rows) -> np.ndarray:
    """Measurement rows: the given sample rows resampled (whole rows) to BATCH_SIZES[-1], or
    rows drawn from the model's thresholds."""
    if sample_rows is None:
        return representative_rows(packed)
    rows = np.asarray(sample_rows, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[1] != packed.num_features or rows.shape[0] == 0:
        raise InputError(f"expected sample rows as a (rows, {packed.num_features}) matrix, got shape "
                         f"{getattr(rows, 'shape', None)}", path="sample_rows")
    pick = np.random.default_rng(0).integers(0, rows.shape[0], BATCH_SIZES[-1])
    return np.ascontiguousarray(rows[pick])
