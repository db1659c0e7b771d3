"""The on-disk model repository (manifests, versions, aliases, history) and the decision log.

Imports nothing from the engine: validation on registration is a callable the caller injects.
Names are imported lazily so that `scoreline --help` and the repository never pay for pyarrow.
"""

from __future__ import annotations

import importlib

__all__ = [
    "Manifest",
    "decode_manifest",
    "encode_manifest",
    "Repository",
    "DEFAULT_ALIAS",
    "check_model_id",
    "DecisionLog",
    "DECISION_SCHEMA",
]

_SOURCES = {
    "Manifest": "manifest",
    "decode_manifest": "manifest",
    "encode_manifest": "manifest",
    "Repository": "repository",
    "DEFAULT_ALIAS": "repository",
    "check_model_id": "repository",
    "DecisionLog": "decision_log",
    "DECISION_SCHEMA": "decision_log",
}


def __getattr__(name: str):
    if name in _SOURCES:
        value = getattr(importlib.import_module(f"{__name__}.{_SOURCES[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
