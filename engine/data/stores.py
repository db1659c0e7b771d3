"""open_store(spec, base_dir): the entity store a manifest's ``entity.store`` describes, of any kind.

File and SQL table stores come from engine/data/entities.py; Redis, cached and joined stores from
engine/data/storecache.py (which opens the stores inside them through this same function).
"""

from __future__ import annotations

import os

from scoreline.registry.manifest import CachedStore, JoinStore, RedisStore

from scoreline.engine.data.entities import EntityStore, open_basic_store
from scoreline.engine.data.storecache import open_composite

__all__ = ["open_store"]


def open_store(spec, base_dir: str | os.PathLike, *, reload_interval: float = 2.0) -> EntityStore:
    """The store ``spec`` describes; relative paths resolve against base_dir.

    ``reload_interval``: for file stores, the least number of seconds between checks for changed
    files (checks run on lookup, on a background thread).
    """
    if isinstance(spec, (RedisStore, CachedStore, JoinStore)):
        return open_composite(spec, base_dir, open_store)
    return open_basic_store(spec, base_dir, reload_interval=reload_interval)
