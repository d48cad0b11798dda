"""Who calls a FastAPI service (registry, lake, jobs), and whether they may.

:func:`service_app` makes :func:`identity` a dependency of every route: it finds the
presented key (``X-API-Key`` or ``Authorization: Bearer``), the route's scope and the
client's address, and asks the app's :class:`~aimesh.auth.Keyring`. A route's scope is
``read`` for GET and HEAD and ``write`` for the rest, unless the route declares its own
with ``openapi_extra=route_scope("admin")`` (or ``"open"``: no key needed, like
``/health``; or ``"authenticated"``: any known key, the handler decides). A handler that
needs the caller takes ``caller: Caller``; FastAPI computes the dependency once a request.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Depends, Request

from aimesh.auth import IDENTITY_HEADER, Identity, Keyring, Scope, key_from_headers

__all__ = ["SCOPE_KEY", "Caller", "Needed", "identity", "route_scope", "scope_of"]

SCOPE_KEY = "x-aimesh-scope"
"""Where a route declares its scope: its OpenAPI operation, so the docs show it too."""

_READS = frozenset({"GET", "HEAD"})


Needed = Scope | Literal["authenticated"] | None
"""What a route needs: a scope, any known key (``authenticated``), or nothing (None)."""


def route_scope(scope: Scope | Literal["open", "authenticated"]) -> dict[str, Any]:
    """``openapi_extra`` for a route that needs ``scope`` (``open``: none at all)."""
    return {SCOPE_KEY: scope}


def scope_of(route: Any, method: str) -> Needed:
    """What a request of ``method`` needs on ``route`` (None: an open route)."""
    extra = getattr(route, "openapi_extra", None) or {}
    declared = extra.get(SCOPE_KEY)
    if declared == "open":
        return None
    if declared is not None:
        found: Scope | Literal["authenticated"] = declared
        return found
    if getattr(route, "include_in_schema", True) is False:
        return None  # the docs pages and their assets
    return "read" if method in _READS else "write"


async def identity(request: Request) -> Identity:
    """The caller of this request, checked against the route's scope (raises if refused)."""
    keyring: Keyring = request.app.state.keyring
    headers = request.headers
    presented = key_from_headers(headers.get("x-api-key"), headers.get("authorization"))
    needed = scope_of(request.scope.get("route"), request.method)
    client = request.client.host if request.client else "unknown"
    on_behalf = headers.get(IDENTITY_HEADER)
    if needed == "authenticated":
        return keyring.authenticate(presented, client=client, on_behalf=on_behalf)
    return keyring.check(presented, needed, client=client, on_behalf=on_behalf)


Caller = Annotated[Identity, Depends(identity)]
"""A handler's parameter type for the identity calling it."""
