"""REST plumbing every aimesh service shares.

FastAPI services (registry, lake, jobs) install :func:`install_error_handlers`; the bare-ASGI
hot-path services (model service, gateway) use the helpers of ``asgi.py``. Either way every
error is ``{"error": message, "code": code}`` with the status of the one table in
``status.py``. Every one serves its ``/docs`` page with
``docs.py``: Swagger UI from installed files, never from a CDN.
"""

from aimesh.rest.asgi import (
    JSON,
    REQUEST_ID,
    ASGIScope,
    Message,
    MethodNotAllowed,
    Receive,
    RouteNotFound,
    Send,
    allow,
    declared_length,
    error_body,
    header,
    internal_error,
    read_body,
    respond,
)
from aimesh.rest.docs import DOCS_ASSETS_URL, DocsAsset, docs_asset, swagger_page
from aimesh.rest.errors import install_error_handlers, log_failure, request_id_of
from aimesh.rest.service import announced, service_app
from aimesh.rest.status import HTTP_STATUS, retry_after, shown_message, status_of

__all__ = [
    "DOCS_ASSETS_URL",
    "HTTP_STATUS",
    "JSON",
    "REQUEST_ID",
    "ASGIScope",
    "DocsAsset",
    "Message",
    "MethodNotAllowed",
    "Receive",
    "RouteNotFound",
    "Send",
    "allow",
    "announced",
    "declared_length",
    "docs_asset",
    "error_body",
    "header",
    "install_error_handlers",
    "internal_error",
    "log_failure",
    "read_body",
    "request_id_of",
    "respond",
    "retry_after",
    "service_app",
    "shown_message",
    "status_of",
    "swagger_page",
]
