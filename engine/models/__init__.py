"""Model loaders and the objects that predict: LightGBM text models and linear models."""

from scoreline.engine.models.linear import load_linear
from scoreline.engine.models.model import load_lightgbm

__all__ = ["load_lightgbm", "load_linear"]
