"""Model loaders and the objects that predict: LightGBM text models and linear models."""

from scoreline.engine.models.files import load_model_file
from scoreline.engine.models.linear import load_linear
from scoreline.engine.models.model import load_lightgbm
from scoreline.engine.models.protocols import Model, TreeModel

__all__ = ["Model", "TreeModel", "load_lightgbm", "load_linear", "load_model_file"]
