"""What a bulk job scores with on the device it was asked for: `for_bulk(model, device)`.

Bulk jobs decide the device (``scoreline score --device``); the GPU backend only scores. Kept
here so the GPU backend never loads model files (models -> gpu stays a one-way import).
"""

from __future__ import annotations

import os
import warnings

from scoreline.engine.gpu.backend import (
    GPU_MIN_ROWS, GpuUnavailableWarning, choose_device, cuda_available, on_gpu, warn_unavailable,
)
from scoreline.engine.models.files import load_model_file
from scoreline.engine.models.protocols import TreeModel

__all__ = ["for_bulk"]


def for_bulk(model, device: str | None):
    """What bulk scoring (``score_file``, ``scoreline score --device``) should score with.

    ``model`` is a model file, a loaded model or a registered model id. For ``"cpu"`` it comes back
    as is; for ``"cuda"`` or ``"auto"`` a LightGBM model (file or loaded) comes back as a
    ``GpuLightGBM`` when a GPU is usable. Otherwise ``model`` comes back unchanged, with a
    ``GpuUnavailableWarning`` saying why when ``"cuda"`` was asked for (no GPU; a registered
    deployment or a linear model, which score on the CPU).
    """
    explicit = (device or os.environ.get("SCORELINE_DEVICE") or "cpu").lower() == "cuda"
    if choose_device(device, GPU_MIN_ROWS) == "cpu":
        return model
    ok, reason = cuda_available()
    if not ok:
        if explicit:
            warn_unavailable(reason)
        return model
    loaded = model
    if isinstance(model, (str, os.PathLike)):
        if not os.path.isfile(model):
            if explicit:
                warnings.warn("scoring on the CPU: registered deployments score on the CPU; give a model file "
                              "to score on the GPU", GpuUnavailableWarning, stacklevel=2)
            return model
        loaded = load_model_file(model)
    if not (isinstance(loaded, TreeModel) and loaded.kind == "lightgbm"):
        if explicit:
            warnings.warn(f"scoring on the CPU: only LightGBM models score on the GPU, not {type(loaded).__name__}",
                          GpuUnavailableWarning, stacklevel=2)
        return model
    return on_gpu(loaded)
