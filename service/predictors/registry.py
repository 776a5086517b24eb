"""Load the configured models from the artifacts directory, verifying each artifact."""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from service.predictors.base import Manifest, ModelLoadError, Predictor


@dataclass(frozen=True)
class LoadedModel:
    manifest: Manifest
    predictor: Predictor
    loaded_at: datetime

    @property
    def name(self) -> str:
        return self.manifest.name


class ModelRegistry:
    def __init__(self, models: dict[str, LoadedModel]) -> None:
        self._models = models

    def get(self, name: str) -> LoadedModel | None:
        return self._models.get(name)

    def __iter__(self):
        return iter(self._models.values())

    def names(self) -> list[str]:
        return list(self._models)


def _unreadable(path: Path, error: OSError) -> str:
    # e.g. the artifacts deployed with a mode or owner the service user cannot read.
    return f"cannot read {path} ({error.strerror or type(error).__name__})"


def _read_manifest(model_dir: Path, name: str) -> Manifest:
    manifest_path = model_dir / "manifest.json"
    if not manifest_path.is_file():
        raise ModelLoadError(f"model {name!r}: manifest not found at {manifest_path}")
    try:
        manifest = Manifest.model_validate_json(manifest_path.read_bytes())
    except OSError as error:
        raise ModelLoadError(f"model {name!r}: {_unreadable(manifest_path, error)}") from None
    except ValidationError as error:
        first = error.errors(include_input=False, include_url=False)[0]
        field = ".".join(str(part) for part in first["loc"]) or "manifest"
        raise ModelLoadError(
            f"model {name!r}: invalid manifest ({field}: {first['msg']})"
        ) from None
    if manifest.name != name:
        raise ModelLoadError(f"model {name!r}: manifest is for {manifest.name!r}")
    return manifest


def _verified_artifact(model_dir: Path, manifest: Manifest) -> Path:
    artifact = model_dir / manifest.artifact
    if not artifact.is_file():
        raise ModelLoadError(f"model {manifest.name!r}: artifact not found at {artifact}")
    try:
        with artifact.open("rb") as stream:
            digest = hashlib.file_digest(stream, "sha256").hexdigest()
    except OSError as error:
        raise ModelLoadError(f"model {manifest.name!r}: {_unreadable(artifact, error)}") from None
    if digest != manifest.sha256:
        raise ModelLoadError(
            f"model {manifest.name!r}: artifact {artifact.name} sha256 mismatch "
            f"(manifest {manifest.sha256}, file {digest})"
        )
    return artifact


def _predictor_class(manifest: Manifest) -> type[Predictor]:
    module_name, _, class_name = manifest.predictor.partition(":")
    try:
        predictor_class = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        raise ModelLoadError(
            f"model {manifest.name!r}: predictor {manifest.predictor} cannot be imported"
        ) from None
    return predictor_class


def load_model(artifacts_dir: Path, name: str) -> LoadedModel:
    model_dir = artifacts_dir / name
    try:
        manifest = _read_manifest(model_dir, name)
        artifact = _verified_artifact(model_dir, manifest)
    except OSError as error:  # is_file() itself: a name too long, a directory not searchable
        raise ModelLoadError(f"model {name!r}: {_unreadable(model_dir, error)}") from None
    try:
        predictor = _predictor_class(manifest).load(artifact)
    except ModelLoadError:
        raise
    except Exception as error:  # any plug-in failure becomes one clear startup error
        raise ModelLoadError(f"model {name!r}: loading failed: {error}") from error
    if not isinstance(predictor, Predictor):
        raise ModelLoadError(f"model {name!r}: {manifest.predictor} is not a Predictor")
    return LoadedModel(manifest=manifest, predictor=predictor, loaded_at=datetime.now(UTC))


def load_models(artifacts_dir: Path, names: list[str]) -> ModelRegistry:
    """All or nothing: a worker never serves with a model missing."""
    return ModelRegistry({name: load_model(artifacts_dir, name) for name in names})
