"""Data in: input adapters, value checks against the manifest, entity stores and their views."""

from scoreline.engine.data.entities import open_store
from scoreline.engine.data.inputs import to_matrix

__all__ = ["open_store", "to_matrix"]
