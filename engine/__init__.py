"""Scoreline's engine: artifacts and manifests turned into compiled, callable deployments.

Sub-packages, by concept (each has a short ``__all__``):

- ``models``   -- model loaders and the objects that predict: the LightGBM parser and packer,
  the per-model compiled tier, linear models.
- ``data``     -- input adapters (numpy / Arrow / pandas to matrices), value checks, entity
  stores and their in-memory views, generated sample rows.
- ``pipeline`` -- one deployment's stages (fill -> plan -> predict -> decide), the router
  (``Engine``) and the buffer in front of the decision log.
- ``bulk``     -- file sources and sinks, streaming bulk jobs.
- ``gpu``      -- the CUDA backend.
"""
