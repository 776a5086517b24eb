"""Model plug-ins: the ``Predictor`` interface, the artifact registry and the reference model."""

from service.predictors.base import Manifest, ModelLoadError, Predictor
from service.predictors.registry import LoadedModel, ModelRegistry, load_models

__all__ = ["LoadedModel", "Manifest", "ModelLoadError", "ModelRegistry", "Predictor", "load_models"]
