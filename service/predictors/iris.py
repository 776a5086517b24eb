"""The reference model: multinomial logistic regression over the four iris measurements.

Pure Python on purpose: the whole request path works offline without an ML framework.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Self

from pydantic import BaseModel, ConfigDict, Field

_MEASUREMENT = {"ge": 0, "le": 100, "allow_inf_nan": False}


class IrisMeasurements(BaseModel):
    # strict: JSON true or "5.1" is a client bug to report, not a number to guess.
    model_config = ConfigDict(extra="forbid", strict=True)

    sepal_length_cm: float = Field(**_MEASUREMENT)
    sepal_width_cm: float = Field(**_MEASUREMENT)
    petal_length_cm: float = Field(**_MEASUREMENT)
    petal_width_cm: float = Field(**_MEASUREMENT)


class IrisSpecies(BaseModel):
    species: str = Field(description="the most probable class")
    probabilities: dict[str, float] = Field(description="class -> probability, sums to 1")


class IrisPredictor:
    input_schema = IrisMeasurements
    output_schema = IrisSpecies

    def __init__(
        self,
        classes: list[str],
        features: list[str],
        coefficients: list[list[float]],
        intercepts: list[float],
    ) -> None:
        if not (len(classes) == len(coefficients) == len(intercepts)):
            raise ValueError("classes, coefficients and intercepts differ in length")
        if any(len(row) != len(features) for row in coefficients):
            raise ValueError("a coefficient row does not match the feature count")
        self.classes = classes
        self.features = features
        self.coefficients = coefficients
        self.intercepts = intercepts

    @classmethod
    def load(cls, artifact: Path) -> Self:
        weights = json.loads(artifact.read_text())
        return cls(
            classes=weights["classes"],
            features=weights["features"],
            coefficients=weights["coefficients"],
            intercepts=weights["intercepts"],
        )

    def _probabilities(self, measurements: IrisMeasurements) -> list[float]:
        values = [getattr(measurements, feature) for feature in self.features]
        logits = [
            intercept + sum(w * x for w, x in zip(row, values, strict=True))
            for row, intercept in zip(self.coefficients, self.intercepts, strict=True)
        ]
        peak = max(logits)  # subtract the max so exp() cannot overflow
        exps = [math.exp(logit - peak) for logit in logits]
        total = sum(exps)
        return [value / total for value in exps]

    def predict(self, batch: Sequence[BaseModel]) -> list[BaseModel]:
        outputs: list[BaseModel] = []
        for item in batch:
            probabilities = self._probabilities(IrisMeasurements.model_validate(item))
            best = max(range(len(self.classes)), key=probabilities.__getitem__)
            outputs.append(
                IrisSpecies(
                    species=self.classes[best],
                    probabilities={
                        name: round(p, 6)
                        for name, p in zip(self.classes, probabilities, strict=True)
                    },
                )
            )
        return outputs
