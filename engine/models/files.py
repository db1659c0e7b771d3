"""load_model_file(path): a model file of any supported kind, told apart by its first bytes."""

from __future__ import annotations

import os

from scoreline.engine.models.linear import load_linear
from scoreline.engine.models.model import load_lightgbm
from scoreline.engine.models.protocols import Model

__all__ = ["load_model_file"]


def load_model_file(path: str | os.PathLike) -> Model:
    """A LightGBM text model (it starts with ``tree``) or else a linear model file."""
    with open(path, "rb") as f:
        head = f.read(64)
    if head.lstrip().startswith(b"tree"):
        return load_lightgbm(os.fspath(path))
    return load_linear(os.fspath(path))
