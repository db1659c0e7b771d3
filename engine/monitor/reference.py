"""Reference profiles made at registration: `profiling_validator()` is a Repository validator that
checks a new version as `validate_version` does and then writes its reference profile
(`profile.json`) into the version folder before the version becomes visible, from sample rows
given or drawn from the entity store."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scoreline.errors import SchemaError

from .profile import Profile, build_profile, save_profile, tracked_columns

__all__ = ["reference_profile", "profiling_validator"]


def profiling_validator(rows=None, *, sample: int = 5000, golden_rows: list[dict] | None = None):
    """A `validate(version_dir, manifest)` for `Repository.add`: the registration check (which
    records the golden rows, `golden_rows` if given, and provenance), then the reference profile
    from `rows` (an Arrow table of raw inputs or keys; a Parquet path) or from `sample` entities of
    the store. Returns the check's files for the Repository to store."""
    def validate(version_dir, manifest) -> dict[str, bytes]:
        from scoreline.engine.pipeline.deployment import Deployment, validate_version

        files = validate_version(version_dir, manifest, golden_rows=golden_rows)
        data = rows
        if isinstance(data, (str, Path)):
            import pyarrow.parquet as pq

            data = pq.read_table(data)
        deployment = Deployment(manifest, version_dir, warm=False)
        try:
            profile = reference_profile(deployment, data, sample=sample)
        except SchemaError:
            if data is not None:
                raise  # the sample given is unusable: say so
            return files  # no rows given and a store that cannot be sampled: registered without one
        save_profile(profile, version_dir)
        return files

    return validate


def reference_profile(deployment, rows=None, *, sample: int = 5000, seed: int = 0) -> Profile:
    """The reference profile of `deployment` from `rows` (an Arrow table or batch of raw inputs,
    or of keys), or else from `sample` entities drawn from its entity store; scored through the
    deployment's own pipeline, so the profile holds exactly what serving will see."""
    import pyarrow as pa

    source = "sample"
    if rows is None:
        keys = _draw_keys(deployment, sample, seed)
        rows = pa.record_batch({deployment.key_name: keys})
        source = "store"
    tracked = tracked_columns(deployment.plan, deployment.manifest)
    slots = [t[2] for t in tracked]
    captured = {}

    class _Capture:  # the last stage, for this one run
        fields = ()

        def run(self, state) -> None:
            captured["values"] = state.work[:, slots].copy()
            score = np.array(state.score, dtype=np.float64)
            if state.errors:
                score[list(state.errors)] = np.nan  # a row that failed has no score to compare
            captured["score"] = score

    stages = deployment.stages
    try:
        deployment.stages = [*stages, _Capture()]
        deployment.run(rows)
    finally:
        deployment.stages = stages
    return build_profile(deployment.model_id, deployment.version, tracked, captured["values"],
                         captured["score"], source)


def _draw_keys(deployment, n: int, seed: int):
    entities = deployment.entities
    snapshot = entities.store.snapshot() if entities.ready() else None
    if snapshot is None:
        raise SchemaError(f"model {deployment.model_id!r}: its entity store cannot be sampled "
                          "here; give sample rows for the reference profile", path="sample")
    keys = snapshot.table.column(entities.store.key_column).combine_chunks()
    rng = np.random.default_rng(seed)
    take: np.ndarray | list = rng.choice(len(keys), size=min(n, len(keys)), replace=False) if len(keys) else []
    return keys.take(np.sort(np.asarray(take, dtype=np.int64)))
