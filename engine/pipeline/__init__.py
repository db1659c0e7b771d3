"""One deployment's stages (fill -> plan -> predict -> decide) and the router over deployments."""

from scoreline.engine.pipeline.deployment import Deployment, validate_version
from scoreline.engine.pipeline.router import Engine

__all__ = ["Deployment", "Engine", "validate_version"]
