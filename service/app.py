"""``create_app(settings)``: wiring only. Each concern lives in its own module."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.exc import SQLAlchemyError

from service.api import health, models, predictions
from service.config import CONFIG_ERROR_EXIT_CODE, ConfigError, Settings, load_settings
from service.database import (
    answer_deadline,
    async_connector,
    build_engine,
    record_loaded_model,
)
from service.errors import install_exception_handlers
from service.head import HeadAsGet
from service.inference_batcher import InferenceBatcher
from service.logs import configure_logging
from service.metrics import change_pool_in_use
from service.migrations import head_revision, known_revisions
from service.observability import RequestContextMiddleware
from service.openapi import install_openapi
from service.prediction_writer import PredictionWriter
from service.predictors import ModelLoadError, ModelRegistry, load_models
from service.release import package_version, read_release_info

logger = logging.getLogger("plinth")


def _record_models(app: FastAPI) -> None:
    """Note in the registry table which artifacts this worker serves (best effort: the
    database may be down or not migrated yet; readiness reports that separately)."""
    registry: ModelRegistry = app.state.registry
    try:
        for model in registry:
            record_loaded_model(
                app.state.engine,
                name=model.manifest.name,
                version=model.manifest.version,
                artifact_sha256=model.manifest.sha256,
                framework=model.manifest.framework,
            )
    except SQLAlchemyError as error:
        logger.warning("could not record loaded models: %s", type(error).__name__)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Bounded like readiness: a stalled server never answers, and a worker that waited for it
    # would never serve (Gunicorn kills it at its timeout, and the next one hangs alike). The
    # thread cannot be interrupted in psycopg's wait: it is left to end when the server answers
    # (or the kernel gives the connection up), holding one pooled connection till then.
    deadline = answer_deadline(app.state.settings)
    try:
        async with asyncio.timeout(deadline):
            await run_in_threadpool(_record_models, app)
    except TimeoutError:
        logger.warning("could not record loaded models: no answer within %g s", deadline)
    logger.info("serving models: %s", ", ".join(app.state.registry.names()))
    # Everything loaded so far (the app, its libraries, the models) lives as long as the
    # process. Frozen, the collector stops scanning it: a full collection of those ~100k
    # objects took 120 ms, stalling every request in flight (it was the p99 of predictions).
    gc.collect()
    gc.freeze()
    yield
    for batcher in app.state.batchers.values():
        await batcher.close()
    await app.state.prediction_writer.close()
    app.state.executor.shutdown(wait=False, cancel_futures=True)
    app.state.engine.dispose()


def create_app(settings: Settings) -> FastAPI:
    """Build the app; raises ``ModelLoadError`` when a configured model cannot be loaded."""
    configure_logging(settings.log_level)
    registry = load_models(settings.artifacts_dir, settings.models)
    app = FastAPI(
        title="plinth",
        version=package_version(),
        description="A model-agnostic prediction service: validated inputs, every prediction "
        "persisted, problem+json errors.",
        lifespan=_lifespan,
    )
    app.state.settings = settings
    app.state.registry = registry
    app.state.engine = build_engine(settings, on_pool_change=change_pool_in_use)
    # Inference runs here rather than in anyio's shared thread pool: a plain executor hop is
    # markedly cheaper. One batch per model is in flight, so one thread per model suffices.
    app.state.executor = ThreadPoolExecutor(
        max_workers=len(registry.names()), thread_name_prefix="plinth-predict"
    )
    # Connections per worker: the pool's plus this one (predictions are written here).
    app.state.prediction_writer = PredictionWriter(
        async_connector(app.state.engine, settings),
        timeout_seconds=answer_deadline(settings),
        on_connection_use=change_pool_in_use,
    )
    app.state.batchers = {
        model.name: InferenceBatcher(
            model,
            app.state.executor,
            app.state.prediction_writer.submit,
            max_items=settings.max_batch_size,
            timeout_seconds=settings.predict_timeout_seconds,
        )
        for model in registry
    }
    app.state.head_revision = head_revision()
    app.state.known_revisions = known_revisions()
    app.state.release = read_release_info(settings.release_info_file)
    install_exception_handlers(app)
    app.add_middleware(HeadAsGet)  # inside the request middleware: logs and metrics say HEAD
    app.add_middleware(RequestContextMiddleware)
    # Routes are matched in order, and FastAPI's nested-router matching costs several
    # microseconds per router passed: the hot path (predictions) comes first.
    schemas = predictions.predict_schemas(registry, settings.max_batch_size)
    app.include_router(predictions.build_router(registry, schemas, settings))
    app.include_router(health.router)
    app.include_router(models.router)
    install_openapi(
        app, predict_schemas={predictions.predict_path(name): s for name, s in schemas.items()}
    )
    return app


def app_or_exit(settings: Settings | None = None) -> FastAPI:
    """What a server process serves: the app built from ``settings`` (by default read from the
    environment). A setting or model it cannot serve with prints the one configuration line
    and exits 78, like ``plinth check-config``."""
    try:
        return create_app(settings if settings is not None else load_settings())
    except ConfigError as error:
        message = str(error)
    except ModelLoadError as error:
        message = str(ConfigError("PLINTH_MODELS", f"cannot be served: {error}"))
    print(f"plinth: {message}", file=sys.stderr, flush=True)
    raise SystemExit(CONFIG_ERROR_EXIT_CODE)
