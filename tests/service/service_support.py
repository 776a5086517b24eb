"""Shared test helpers: artifact directories, subprocess environments, waiting."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import httpx2

from service.config import PACKAGED_ARTIFACTS_DIR

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent.parent
IRIS_INPUT = {
    "sepal_length_cm": 5.1,
    "sepal_width_cm": 3.5,
    "petal_length_cm": 1.4,
    "petal_width_cm": 0.2,
}


def write_model(artifacts_dir: Path, name: str, predictor: str, weights: dict) -> Path:
    model_dir = artifacts_dir / name
    model_dir.mkdir(parents=True, exist_ok=True)
    artifact = model_dir / "weights.json"
    artifact.write_text(json.dumps(weights))
    manifest = {
        "name": name,
        "version": "0.0.1",
        "framework": "test",
        "predictor": predictor,
        "artifact": "weights.json",
        "sha256": hashlib.sha256(artifact.read_bytes()).hexdigest(),
    }
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    return model_dir


def artifacts_with_test_models(root: Path, *, sleepy_delay: float = 1.0) -> Path:
    """A copy of the packaged artifacts plus the ``sleepy``, ``broken``, ``escaping``,
    ``parrot``, ``recorder``, ``picky``, ``faulty``, ``camel``, ``querying``, ``kelvin`` and
    ``celsius`` test models."""
    artifacts = root / "artifacts"
    shutil.copytree(PACKAGED_ARTIFACTS_DIR, artifacts)
    write_model(
        artifacts,
        "sleepy",
        "service_plugin_models:SleepyPredictor",
        {"delay_seconds": sleepy_delay},
    )
    write_model(artifacts, "broken", "service_plugin_models:BrokenPredictor", {"delay_seconds": 0})
    write_model(
        artifacts, "escaping", "service_plugin_models:EscapingPredictor", {"delay_seconds": 0}
    )
    write_model(artifacts, "parrot", "service_plugin_models:ParrotPredictor", {})
    write_model(artifacts, "faulty", "service_plugin_models:FaultyOutputPredictor", {})
    write_model(artifacts, "camel", "service_plugin_models:CamelCasePredictor", {})
    write_model(artifacts, "querying", "service_plugin_models:OwnDatabasePredictor", {})
    write_model(artifacts, "kelvin", "service_plugin_models:KelvinPredictor", {})
    write_model(artifacts, "celsius", "service_plugin_models:CelsiusPredictor", {})
    # A short pause per batch lets concurrent requests queue up behind it.
    pause = {"delay_seconds": 0.02}
    write_model(artifacts, "recorder", "service_plugin_models:RecordingPredictor", pause)
    write_model(artifacts, "picky", "service_plugin_models:PickyPredictor", pause)
    return artifacts


def subprocess_env(**overrides: str) -> dict[str, str]:
    """The current environment minus any PLINTH_* leaking in, plus the test plug-ins."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PLINTH_")}
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(TESTS_DIR), str(REPO_ROOT), os.environ.get("PYTHONPATH")])
    )
    environment.update(overrides)
    return environment


def wait_until_ready(
    client: httpx2.Client, *, timeout: float = 60.0, path: str = "/readyz"
) -> None:
    deadline = time.monotonic() + timeout
    last_error: object = None
    while time.monotonic() < deadline:
        try:
            response = client.get(path)
            if response.status_code == 200:
                return
            last_error = response.text
        except httpx2.TransportError as error:
            last_error = error
        time.sleep(0.2)
    raise AssertionError(f"service not ready after {timeout}s: {last_error}")


def pool_in_use(client) -> float:
    """plinth_db_pool_connections_in_use as /metrics reports it."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("plinth_db_pool_connections_in_use "):
            return float(line.split()[1])
    raise AssertionError("/metrics has no plinth_db_pool_connections_in_use sample")
