"""One model version compiled from its manifest into one pipeline of stages: fill (inline values
or the entity store) -> transforms -> predict -> decide, giving a typed `Result` for n rows.

Everything is prepared in the constructor (artifact loaded, plan compiled, every kernel warmed by
scoring a generated sample through both the n-row and the one-row runs), so no request ever
compiles. Scoring is pure: it does not log. Per-row problems become the row's error (a
ScorelineError with its kind and path, `$.inputs.<name>` for a bad value, `$.<key>` for an
unknown entity); only a batch that cannot be scored at all raises InputError.

The one-row run (`run_one`) is a specialisation of the same stage objects: the fill reads one
row's values without Arrow and the decision is taken in Python scalars; a row's error is the same
error object as on the n-row run.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from scoreline.errors import (
    NotFoundError, RegistrationError, SchemaError, ScorelineError,
)
from scoreline.registry import manifest as M
from scoreline.registry.repository import store_base as _registry_root

from scoreline.engine.data.days import EPOCH
from scoreline.engine.data.fields import check_default
from scoreline.engine.data.request import RequestSchema, RowBatch
from scoreline.engine.data.samples import sample_inputs
from scoreline.engine.pipeline import golden
from scoreline.engine.pipeline.decide import Decider
from scoreline.engine.pipeline.fill import Entities, Fill
from scoreline.engine.pipeline.plan import Plan, compile_plan
from scoreline.engine.pipeline.remote_stage import check_remote, first_fallback, remote_stages
from scoreline.engine.pipeline.result import Contract, Result
from scoreline.engine.pipeline.stages import Decide, Predict, Stage, State, Transform
from scoreline.engine.data.validate import check_store

__all__ = ["Deployment", "validate_version", "scoring_day"]

_KEY_TYPES = {"int": pa.int64(), "string": pa.string()}
# Warm-up batch sizes: one row and a few rows type the work matrix differently in Numba (a 1-row
# F-order matrix is also C-contiguous), and the model switches to its parallel kernel at 2,048.
_WARM_SIZES = (1, 7, 2048)
def _today() -> int:
    """Today (UTC) as days since 1970-01-01: ~0.2 us, against ~1.5 us through datetime."""
    return int(time.time() // 86400)


def scoring_day(now=None) -> int:
    """The scoring date as days since 1970-01-01: `now` (a date, a datetime taken in UTC, or
    numpy datetime64) or today in UTC."""
    if now is None:
        return _today()
    if isinstance(now, dt.datetime):
        if now.tzinfo is not None:
            now = now.astimezone(dt.timezone.utc)
        return (now.date() - EPOCH).days
    if isinstance(now, dt.date):
        return (now - EPOCH).days
    if isinstance(now, np.datetime64):
        return int(now.astype("datetime64[D]").astype(np.int64))
    raise SchemaError(f"expected a date or datetime for now, got {now!r}", path="now")


def load_artifact(spec: M.ModelSpec, version_dir: Path):
    """The model object for a manifest's `model` section (the artifact in the version folder)."""
    if spec.format == "remote":
        from scoreline.engine.models.remote import load_remote

        return load_remote(spec, version_dir, load_artifact)
    path = Path(version_dir) / spec.artifact
    if not path.is_file():
        # The folder is not named: it may be a temporary one (a bulk worker's), and messages
        # reach clients.
        raise NotFoundError(f"artifact {spec.artifact!r} is not in the version's folder",
                            path="$.model.artifact")
    if spec.format == "lightgbm":
        from scoreline.engine.models.model import load_lightgbm

        return load_lightgbm(path, compile=spec.compile)
    from scoreline.engine.models.linear import load_linear

    return load_linear(path)


