"""What scores a batch in a bulk job: a bare model (``ModelScorer``) or a deployment
(``DeploymentScorer``), both plain picklable objects, which is what travels to Ray and Spark
workers; ``as_scorer`` picks one for a model, a model file, a Deployment or a registered model id.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from pathlib import Path

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from scoreline.engine.bulk import sources as _sources
from scoreline.engine.models.files import load_model_file
from scoreline.engine.models.protocols import Model
from scoreline.errors import InputError, NotFoundError
from scoreline.registry.manifest import decode_manifest, encode_manifest

__all__ = ["as_scorer", "ModelScorer", "DeploymentScorer"]


# --- what scores a batch: a bare model or a deployment -----------------------------------------
# Both are plain picklable objects: they are what travels to Ray and Spark workers.


def as_scorer(model, *, raw_score: bool = False, registry=None, version: int | str | None = None,
              explain: int | None = None):
    """The scorer for ``model``: a ``ModelScorer`` or ``DeploymentScorer`` (returned as is), a
    Deployment, a loaded model, a model file, or a model id (``id`` or ``id@version``) in
    ``registry``. ``explain``: reason columns per row (a deployment whose manifest has an
    ``explain`` section; see DeploymentScorer)."""
    from scoreline.engine.pipeline.deployment import Deployment

    if isinstance(model, (ModelScorer, DeploymentScorer)):
        return model
    if explain and (isinstance(model, Model) or (isinstance(model, (str, os.PathLike)) and os.path.isfile(model))):
        raise InputError("--explain needs a registered model whose manifest has an explain section, not a model "
                         "file", path="--explain")
    if isinstance(model, Model):
        return ModelScorer(model, raw_score=raw_score)
    if isinstance(model, Deployment):
        return DeploymentScorer(_no_raw(model, raw_score), explain=explain)
    if isinstance(model, (str, os.PathLike)):
        if os.path.isfile(model):
            return ModelScorer(load_model_file(model), raw_score=raw_score)
        if registry is None:
            raise NotFoundError(
                f"{os.fspath(model)!r} is not a model file; to score a registered model, give the registry",
                path="model",
            )
        model_id, _, at = os.fspath(model).partition("@")
        return DeploymentScorer(_no_raw(_deployment(registry, model_id, version if version is not None else (at or None)),
                                        raw_score), explain=explain)
    raise InputError(
        f"expected a deployment, a model, a model file or a model id, got {type(model).__name__}", path="model"
    )


def _deployment(registry, model_id: str, version: int | str | None):
    """The version's Deployment, straight from the registry (no router: bulk jobs do not log)."""
    from scoreline.engine.pipeline.deployment import Deployment
    from scoreline.registry.repository import Repository

    repo = Repository(registry)
    number = repo.resolve(model_id, version)
    return Deployment(repo.load_manifest(model_id, number), repo.version_dir(model_id, number), version=number,
                      store_base=repo.root)


def _no_raw(deployment, raw_score: bool):
    if raw_score:
        raise InputError("raw scores are for bare model files: a deployment answers with its contract", path="raw_score")
    return deployment


_NUMERIC_KINDS = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean, pa.types.is_decimal, pa.types.is_null)


def _is_numeric(kind: pa.DataType) -> bool:
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return any(test(kind) for test in _NUMERIC_KINDS)


def _is_text(kind: pa.DataType) -> bool:
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)


