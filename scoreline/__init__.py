"""Scoreline: metadata-driven, Numba-accelerated model scoring."""
