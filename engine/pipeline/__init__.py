"""One deployment's stages (fill -> plan -> predict -> decide), their typed result, and the router."""

from scoreline.engine.pipeline.deployment import Deployment, validate_version
from scoreline.engine.pipeline.result import Result
from scoreline.engine.pipeline.router import Engine
from scoreline.engine.pipeline.stages import Stage, State

__all__ = ["Deployment", "Engine", "Result", "Stage", "State", "validate_version"]
