"""Swagger UI for every ``/docs`` page, from files installed with aimesh: no CDN, no download.

Every server (the FastAPI services, the gateway, the model service) answers ``/docs`` with
:func:`swagger_page` and ``/docs/assets/<name>`` with :func:`docs_asset`. The files come
from the ``fastapi-offline`` package, used only as their source: its folder is found
without importing it (that would import FastAPI), and only the names of a fixed list are
served, each read once and kept in memory; any other name is not found, so no request
names a path on disk. Pages name their assets with a digest of the content, so the
assets can be cached for a year and still change with the installed package.
"""

from __future__ import annotations

import functools
import hashlib
import html
import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DOCS_ASSETS_URL", "DocsAsset", "docs_asset", "swagger_page"]

log = logging.getLogger("aimesh.rest")

DOCS_ASSETS_URL = "/docs/assets/"
"""Where every server serves the assets of its ``/docs`` page."""

_CONTENT_TYPES: dict[str, bytes] = {
    "swagger-ui-bundle.js": b"text/javascript; charset=utf-8",
    "swagger-ui.css": b"text/css; charset=utf-8",
    "favicon.png": b"image/png",
}
"""The only names served, and their content types."""

_CACHE_CONTROL = (b"cache-control", b"public, max-age=31536000, immutable")


@dataclass(frozen=True, slots=True)
class DocsAsset:
    """One asset of the ``/docs`` page, ready to send."""

    body: bytes
    content_type: bytes
    headers: list[tuple[bytes, bytes]]
    """Headers beyond the content type and length (caching); do not change them."""
    digest: str
    """A short digest of ``body``: pages name ``name?v=digest``."""


def docs_asset(name: str) -> DocsAsset | None:
    """The asset ``name`` (read once), or None: a name not in the list, or a missing file."""
    return _load(name) if name in _CONTENT_TYPES else None


def _static_folder() -> Path | None:
    """fastapi-offline's folder of static files, found without importing the package."""
    spec = importlib.util.find_spec("fastapi_offline")
    for location in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(location) / "static"
        if folder.is_dir():
            return folder
    return None


@functools.cache
def _load(name: str) -> DocsAsset | None:
    folder = _static_folder()
    try:
        if folder is None:
            raise FileNotFoundError("the package fastapi-offline is not installed")
        body = (folder / name).read_bytes()
    except OSError as exc:
        log.warning("the /docs page cannot serve %s: %s", name, exc)
        return None
    digest = hashlib.sha256(body).hexdigest()[:12]
    return DocsAsset(body, _CONTENT_TYPES[name], [_CACHE_CONTROL], digest)


def _url(assets_url: str, name: str) -> str | None:
    asset = docs_asset(name)
    return None if asset is None else f"{assets_url}{name}?v={asset.digest}"


@functools.cache
def swagger_page(
    title: str, openapi_url: str = "/openapi.json", assets_url: str = DOCS_ASSETS_URL
) -> bytes:
    """The HTML of Swagger UI over ``openapi_url``, its assets under ``assets_url``."""
    script, css, icon = (
        _url(assets_url, name) for name in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png")
    )
    head = [f"<title>{html.escape(title)}</title>"]
    if icon is not None:
        head.append(f'<link rel="icon" type="image/png" href="{html.escape(icon)}">')
    if css is not None:
        head.append(f'<link rel="stylesheet" href="{html.escape(css)}">')
    if script is None:
        body = "<p>Swagger UI's files are missing: install the package fastapi-offline.</p>"
    else:
        # JSON in a script: escape "<" so that no value can close the script element.
        options = json.dumps({"url": openapi_url, "dom_id": "#swagger-ui", "deepLinking": True})
        options = options.replace("<", "\\u003c")
        body = (
            f'<div id="swagger-ui"></div>\n<script src="{html.escape(script)}"></script>\n'
            f"<script>SwaggerUIBundle({options});</script>"
        )
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">\n'
        + "\n".join(head)
        + f"\n</head><body>\n{body}\n</body></html>\n"
    ).encode()
