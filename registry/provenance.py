"""Provenance of a registered version: the sha256 of its artifact and manifest and the environment
that registered it, kept as `provenance.json` in the version folder.

The engine's registration check builds the record (it knows the environment: package versions, the
CPU its kernels were compiled for) and `Repository.add` stores it with the version; `registry show`,
`/v1/models` and the v2 model metadata read it back. This module imports nothing from the engine.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from scoreline.errors import SchemaError

__all__ = ["PROVENANCE_FILE", "file_sha256", "provenance_record", "read_provenance", "environment_changes"]

PROVENANCE_FILE = "provenance.json"
FORMAT = 1
# What a score depends on. lightgbm is recorded (it trained the artifact) but never runs when
# scoring, so a serving image without it is not a different environment.
SCORING_KEYS = ("python", "machine", "numpy", "numba", "llvmlite", "pyarrow", "scoreline", "cpu", "cpu-features")


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, as 64 hex digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def provenance_record(version_dir: str | os.PathLike, artifact: str, environment: dict[str, str],
                      **extra) -> bytes:
    """provenance.json for the version folder `version_dir` (its manifest.json and `artifact` as
    stored there), registered under `environment`; `extra` fields are added as they are."""
    folder = Path(version_dir)
    record = {
        "format": FORMAT,
        "artifact": artifact,
        "artifact-sha256": file_sha256(folder / artifact),
        "manifest-sha256": file_sha256(folder / "manifest.json") if (folder / "manifest.json").is_file() else None,
        **extra,
        "environment": dict(environment),
    }
    return json.dumps(record, indent=2).encode()


def read_provenance(version_dir: str | os.PathLike) -> dict | None:
    """The version's recorded provenance, or None for a version registered before it was kept."""
    path = Path(version_dir) / PROVENANCE_FILE
    try:
        record = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise SchemaError(f"{path} is not valid JSON: {exc}", path=str(path)) from None
    if not isinstance(record, dict) or not isinstance(record.get("environment"), dict):
        raise SchemaError(f"{path} is not a provenance record (no 'environment' object)", path=str(path))
    return record


def environment_changes(recorded: dict[str, str], current: dict[str, str]) -> list[str]:
    """What differs, in the keys a score depends on: ["numba 0.68.1 -> 0.69.0", ...]."""
    changes = []
    for key in SCORING_KEYS:
        before, now = recorded.get(key), current.get(key)
        if before != now:
            if key == "cpu-features":
                old, new = set((before or "").split(",")), set((now or "").split(","))
                gained, lost = sorted(new - old - {""}), sorted(old - new - {""})
                changes.append("cpu features " + "; ".join(filter(None, [
                    f"gained {', '.join(gained)}" if gained else "", f"lost {', '.join(lost)}" if lost else ""])))
            else:
                changes.append(f"{key} {before or 'absent'} -> {now or 'absent'}")
    return changes
