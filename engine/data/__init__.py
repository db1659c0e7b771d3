"""Data in: input adapters, value checks against the manifest, request schemas, entity stores and
their views."""

from scoreline.engine.data.entities import open_store
from scoreline.engine.data.inputs import to_matrix
from scoreline.engine.data.request import RequestSchema, RowBatch

__all__ = ["open_store", "to_matrix", "RequestSchema", "RowBatch"]
