"""Durable file writes for the registry: a file's bytes and a folder's entries reach the disk before a rename publishes them."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["fsync_path", "write_synced"]


def write_synced(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and fsync it (the caller renames it into place)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def fsync_path(path: Path) -> None:
    """fsync a folder, so the entries just renamed into it survive a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
