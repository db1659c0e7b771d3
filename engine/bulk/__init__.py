"""Bulk scoring: file sources and sinks, streaming jobs with bounded memory."""

from scoreline.engine.bulk.jobs import score_batches, score_file

__all__ = ["score_batches", "score_file"]
