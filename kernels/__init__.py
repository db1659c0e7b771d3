"""The tree-ensemble and linear kernels: pure Numba functions over numpy arrays (no Python objects, no Arrow)."""
