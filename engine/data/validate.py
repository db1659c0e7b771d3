"""check_store(manifest, registry_root): open a version's entity store as serving would, and check
the key column and every store column the version's inputs read; raise SchemaError (with the
manifest path at fault) when it cannot serve that version, before the version becomes visible."""

from __future__ import annotations

import os
from pathlib import Path

from scoreline.errors import ScorelineError, SchemaError

from .stores import open_store

__all__ = ["check_store"]


def check_store(manifest, registry_root: str | os.PathLike) -> None:
    """Open `manifest.entity.store` (relative paths start at `registry_root`) and close it again.

    Raises SchemaError when the store cannot be opened (a missing file, a file that is not a
    store, an unreachable database), has no key column, or lacks a column an input reads (inputs
    read the store column of their own name unless `entity.columns` maps them elsewhere). A
    manifest without a store (inline inputs only) passes.
    """
    spec = manifest.entity.store
    if spec is None:
        return
    try:
        store = open_store(spec, Path(registry_root))
    except ScorelineError as exc:
        raise SchemaError(f"cannot open the entity store: {exc.message}",
                          path=exc.path or "$.entity.store") from exc
    except Exception as exc:  # the reader's own errors (Arrow, sqlite3, the database driver)
        where = getattr(spec, "path", None) or getattr(spec, "table", None) or type(spec).__name__
        raise SchemaError(f"cannot open the entity store {where!r}: {type(exc).__name__}: "
                          f"{' '.join(str(exc).split())}", path=_spec_path(spec)) from exc
    try:
        have = set(store.schema.names)
        if store.key_column not in have:  # stores check this on open; a cheap second look
            raise SchemaError(f"the entity store has no key column {store.key_column!r} "
                              f"(columns: {', '.join(store.schema.names)})",
                              path="$.entity.store.key-column")
        for item in manifest.inputs:
            column = manifest.entity.columns.get(item.name, item.name)
            if column not in have:
                raise SchemaError(
                    f"input {item.name!r} reads column {column!r}, which the entity store lacks "
                    f"(columns: {', '.join(sorted(have))}); map it in entity.columns",
                    path=f"$.entity.columns.{item.name}" if item.name in manifest.entity.columns
                    else f"$.inputs.{item.name}")
    finally:
        close = getattr(store, "close", None)
        if close is not None:
            close()


def _spec_path(spec) -> str:
    if hasattr(spec, "path"):
        return "$.entity.store.path"
    if hasattr(spec, "uri"):
        return "$.entity.store.uri"
    return "$.entity.store"
