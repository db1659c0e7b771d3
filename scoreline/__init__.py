"""Scoreline: metadata-driven, Numba-accelerated scoring of LightGBM and linear models.

The public API is imported lazily so `import scoreline` (and the CLI's start) stays fast:

    scoreline.load_lightgbm(path_or_text)    -> model with a Booster-compatible predict()
    scoreline.load_linear(path_or_estimator) -> model with the same predict()
    scoreline.Engine(registry_root)          -> score(model_id, request), score_batch(...)
    scoreline.Repository(root)               -> the model registry
    scoreline.score_file(...), scoreline.score_batches(...) -> bulk scoring
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "load_lightgbm": "scoreline.engine.models.model",
    "load_linear": "scoreline.engine.models.linear",
    "Engine": "scoreline.engine.pipeline.router",
    "Deployment": "scoreline.engine.pipeline.deployment",
    "Repository": "scoreline.registry.repository",
    "DecisionLog": "scoreline.registry.decision_log",
    "score_file": "scoreline.engine.bulk.jobs",
    "score_batches": "scoreline.engine.bulk.jobs",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'scoreline' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
