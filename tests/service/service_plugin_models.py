"""Test-only model plug-ins, loaded through the same manifest/sha256 path as real models."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Self

import psycopg
import sqlalchemy.exc
from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel
from starlette.exceptions import HTTPException


class Echo(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    value: int


class SleepyPredictor:
    """Sleeps ``delay_seconds`` (from its artifact) per batch: in-flight and timeout tests."""

    input_schema = Echo
    output_schema = Echo

    def __init__(self, delay_seconds: float) -> None:
        self.delay_seconds = delay_seconds

    @classmethod
    def load(cls, artifact: Path) -> Self:
        return cls(json.loads(artifact.read_text())["delay_seconds"])

    def predict(self, batch: Sequence[BaseModel]) -> list[BaseModel]:
        time.sleep(self.delay_seconds)
        return [Echo(value=item.value) for item in batch]  # type: ignore[attr-defined]


class BrokenPredictor(SleepyPredictor):
    """Raises with a message that must never reach a client."""

    def predict(self, batch: Sequence[BaseModel]) -> list[BaseModel]:
        raise RuntimeError("secret internal detail /etc/plinth/weights")


class EscapingPredictor(SleepyPredictor):
    """Echoes, but raises what an ordinary Exception handler lets through on some inputs: a
    StopIteration (a stray next() on an empty iterator) on 13, a SystemExit on 14."""

    def predict(self, batch: Sequence[BaseModel]) -> list[BaseModel]:
        values = [item.value for item in batch]  # type: ignore[attr-defined]
        if 13 in values:
            next(iter(()))
        if 14 in values:
            raise SystemExit(3)
        return [Echo(value=value) for value in values]


class Text(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    text: str


class NoArtifact:
    """A test plug-in with nothing to load from its artifact."""

    @classmethod
    def load(cls, artifact: Path) -> Self:
        return cls()


class ParrotPredictor(NoArtifact):
    """Repeats its text input: any string, including ones the database cannot store."""

    input_schema = Text
    output_schema = Text

    def predict(self, batch: Sequence[BaseModel]) -> list[BaseModel]:
        return [Text(text=item.text) for item in batch]  # type: ignore[attr-defined]


class RecordingPredictor(SleepyPredictor):
    """Echoes, noting the inputs of every batch it is given: adaptive batching tests."""

    def __init__(self, delay_seconds: float) -> None:
        super().__init__(delay_seconds)
        self.batches: list[list[int]] = []

    def predict(self, batch: Sequence[BaseModel]) -> list[BaseModel]:
        self.batches.append([item.value for item in batch])  # type: ignore[attr-defined]
        return super().predict(batch)


class PickyPredictor(RecordingPredictor):
    """Crashes on the input 13 only: one bad input must not fail the requests batched with it."""

    def predict(self, batch: Sequence[BaseModel]) -> list[BaseModel]:
        outputs = super().predict(batch)
        if any(item.value == 13 for item in batch):  # type: ignore[attr-defined]
            raise ValueError("13 is unlucky")
        return outputs


class OwnDatabasePredictor(NoArtifact):
    """Queries a database of its own, which fails: raises what its input names, classes the
    service answers specially when they are its own (its database away, data it cannot store,
    an HTTP status)."""

    input_schema = Text
    output_schema = Text

    def predict(self, batch: Sequence[BaseModel]) -> list[BaseModel]:
        raising = {
            "psycopg-operational": lambda: psycopg.OperationalError("features.internal is gone"),
            "psycopg-data": lambda: psycopg.DataError("invalid input syntax for type integer"),
            "sqlalchemy-operational": lambda: sqlalchemy.exc.OperationalError(
                "SELECT 1", None, psycopg.OperationalError("features.internal is gone")
            ),
            "http-404": lambda: HTTPException(404, "no features for this applicant"),
        }
        for item in batch:
            if item.text in raising:  # type: ignore[attr-defined]
                raise raising[item.text]()  # type: ignore[attr-defined]
        return [Text(text=item.text) for item in batch]  # type: ignore[attr-defined]


class Reading(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str
    score: float


class FaultyOutputPredictor(NoArtifact):
    """Answers with what JSON and PostgreSQL cannot carry when asked: "nan" gives a NaN score,
    "nul" a NUL in its text."""

    input_schema = Text
    output_schema = Reading

    def predict(self, batch: Sequence[BaseModel]) -> list[BaseModel]:
        faults = {"nan": ("ok", float("nan")), "nul": ("ok\x00", 1.0)}
        return [
            Reading(**dict(zip(("text", "score"), faults.get(item.text, ("ok", 1.0)), strict=True)))  # type: ignore[attr-defined]
            for item in batch
        ]


class Applicant(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)
    annual_income: float
    loan_amount: float


class Approval(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)
    approval_score: float


class CamelCasePredictor(NoArtifact):
    """A plug-in whose wire format is camelCase (pydantic aliases)."""

    input_schema = Applicant
    output_schema = Approval

    def predict(self, batch: Sequence[BaseModel]) -> list[BaseModel]:
        return [
            Approval(approval_score=item.loan_amount / item.annual_income)  # type: ignore[attr-defined]
            for item in batch
        ]


class Kelvin:
    """Schemas named as another plug-in's (Celsius) and as the service's own are (Problem,
    Readiness): a plug-in's class names are its own business, and the OpenAPI document keeps
    every schema apart."""

    class Problem(BaseModel):
        kelvin: float

    class Readiness(BaseModel):
        kelvin: float


class Celsius:
    class Problem(BaseModel):
        celsius: float

    class ModelList(BaseModel):
        celsius: float


class KelvinPredictor(NoArtifact):
    input_schema = Kelvin.Problem
    output_schema = Kelvin.Readiness

    def predict(self, batch: Sequence[BaseModel]) -> list[BaseModel]:
        return [Kelvin.Readiness(kelvin=item.kelvin) for item in batch]  # type: ignore[attr-defined]


class CelsiusPredictor(NoArtifact):
    input_schema = Celsius.Problem
    output_schema = Celsius.ModelList

    def predict(self, batch: Sequence[BaseModel]) -> list[BaseModel]:
        return [Celsius.ModelList(celsius=item.celsius) for item in batch]  # type: ignore[attr-defined]
