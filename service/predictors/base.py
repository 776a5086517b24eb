"""The contract every model plug-in fulfils, and the manifest that describes its artifact."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Protocol, Self, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field


class ModelLoadError(Exception):
    """A configured model cannot be served; the message says which one and why."""


class Manifest(BaseModel):
    """``<artifacts_dir>/<name>/manifest.json``: what to load and how to verify it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,99}$")
    version: str = Field(min_length=1, max_length=100)
    framework: str = Field(min_length=1, max_length=100)
    # "package.module:ClassName" of a Predictor. The artifacts directory is operator
    # configuration, trusted like the Python path itself.
    predictor: str = Field(pattern=r"^[\w.]+:\w+$")
    artifact: str = Field(pattern=r"^[\w.-]+$", description="file name inside the model directory")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    description: str = ""


@runtime_checkable
class Predictor(Protocol):
    """A loaded model. Implementations must be thread-safe: batches run in a thread pool."""

    input_schema: ClassVar[type[BaseModel]]
    output_schema: ClassVar[type[BaseModel]]

    @classmethod
    def load(cls, artifact: Path) -> Self:
        """Build the predictor from its (already sha256-verified) artifact file."""
        ...

    def predict(self, batch: Sequence[BaseModel]) -> list[BaseModel]:
        """One output (an ``output_schema`` instance) per input, in order."""
        ...
