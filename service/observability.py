"""JSON logs and the per-request middleware (request id, access log line, HTTP metrics)."""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.context import request_id_var
from service.errors import internal_error_response
from service.metrics import HTTP_LATENCY, HTTP_REQUESTS

access_logger = logging.getLogger("plinth.access")
logger = logging.getLogger("plinth")
# A proxy-supplied id is copied into logs and headers, so accept only a safe alphabet.
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}\Z")  # \Z: no final newline
_UNMATCHED_ROUTE = "<unmatched>"  # one label for all unknown paths keeps cardinality bounded
# nginx's "client closed request": nobody receives an answer, and nothing failed on our side.
CLIENT_CLOSED_REQUEST = 499


def _route_template(scope: Scope) -> str:
    route = scope.get("route")  # set by FastAPI's API routes
    if route is not None:
        return route.path
    if "endpoint" in scope:
        # A plain Starlette route (/openapi.json, /docs): matched, so its path is static.
        return scope["path"]
    return _UNMATCHED_ROUTE


def _client_address(scope: Scope, headers: dict[bytes, bytes]) -> str | None:
    client = scope.get("client")
    if client:
        # Over TCP uvicorn already applied X-Forwarded-For from trusted proxies.
        return client[0]
    # A unix socket has no peer address; only processes allowed by the socket's file
    # permissions (the reverse proxy) can connect, so its forwarding header is trusted.
    forwarded = headers.get(b"x-forwarded-for", b"").decode("latin-1")
    return forwarded.rsplit(",", 1)[-1].strip() or None


class RequestContextMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware) so it adds no task or body buffering per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope["headers"])
        supplied = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = supplied if _VALID_REQUEST_ID.match(supplied) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        status = 500
        response_started = False

        async def send_with_request_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_request_id)
        except ClientDisconnect:
            # The client went away while sending its body (a timeout, a cancelled call): not
            # a server error, so neither a traceback nor a 500 in the metrics.
            status = CLIENT_CLOSED_REQUEST
            logger.info("client disconnected before its request was read")
        except Exception:
            logger.exception("unhandled error")
            if not response_started:
                await internal_error_response(scope.get("path"))(
                    scope, receive, send_with_request_id
                )
        finally:
            elapsed = time.perf_counter() - started
            route = _route_template(scope)
            HTTP_REQUESTS.labels(scope["method"], route, str(status)).inc()
            HTTP_LATENCY.labels(scope["method"], route, str(status)).observe(elapsed)
            access_logger.info(
                "request",
                extra={
                    "method": scope["method"],
                    "route": route,
                    "status": status,
                    "latency_ms": round(elapsed * 1000, 3),
                    "client": _client_address(scope, headers),
                },
            )
            request_id_var.reset(token)
