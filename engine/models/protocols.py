"""The declared model interfaces: what bulk scoring, serving and the GPU backend may rely on in a model."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from scoreline.engine.models.packing import PackedEnsemble

__all__ = ["Model", "TreeModel"]


@runtime_checkable
class Model(Protocol):
    """A loaded model (LightGBMModel, LinearModel, GpuLightGBM): named input columns in, scores out."""

    kind: str
    feature_names: tuple[str, ...]
    num_features: int
    num_class: int

    def predict(self, data, raw_score: bool = False) -> np.ndarray:
        """Score a matrix, Arrow table/batch or DataFrame."""
        ...

    def predict_matrix(self, X: np.ndarray, raw_score: bool = False, num_threads: int | None = None,
                       out: np.ndarray | None = None) -> np.ndarray:
        """Score a float32/float64 (rows, num_features) matrix, the hot path."""
        ...


@runtime_checkable
class TreeModel(Model, Protocol):
    """A tree ensemble with packed node arrays (what the CUDA kernels upload): ``kind == "lightgbm"``."""

    @property
    def packed(self) -> PackedEnsemble:
        """The flat arrays of engine/models/packing.py."""
        ...