class Deployment:
    """A model version ready to score: see the module docstring.

    Parameters
    ----------
    manifest: the version's Manifest.
    version_dir: the folder holding its artifact.
    version: the version number reported in every answer.
    store: an opened entity store to share (the router shares one per store spec), None to open
        the manifest's store on first use, or False for none (inline inputs only).
    store_base: the folder a relative entity-store path starts at (the registry gives it:
        `Repository.root`); by default the registry root of `version_dir`.
    warm: score a generated sample through every path before returning (default True).
    """

    def __init__(self, manifest: M.Manifest, version_dir, *, version: int = 0, store=None,
                 store_base=None, warm: bool = True) -> None:
        started = time.perf_counter()
        self.manifest = manifest
        self.model_id = manifest.model_id
        self.version = int(version)
        self.version_dir = Path(version_dir)
        self.model = load_artifact(manifest.model, self.version_dir)
        for i, spec in enumerate(manifest.inputs):
            check_default(spec, f"$.inputs[{i}].default")
        self.plan: Plan = compile_plan(manifest, self.model.feature_names, self.model.categories)
        self.decider = Decider(manifest, self.model.num_class, self.model.objective, self.plan)
        self.key_name = manifest.entity.key
        self.key_type = _KEY_TYPES[manifest.entity.key_type]
        self.input_names = tuple(i.name for i in manifest.inputs)
        self.score_name = manifest.output.score
        self.decision_name = manifest.output.decision
        self.request_schema = RequestSchema(manifest)
        columns = {n: manifest.entity.columns.get(n, n) for n in self.input_names}
        # Where a relative entity-store path starts (the registry hands it out).
        self.store_base = Path(store_base) if store_base is not None else _registry_root(self.version_dir)
        self.entities = Entities(self.model_id, manifest.entity.store, self.store_base, store, self.plan,
                                 columns, self.key_name)
        self.stages: list[Stage] = [
            Fill(self.plan, self.entities, manifest.inputs, self.key_type),
            Transform(self.plan),
            Predict(self.model),
            Decide(self.decider),
        ]
        if manifest.model.format == "remote":   # a remote model: its own predict and decide

            self.stages = remote_stages(self.stages, self.model, self.decider)
        if manifest.explain is not None and manifest.model.format != "remote":
            # reason codes (engine/pipeline/explain.py); a remote model's contributions are not ours
            from scoreline.engine.pipeline.explain import ExplainStage

            self.stages.append(ExplainStage(manifest, self.model, self.plan, self.decider))
        self._contract()
        self.compile_seconds = time.perf_counter() - started
        self.warm_seconds = 0.0
        if warm:
            started = time.perf_counter()
            self.check_sample()
            self.warm_seconds = time.perf_counter() - started
        # Golden rows and provenance (engine/pipeline/golden.py): the artifact's sha256 (each
        # decision-log row carries it); a warm load re-scores the rows recorded at registration
        # and refuses the version on any difference.
        self.artifact_sha256, self.provenance = golden.check(self, verify=warm)

    def __repr__(self) -> str:
        return f"<Deployment {self.model_id} v{self.version}>"

    def _contract(self) -> None:
        extra = [f for stage in self.stages for f in stage.fields]
        self.contract = Contract(self.model_id, self.version, self.key_name, self.key_type,
                                 self.score_name, self.decision_name, self.decider, extra)
        self.output_schema = self.contract.schema
        self.fields = self.contract.names

    def add_stage(self, stage: Stage, *, before: type | None = None) -> None:
        """Add a stage at the end (or before the first stage of type `before`); its `fields`
        join the contract. Call before the deployment serves (stages are not locked)."""
        at = len(self.stages)
        if before is not None:
            at = next(i for i, s in enumerate(self.stages) if isinstance(s, before))
        self.stages.insert(at, stage)
        self._contract()

    @property
    def tiers(self) -> dict | None:
        """The kernel choice of a LightGBM model (``LightGBMModel.tiers``: the tier per batch size,
        ns per row of each candidate, excluded tiers and why); None for other models."""
        tiers = getattr(self.model, "tiers", None)
        return tiers if isinstance(tiers, dict) else None

    @property
    def store(self):
        """The entity store, once opened (None before, or without one)."""
        return self.entities.store

    def serves_from_memory(self) -> bool:
        """Whether key-only requests are answered from the store's converted in-memory view
        (integer keys): then a one-row call is tens of microseconds (opens the store). Never for
        a remote model: its answer comes over the network."""
        return self.manifest.model.format != "remote" and self.entities.ready() \
            and self.entities.view is not None and self.manifest.entity.key_type == "int"

    # --- scoring --------------------------------------------------------------------------------

    def run(self, source, *, now=None, tap=None, explain: int | None = None) -> Result:
        """Run the pipeline over `source`, an Arrow RecordBatch/Table or a RowBatch of raw
        values -> the Result, one row per input row, same order. `tap(state)`, when given, is
        called once the fill is done (shadows share this call's lookup: routing.py). `explain`:
        reasons per row (a manifest with an `explain` section; a RowBatch's own `explain` wins)."""
        if isinstance(source, pa.Table):
            source = source.combine_chunks().to_batches()[0] if source.num_rows else \
                pa.RecordBatch.from_pylist([], schema=source.schema)
        n = source.n if isinstance(source, RowBatch) else source.num_rows
        state = State(n, source, scoring_day(now))
        state.explain = explain
        stages = self.stages
        stages[0].run(state)
        if tap is not None:
            tap(state)
        if n == 0:
            return Result(self.contract, 0, state.keys, np.empty(0), index=np.empty(0, np.int64))
        for stage in stages[1:]:
            stage.run(state)
        return Result(self.contract, n, state.keys, state.score, index=state.index,
                      payload=state.payload, errors=state.errors, extras=state.extras)

    def run_one(self, rows: RowBatch, *, now=None, tap=None) -> Result:
        """The one-row run of the same stages (see the module docstring; `tap` as in `run`,
        not called when the fill raises the row's error)."""
        state = State(1, rows, _today() if now is None else scoring_day(now))
        try:
            stages = self.stages
            stages[0].run_one(state)
            if tap is not None:
                tap(state)
            for stage in stages[1:]:
                stage.run_one(state)
        except ScorelineError as exc:
            state.errors[0] = exc
            return Result(self.contract, 1, rows.keys, [math.nan], labels=[None],
                          payloads=[None], errors=state.errors, extras=state.extras)
        return Result(self.contract, 1, rows.keys, state.score, labels=state.labels,
                      payloads=state.payloads, errors=state.errors, extras=state.extras)

    def score_rows(self, rows: RowBatch, *, now=None, tap=None) -> Result:
        """Raw request rows (the JSON doors) -> the Result; one row takes `run_one`."""
        return self.run_one(rows, now=now, tap=tap) if rows.n == 1 else \
            self.run(rows, now=now, tap=tap)

    def score(self, batch: pa.RecordBatch, *, now=None) -> pa.RecordBatch:
        """Score an Arrow batch (see docs/contracts.md): the contract columns and `error`."""
        return self.run(batch, now=now).to_batch()

    def score_request(self, request: dict, *, now=None) -> dict:
        """One request (`{"<key>": ...}` and/or `{"inputs": {...}}`) -> the contract as a dict.

        Raises NotFoundError for an unknown entity, InputError for a bad value (with its
        `$.inputs.<name>` path), SchemaError for a malformed request.
        """
        if type(request) is not dict:
            raise SchemaError(f"expected a request object, got {type(request).__name__}", path="$")
        return self.run_one(self.request_schema.parse_request(request, strict=False),
                            now=now).one()

    # --- warm-up and validation ---------------------------------------------------------------

    def check_sample(self) -> None:
        """Score a generated sample through both runs (compiling every kernel on the way) and
        raise RegistrationError if a row fails or the two runs disagree."""
        for n in _WARM_SIZES:
            values = sample_inputs(self.manifest, n)
            result = self.run(pa.RecordBatch.from_pydict(values))
            if result.errors:
                first = result.errors[min(result.errors)]
                if first.kind != "remote":
                    raise RegistrationError(f"a generated sample row did not score: {first.message}",
                                            path="$.inputs")
            if result.errors or first_fallback(result) is not None:
                # a remote that cannot answer at start-up: the local stages are warm, its
                # fallback serves meanwhile; registration checks the remote for real
                continue
            if n == 1:
                one = self.run_one(RowBatch([None], values, [None])).one()[self.score_name]
                score = float(result.score[0])
                if not math.isclose(one, score, rel_tol=1e-12, abs_tol=1e-12):
                    raise RegistrationError("the one-row and batch paths disagree on a sample "
                                            f"({one} != {score})", path="$")


def open_store(spec, registry_root: Path):
    """Open the manifest's entity store; a relative file path starts at the registry root."""
    from scoreline.engine.data.stores import open_store as _open

    return _open(spec, registry_root)


def validate_version(version_dir, manifest: M.Manifest, *, golden_rows: list[dict] | None = None) -> dict[str, bytes]:
    """The registration check: load the artifact, compile the plan, score a generated sample
    through both paths. Raises RegistrationError with the reason (and the failing field's path).
    Returns golden.json and provenance.json for the Repository to store with the version: the
    outputs of `golden_rows` (inline inputs by name), else of generated edge rows (golden.py)."""
    try:
        dep = Deployment(manifest, version_dir, store=False)
        if manifest.model.format == "remote":
            check_remote(dep)
        check_store(manifest, _registry_root(version_dir))  # the store serving will open
        return golden.record(dep, golden_rows)
    except RegistrationError:
        raise
    except ScorelineError as exc:
        raise RegistrationError(exc.message, path=exc.path) from exc
    except Exception as exc:  # an artifact or kernel failure we did not foresee: refuse it
        raise RegistrationError(f"{type(exc).__name__}: {exc}") from exc
