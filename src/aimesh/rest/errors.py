"""Every REST error is ``{"error": message, "code": code}``; never an HTML page or a bare 500.

Each service passes its own table from error code to HTTP status; codes it does not list
take the status every service shares (``BASE_STATUS``: 413, 415, the edge's refusals), else
fall back by family (not found 404, conflict 409, bad request 400, otherwise 500).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from aimesh.errors import AimeshError, Conflict, InvalidRequest, NotFound
from aimesh.rest.asgi import BASE_STATUS

log = logging.getLogger("aimesh.rest")

_HTTP_CODES = {404: "route_not_found", 405: "method_not_allowed", 413: "request_too_large"}


def _fallback_status(exc: AimeshError) -> int:
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, Conflict):
        return 409
    if isinstance(exc, InvalidRequest):
        return 400
    return 500


def install_error_handlers(app: FastAPI, status: Mapping[str, int]) -> None:
    """Answer every error on ``app`` with the JSON error body and a fitting status."""

    async def aimesh_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, AimeshError)
        code = status.get(exc.code) or BASE_STATUS.get(exc.code) or _fallback_status(exc)
        if code >= 500:
            log.error("request failed: %s", exc.message, extra={"code": exc.code})
        return JSONResponse(exc.to_dict(), status_code=code)

    async def validation_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        problems = [
            {"loc": [str(p) for p in err.get("loc", ())], "msg": str(err.get("msg", ""))}
            for err in exc.errors()
        ]
        summary = "; ".join(f"{'.'.join(p['loc'])}: {p['msg']}" for p in problems[:5])
        body = {"error": f"invalid request: {summary}", "code": "invalid_request"}
        return JSONResponse({**body, "details": problems}, status_code=400)

    async def http_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return JSONResponse(
            {"error": str(exc.detail), "code": code},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error", exc_info=exc)
        return JSONResponse(
            {"error": "internal error; see the service log", "code": "internal_error"},
            status_code=500,
        )

    app.add_exception_handler(AimeshError, aimesh_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
