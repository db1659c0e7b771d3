"""Golden rows and provenance: a version scores, every time it is loaded, exactly as it did when it
was registered, or it is refused.

At registration (`validate_version`) `record` scores a small set of input rows (the user's, or
`edge_rows` generated from the manifest) in one batch and keeps each row's outputs to the last bit
(floats as float64 hex) in `golden.json`, with `provenance.json` (registry/provenance.py: artifact
and manifest sha256, the environment). A Deployment built warm (server start, promote, reload, a
bulk job, each Ray or Spark worker) calls `check` once: one batch call over those rows, and
RegistrationError naming the golden row, the field and both values on any difference. Under another
environment whose golden rows still agree, a note is logged instead.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import importlib.metadata
import json
import logging
import platform
from pathlib import Path
from typing import cast

import pyarrow as pa

from scoreline.errors import RegistrationError, SchemaError
from scoreline.registry.manifest import encode_manifest
from scoreline.registry.provenance import (
    PROVENANCE_FILE, environment_changes, file_sha256, provenance_record, read_provenance,
)

from scoreline.engine.data.samples import edge_rows

__all__ = ["GOLDEN_FILE", "environment_fingerprint", "record", "check", "read_rows"]

GOLDEN_FILE = "golden.json"
FORMAT = 1
# Rows a user may give: the whole set is scored in one batch at every load.
MAX_ROWS = 1000
_PACKAGES = ("numpy", "numba", "llvmlite", "pyarrow", "lightgbm", "scoreline")
log = logging.getLogger("scoreline.golden")


@functools.cache
def environment_fingerprint() -> dict[str, str]:
    """Python, the scoring packages' versions (lightgbm when installed) and the CPU name and
    features the kernels are compiled for (Numba's target, also the compiled tier's host CPU)."""
    from llvmlite import binding as llvm
    from numba.core import config

    env = {"python": platform.python_version(), "machine": platform.machine()}
    for name in _PACKAGES:
        try:
            env[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    # numba.core.config sets these at import (from NUMBA_CPU_NAME/NUMBA_CPU_FEATURES): invisible to mypy
    env["cpu"] = config.CPU_NAME or llvm.get_host_cpu_name()  # type: ignore[attr-defined]
    features = config.CPU_FEATURES or llvm.get_host_cpu_features().flatten()  # type: ignore[attr-defined]
    env["cpu-features"] = ",".join(sorted(f[1:] for f in features.split(",") if f.startswith("+")))
    return env


def record(dep, rows: list[dict] | None = None, *, today: dt.date | None = None) -> dict[str, bytes]:
    """golden.json and provenance.json for the version `dep` was built from (its folder must hold
    the manifest and artifact as they will be stored): `rows` (inline inputs by name, each must
    score) or else generated edge rows (those the version refuses are left out), scored on `today`
    (default: today, UTC)."""
    if dep.manifest.model.format == "remote":
        return {}  # the bytes that decide live on the remote: nothing here to pin (see check)
    given = rows is not None
    if given:
        if not rows:
            raise SchemaError("no golden rows given", path="golden")
        if len(rows) > MAX_ROWS:
            raise SchemaError(f"{len(rows)} golden rows given; at most {MAX_ROWS} (all are scored at "
                              "every load)", path="golden")
        names = set(dep.input_names)
        for i, row in enumerate(rows):
            unknown = sorted(set(row) - names) if isinstance(row, dict) else None
            if unknown is None or unknown:
                raise SchemaError(f"golden row {i}: expected an object of the inputs {sorted(names)}, got "
                                  f"{'the field ' + repr(unknown[0]) if unknown else repr(row)}",
                                  path=f"golden row {i}")
    else:
        rows = edge_rows(dep.manifest)
    # Through JSON first, so that what is scored now is exactly what every load will read back.
    rows = json.loads(json.dumps([_plain(row) for row in rows]))
    day = today or dt.datetime.now(dt.timezone.utc).date()
    out = _score(dep, rows, day)
    kept = []
    for i, row in enumerate(rows):
        error = out.column("error")[i].as_py()
        if error is None:
            kept.append({"inputs": row, "outputs": _outputs(dep, out, i)})
        elif given:
            raise RegistrationError(f"golden row {i} does not score: {error}", path=f"golden row {i}")
    golden = {"format": FORMAT, "scoring-date": day.isoformat(), "source": "given" if given else "generated",
              "rows": kept}
    golden_bytes = json.dumps(golden, indent=1).encode()
    extra: dict = {"golden-rows": len(kept)}
    if dep.tiers is not None:  # the kernel choice made at registration, on this host (registry show)
        extra["tiers"] = dep.tiers
    provenance = provenance_record(dep.version_dir, dep.manifest.model.artifact, environment_fingerprint(),
                                   **extra)
    return {GOLDEN_FILE: golden_bytes, PROVENANCE_FILE: provenance}


def check(dep, *, verify: bool = True) -> tuple[str, dict | None]:
    """(the artifact's sha256 now, the recorded provenance or None). With `verify`, re-score the
    version's golden rows and raise RegistrationError on any difference (or an artifact whose bytes
    changed since registration); log a note when the environment differs but every row agrees."""
    folder = dep.version_dir
    if dep.manifest.model.format == "remote":
        # No artifact: the manifest (address, tensors, fallback) is the whole of what is ours, and
        # the remote's answers are not ours to pin, so no golden rows are kept or re-scored.
        return hashlib.sha256(encode_manifest(dep.manifest)).hexdigest(), None
    sha256 = file_sha256(folder / dep.manifest.model.artifact)
    provenance = read_provenance(folder)
    if not verify:
        return sha256, provenance
    where = f"model {dep.model_id!r} version {dep.version}"
    golden = _read_golden(folder / GOLDEN_FILE)
    changed = provenance is not None and provenance.get("artifact-sha256") not in (None, sha256)
    also = (f" (the artifact's bytes changed too: sha256 {cast(dict, provenance)['artifact-sha256'][:16]}... at "
            f"registration, {sha256[:16]}... now)") if changed else ""
    if golden is not None:
        _compare(dep, golden, where, also)
    elif provenance is not None and provenance.get("golden-rows"):
        raise RegistrationError(f"{where}: its {GOLDEN_FILE} is missing (recorded at registration with "
                                f"{provenance['golden-rows']} rows)", path=GOLDEN_FILE)
    if changed:
        raise RegistrationError(f"{where}: the artifact changed since registration{also}", path="artifact")
    if provenance is not None:
        changes = environment_changes(provenance["environment"], environment_fingerprint())
        if changes:
            log.warning("note: %s was registered under another environment (%s); its %d golden rows "
                        "score exactly as registered", where, "; ".join(changes),
                        len(golden["rows"]) if golden else 0)
    return sha256, provenance


def read_rows(path: str | Path) -> list[dict]:
    """Golden rows from a file: JSON (a list of objects, or {"rows": [...]}) or Parquet."""
    path = Path(path)
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise SchemaError(f"golden rows file {str(path)!r} does not exist", path="--golden") from None
    except (ValueError, pa.ArrowInvalid) as exc:
        raise SchemaError(f"golden rows file {str(path)!r} is not valid JSON or Parquet: {exc}",
                          path="--golden") from None
    rows = data.get("rows") if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise SchemaError(f"golden rows file {str(path)!r}: expected a list of objects or "
                          '{"rows": [...]}', path="--golden")
    return rows


def _read_golden(path: Path) -> dict | None:
    try:
        golden = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None  # registered before golden rows were kept
    except ValueError as exc:
        raise RegistrationError(f"{path.name} is not valid JSON: {exc}", path=path.name) from None
    if not isinstance(golden, dict) or golden.get("format") != FORMAT or not isinstance(golden.get("rows"), list):
        raise RegistrationError(f"{path.name} is not a golden rows file of format {FORMAT}", path=path.name)
    return golden


def _compare(dep, golden: dict, where: str, also: str) -> None:
    rows = golden["rows"]
    out = _score(dep, [row["inputs"] for row in rows], dt.date.fromisoformat(golden["scoring-date"]))
    for i, row in enumerate(rows):
        error = out.column("error")[i].as_py()
        now = _outputs(dep, out, i) if error is None else {}
        for field, before in row["outputs"].items():
            after = now.get(field, f"refused ({error})" if error else "absent")
            if after != before:
                raise RegistrationError(
                    f"{where} no longer scores as registered: golden row {i} ({_describe(row['inputs'])}): "
                    f"{field} was {_show(before)} at registration, now {_show(after)}{also}",
                    path=f"golden row {i}")


def _score(dep, rows: list[dict], day: dt.date) -> pa.RecordBatch:
    """One batch call over inline rows (no entity lookup: every input column is present)."""
    columns = {name: [row.get(name) for row in rows] for name in dep.input_names}
    return dep.score(pa.RecordBatch.from_pydict(columns), now=day)


def _outputs(dep, out: pa.RecordBatch, i: int) -> dict:
    """Row i's contract outputs after the key, model id and version: floats as float64 hex."""
    values = {}
    for name in out.schema.names[3:]:
        if name != "error":
            value = out.column(name)[i].as_py()
            values[name] = value.hex() if isinstance(value, float) else value
    return values


def _plain(row: dict) -> dict:
    """Dates and times (from a Parquet file) as ISO text, as the JSON file keeps them."""
    return {k: v.isoformat() if isinstance(v, (dt.date, dt.datetime)) else v for k, v in row.items()}


def _show(value) -> str:
    if isinstance(value, str) and value.startswith(("0x", "-0x")):
        return f"{float.fromhex(value)!r} ({value})"
    return repr(value)


def _describe(inputs: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in inputs.items())
