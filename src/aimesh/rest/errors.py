"""Every REST error is ``{"error": message, "code": code, "request_id": id}``; never a bare 500.

The status is the one of :mod:`aimesh.rest.status`, the table every service shares. Every
request has an id (``x-request-id``, passed on or made) that every answer and every error
body carry; the service log keeps what the body leaves out (the foreign error behind ours,
a stack trace) under the same id.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Route

from aimesh.errors import AimeshError, CircuitOpen, InvalidRequest, Overloaded
from aimesh.rest.asgi import (
    CLIENT_GONE,
    REQUEST_ID,
    ASGIScope,
    Message,
    Receive,
    Send,
    header,
    internal_error,
)
from aimesh.rest.status import error_headers, shown_message, status_of

__all__ = ["RequestIds", "install_error_handlers", "log_failure", "request_id_of"]

log = logging.getLogger("aimesh.rest")

_HTTP_CODES = {404: "route_not_found", 405: "method_not_allowed", 413: "request_too_large"}
_SCOPE_KEY = "aimesh.request_id"
# A request id a client sends is kept when it is this tame (it lands in logs and headers).
_TAME_ID = re.compile(r"^[\w.:-]{1,128}$")


def request_id_of(scope: MutableMapping[str, Any]) -> str:
    """The request's id: the client's ``x-request-id`` when tame, else a new one (kept)."""
    found: str | None = scope.get(_SCOPE_KEY)
    if found is None:
        given = header(scope, REQUEST_ID)
        found = given if given is not None and _TAME_ID.fullmatch(given) else uuid.uuid4().hex
        scope[_SCOPE_KEY] = found
    return found


class RequestIds:
    """ASGI middleware: every request gets its id, every response says it in ``x-request-id``."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        value = request_id_of(scope).encode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(key.lower() == REQUEST_ID for key, _ in headers):
                    headers.append((REQUEST_ID, value))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_id)


def log_failure(logger: logging.Logger, exc: AimeshError, status: int, request_id: str) -> None:
    """Log what the error body leaves out, under the request id.

    A server error is logged with its stack and the foreign error behind it; a client error
    only when a foreign error lies behind it (its text, which the body does not quote). A
    full service (:class:`~aimesh.errors.Overloaded`) or an open circuit
    (:class:`~aimesh.errors.CircuitOpen`) is no fault of this one: a warning, no stack (the
    breaker's opening was logged once, with its figures).
    """
    extra = {"code": exc.code, "request_id": request_id}
    if isinstance(exc, Overloaded | CircuitOpen):
        logger.warning("request %s refused: %s (%s)", request_id, exc.message, exc.code,
                       extra=extra)  # fmt: skip
    elif status >= 500:
        logger.error(
            "request %s failed: %s (%s)", request_id, exc.message, exc.code, exc_info=exc,
            extra=extra,
        )  # fmt: skip
    elif exc.__cause__ is not None:
        cause = exc.__cause__
        while cause.__cause__ is not None:  # the foreign error at the root says it all
            cause = cause.__cause__
        logger.info(
            "request %s: %s (%s); behind it: %s: %s",
            request_id, exc.message, exc.code, type(cause).__name__, str(cause).strip(),
            extra=extra,
        )  # fmt: skip


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app takes on the request's path."""
    path = request.scope["path"]
    methods: set[str] = set()
    routes = list(request.app.router.routes)
    while routes:
        route = routes.pop()
        included = getattr(route, "original_router", None)  # a router included whole
        if included is not None:
            routes.extend(included.routes)  # its paths carry its prefix (none is added)
        elif isinstance(route, Route) and route.path_regex.match(path):
            methods |= route.methods or set()
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error on ``app`` with the JSON error body, and give requests their ids."""
    app.add_middleware(RequestIds)

    def answer(
        request: Request, body: dict[str, Any], status: int, headers: dict[str, str] | None = None
    ) -> JSONResponse:
        request_id = request_id_of(request.scope)
        return JSONResponse(
            {**body, "request_id": request_id},
            status_code=status,
            headers={**(headers or {}), REQUEST_ID.decode(): request_id},
        )

    async def aimesh_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, AimeshError)
        status = status_of(exc)
        log_failure(log, exc, status, request_id_of(request.scope))
        headers = {k.decode(): v.decode() for k, v in error_headers(exc, status)}
        body = {**exc.to_dict(), "error": shown_message(exc, status)}
        return answer(request, body, status, headers)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        problems = [
            {"loc": [str(p) for p in err.get("loc", ())], "msg": str(err.get("msg", ""))}
            for err in exc.errors()
        ]
        summary = "; ".join(f"{'.'.join(p['loc'])}: {p['msg']}" for p in problems[:5])
        body = {"error": f"invalid request: {summary}", "code": "invalid_request"}
        return answer(request, {**body, "details": problems}, 400)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        body = {"error": str(exc.detail), "code": code}
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            # Starlette names the methods of the first route that matched the path alone.
            headers = {"Allow": ", ".join(_allowed_methods(request))}
        return answer(request, body, exc.status_code, headers)

    async def client_gone(request: Request, exc: Exception) -> JSONResponse:
        # A streamed body (an upload) cut off by its client: what the bare-ASGI services say
        # for the same (read_body), to nobody. The route's own cleanup has run by now.
        assert isinstance(exc, ClientDisconnect)
        return await aimesh_error(request, InvalidRequest(CLIENT_GONE))

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        request_id = request_id_of(request.scope)
        log.error("request %s failed unexpectedly", request_id, exc_info=exc,
                  extra={"request_id": request_id})  # fmt: skip
        return answer(request, internal_error(request_id), 500)

    app.add_exception_handler(AimeshError, aimesh_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(ClientDisconnect, client_gone)
    app.add_exception_handler(Exception, unexpected)