class ModelScorer:
    """A bare model: feature columns by name in, ``score`` (or ``score_<class>`` per class) out.

    Without a pipeline there are no per-row checks: a row can only be rejected when a value cannot
    be converted to a number, which happens for CSV input (Parquet and Arrow columns are typed,
    and a non-numeric one stops the job before it starts). Nulls are missing values (NaN), as in
    LightGBM; an unseen category is missing too.
    """

    def __init__(self, model, *, raw_score: bool = False) -> None:
        self.model = model
        self.raw_score = raw_score
        k = model.num_class
        names = ["score"] if k == 1 else [f"score_{i}" for i in range(k)]
        self.output_schema = pa.schema([pa.field(name, pa.float64()) for name in names])
        self._numeric = {
            name: pa.float64() for j, name in enumerate(model.feature_names) if j not in model.categories
        }

    def columns_to_read(self) -> list[str]:
        return list(self.model.feature_names)

    def csv_types(self) -> dict[str, pa.DataType]:
        # Numeric features are read as text and parsed here, so one bad value rejects its row
        # instead of failing Arrow's whole CSV block; string categories stay strings ("01").
        types = {name: pa.string() for name in self._numeric}
        for j, cats in self.model.categories.items():
            if cats and all(isinstance(c, str) for c in cats):
                types[self.model.feature_names[j]] = pa.string()
        return types

    def problems(self, schema: pa.Schema, text: tuple[str, ...]) -> list[str]:
        found = []
        for j, name in enumerate(self.model.feature_names):
            if name not in schema.names:
                found.append(f"column {name!r} is missing")
                continue
            kind = schema.field(name).type
            categorical = j in self.model.categories
            if _is_numeric(kind) or (categorical and _is_text(kind)) or (name in text and _is_text(kind)):
                continue
            found.append(f"column {name!r} is {kind}, expected numeric")
        return found

    def parse_text(self, batch: pa.RecordBatch, text: tuple[str, ...]):
        return _parse_numbers(batch, {n: t for n, t in self._numeric.items() if n in text})

    def score(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        from scoreline.engine.data.inputs import to_matrix

        matrix = to_matrix(batch, self.model.feature_names, self.model.categories)
        # One thread per batch: bulk jobs get their parallelism from scoring batches at once.
        y = self.model.predict_matrix(matrix, raw_score=self.raw_score, num_threads=1)
        columns = [y] if y.ndim == 1 else [y[:, i] for i in range(y.shape[1])]
        arrays = [pa.array(c, pa.float64()) for c in columns] + [pa.nulls(batch.num_rows, pa.string())]
        return pa.RecordBatch.from_arrays(arrays, schema=self.output_schema.append(pa.field("error", pa.string())))


class DeploymentScorer:
    """A deployment (transforms + model + decision): its contract columns out, per-row errors as the
    pipeline reports them (unknown entity, a bad value, a non-finite score). With ``explain`` k,
    the contract's nested ``reasons`` column becomes flat columns ``reason-<i>-code``,
    ``reason-<i>-input`` and ``reason-<i>-contribution`` for i = 1..k (rule reasons first)."""

    def __init__(self, deployment, explain: int | None = None) -> None:
        self.deployment = deployment
        self.tracking = None  # a RunTracking (engine/monitor/runs.py) fed by every batch, if set
        self.key_name = deployment.key_name
        self.explain = explain or None
        fields = [f for f in deployment.output_schema if f.name != "error"]
        if self.explain:
            if not 0 < self.explain <= 20:
                raise InputError(f"--explain must be from 1 to 20, got {self.explain}", path="--explain")
            if deployment.manifest.explain is None:
                raise InputError(f"--explain: model {deployment.model_id!r} gives no reasons: its manifest has no "
                                 "explain section", path="--explain")
            fields = [f for f in fields if f.name != "reasons"] + _reason_fields(self.explain)
        self.output_schema = pa.schema(fields)
        manifest = deployment.manifest
        self._numeric = {
            i.name: (pa.int64() if i.type == "int" else pa.float64())
            for i in manifest.inputs
            if i.type in ("int", "float")
        }
        self._strings = [i.name for i in manifest.inputs if i.type == "string"]
        if manifest.entity.key_type == "string":
            self._strings.append(deployment.key_name)

    def columns_to_read(self) -> list[str]:
        return [self.deployment.key_name, *self.deployment.input_names]

    # -- pickling: what travels to a worker is the manifest and the artifact's bytes; the worker
    # rebuilds (compiles and warms) the deployment once per process and reuses it.
    def __getstate__(self) -> dict:
        dep = self.deployment
        manifest = dep.manifest
        store = manifest.entity.store
        if store is not None and hasattr(store, "path") and not os.path.isabs(store.path):
            # Relative store paths start at the registry root, which the worker does not have.
            absolute = str((dep.store_base / store.path).resolve())
            entity = msgspec.structs.replace(manifest.entity, store=msgspec.structs.replace(store, path=absolute))
            manifest = msgspec.structs.replace(manifest, entity=entity)
        from scoreline.engine.pipeline.golden import GOLDEN_FILE
        from scoreline.registry.provenance import PROVENANCE_FILE

        remote = manifest.model.remote
        if remote is not None and remote.fallback.__struct_config__.tag == "version":
            raise InputError(f"model {dep.model_id!r} is remote with a fallback version, whose files "
                             "the workers do not have: score it in one process, or declare a decision "
                             "or error fallback", path="$.model.remote.fallback")
        # a remote model has no artifact: the manifest is the whole of it
        artifact = b"" if remote is not None else (dep.version_dir / manifest.model.artifact).read_bytes()
        body = encode_manifest(manifest)
        # the golden rows and provenance travel too: each worker re-checks them (pipeline/golden.py)
        checks = {name: (dep.version_dir / name).read_bytes() for name in (GOLDEN_FILE, PROVENANCE_FILE)
                  if (dep.version_dir / name).is_file()}
        token = hashlib.sha256(body + artifact + str(dep.version).encode() + b"".join(checks.values())).hexdigest()[:24]
        return {"token": token, "manifest": body, "artifact": artifact, "version": dep.version, "checks": checks,
                "explain": self.explain}

    def __setstate__(self, state: dict) -> None:
        with _REBUILT_LOCK:
            deployment = _REBUILT.get(state["token"])
            if deployment is None:
                deployment = _rebuild(state)
                _REBUILT[state["token"]] = deployment
        self.__init__(deployment, state.get("explain"))

    def csv_types(self) -> dict[str, pa.DataType]:
        # Text for numbers (parsed per row, see ModelScorer) and for strings such as "00123".
        return {name: pa.string() for name in [*self._numeric, *self._strings]}

    def problems(self, schema: pa.Schema, text: tuple[str, ...]) -> list[str]:
        # The deployment is the judge of what a batch needs: ask it with no rows.
        fields = [
            pa.field(f.name, self._numeric[f.name]) if f.name in text and f.name in self._numeric else f for f in schema
        ]
        batch = pa.RecordBatch.from_pylist([], schema=pa.schema(fields))
        try:
            self.deployment.score(batch)
        except InputError as exc:
            return [exc.message]
        return []

    def parse_text(self, batch: pa.RecordBatch, text: tuple[str, ...]):
        return _parse_numbers(batch, {n: t for n, t in self._numeric.items() if n in text})

    def score(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        if self.tracking is None and not self.explain:
            return self.deployment.score(batch)
        states: list = []
        out = self.deployment.run(batch, tap=None if self.tracking is None else states.append,
                                  explain=self.explain or None).to_batch()
        if self.tracking is not None:
            self.tracking.observe(states[0])
        if not self.explain:
            return out
        reasons = out.column("reasons").to_pylist()
        columns = [out.column(f.name) for f in self.output_schema if not f.name.startswith("reason-")]
        for i in range(self.explain):
            picked = [row[i] if row is not None and i < len(row) else None for row in reasons]
            columns.append(pa.array([r and r["code"] for r in picked], pa.string()))
            columns.append(pa.array([r and r["input"] for r in picked], pa.string()))
            columns.append(pa.array([r and r["contribution"] for r in picked], pa.float64()))
        columns.append(out.column("error"))
        return pa.RecordBatch.from_arrays(columns, schema=self.output_schema.append(pa.field("error", pa.string())))

    def track(self):
        """Track this scorer's data quality and drift from now on (the version's reference
        profile, or one drawn from its store); returns the RunTracking, or None without a
        profile. Local jobs only: a worker's unpickled scorer is not tracked."""
        from scoreline.engine.monitor.runs import RunTracking

        try:
            self.tracking = RunTracking(self.deployment)
        except Exception:  # no profile and no store to draw one from: scored, not tracked
            self.tracking = None
        return self.tracking


def _reason_fields(k: int) -> list[pa.Field]:
    return [pa.field(f"reason-{i}-{part}", kind) for i in range(1, k + 1)
            for part, kind in (("code", pa.string()), ("input", pa.string()), ("contribution", pa.float64()))]


# Deployments rebuilt from pickles in this process, by content: a Ray or Spark worker unpickles the
# scorer for every task, and compiling and warming a deployment each time would dominate.
_REBUILT: dict[str, object] = {}
_REBUILT_LOCK = threading.Lock()


def _rebuild(state: dict):
    from scoreline.engine.pipeline.deployment import Deployment

    manifest = decode_manifest(state["manifest"])
    folder = Path(tempfile.gettempdir()) / "scoreline-deployments" / state["token"]
    folder.mkdir(parents=True, exist_ok=True)
    if manifest.model.format == "remote":
        return Deployment(manifest, folder, version=state["version"])
    artifact = folder / Path(manifest.model.artifact).name
    for name, data in {artifact.name: state["artifact"], **state.get("checks", {})}.items():
        if not (folder / name).exists():
            partial = folder / f".{name}.{os.getpid()}"
            partial.write_bytes(data)
            os.replace(partial, folder / name)  # several worker processes may race to write it
    manifest = msgspec.structs.replace(manifest, model=msgspec.structs.replace(manifest.model, artifact=artifact.name))
    return Deployment(manifest, folder, version=state["version"])


def _parse_numbers(batch: pa.RecordBatch, targets: dict[str, pa.DataType]):
    """Text columns -> numbers; ``(batch, per-row errors or None)``: a value that is not a number
    becomes null and its row gets a reason naming the column and the value."""
    errors = None
    for name, target in targets.items():
        index = batch.schema.get_field_index(name)
        if index < 0 or not _is_text(batch.schema.field(index).type):
            continue
        text = pc.utf8_trim_whitespace(batch.column(index))
        try:
            parsed, bad = pc.cast(text, target), None
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            parsed, bad = _parse_slowly(text, target, name)
        batch = batch.set_column(index, pa.field(name, target), parsed)
        if bad is not None:
            errors = bad if errors is None else pc.coalesce(errors, bad)
    return batch, errors


def _parse_slowly(text: pa.Array, target: pa.DataType, name: str):
    # Only a batch holding a bad value comes here (Arrow's cast refuses the whole column).
    convert, what = (int, "an integer") if pa.types.is_integer(target) else (float, "a number")
    values: list = []
    reasons: list[str | None] = []
    for value in text.to_pylist():
        try:
            # Readers that know one null marker only (Spark's CSV) leave the others to us.
            values.append(None if value is None or value in _sources.CSV_NULL_VALUES else convert(value))
            reasons.append(None)
        except ValueError:
            values.append(None)
            reasons.append(f"column {name!r}: {value!r} is not {what}")
    return pa.array(values, target), pa.array(reasons, pa.string())
