"""HEAD answered as GET without the body (RFC 9110, 9.3.2: every general-purpose server
supports GET and HEAD). FastAPI's routes list the methods they declare, GET alone, so HEAD
met a 405, and uptime probes that send HEAD saw the service as down. Pure ASGI, as the request
middleware; Starlette's plain routes do the same for themselves, FastAPI's API routes do not."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


def allowed_with_head(allow: str) -> str:
    """A 405's Allow (Starlette lists the route's declared methods) with HEAD wherever GET is
    there, as HeadAsGet serves it: RFC 9110 (15.5.6) has Allow list what the resource takes."""
    methods = [method.strip() for method in allow.split(",") if method.strip()]
    if "GET" in methods and "HEAD" not in methods:
        methods.append("HEAD")
    return ", ".join(methods)


class HeadAsGet:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                # The headers (Content-Length too) are GET's; the body is not sent.
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        as_get = {**scope, "method": "GET"}
        try:
            await self.app(as_get, receive, send_without_body)
        finally:
            # What routing learnt (the route, for the metrics and the access log) belongs to
            # the request the outer middleware sees; its method stays HEAD.
            for key in ("route", "endpoint", "path_params"):
                if key in as_get:
                    scope[key] = as_get[key]
