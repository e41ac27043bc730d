"""The API reference at `/api/docs`: Swagger UI served by this process, nothing from elsewhere.

FastAPI's own docs page loads Swagger UI from a CDN and starts it with an inline script, so it
is blank offline and cannot be put under a strict Content-Security-Policy. This page loads the
vendored copy (app/pages/vendor/swagger-ui, its version and licence noted there) and a script
of our own (static/js/api-docs.js), and is sent with the pages' own headers: the same strict
CSP (`default-src 'none'`, scripts and styles from this origin only), no-store, no framing.

The vendored files are read and compressed on their first request, not at start-up: every
process would otherwise pay for 1.7 MB it rarely serves.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
from functools import cache
from pathlib import Path

from fastapi import APIRouter, Request, Response

from app.pages.router import (
    CONTENT_TYPES,
    YEAR_SECONDS,
    Asset,
    _assets,
    asset_response,
    security_headers,
)

router = APIRouter(include_in_schema=False)

VENDOR_DIR = Path(__file__).parent / "vendor" / "swagger-ui"
SWAGGER_UI_VERSION: str = json.loads((VENDOR_DIR / "package.json").read_text(encoding="utf-8"))[
    "version"
]
VENDOR_PREFIX = f"/vendor/swagger-ui/{SWAGGER_UI_VERSION}"
# Only what the page loads is served from the vendored folder.
SERVED = frozenset({"swagger-ui-bundle.js", "swagger-ui.css"})

_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>API reference — Televisit</title>
  <link rel="icon" href="{static}/img/icon.svg" type="image/svg+xml">
  <link rel="stylesheet" href="{vendor}/swagger-ui.css">
  <script src="{vendor}/swagger-ui-bundle.js"></script>
  <script type="module" src="{static}/js/api-docs.js"></script>
</head>
<body>
  <main id="swagger-ui" data-openapi="{openapi}"></main>
</body>
</html>
"""


def page_html(openapi_url: str) -> str:
    return _PAGE.format(static=_assets.prefix, vendor=VENDOR_PREFIX, openapi=openapi_url)


@router.get("/api/docs")
async def api_docs(request: Request) -> Response:
    """The page only; Swagger UI then fetches the app's OpenAPI document (same origin)."""
    return Response(
        page_html(request.app.openapi_url),
        media_type="text/html; charset=utf-8",
        headers=security_headers(request),
    )


@cache
def _vendored(name: str) -> Asset:
    path = VENDOR_DIR / name
    body = path.read_bytes()
    packed = gzip.compress(body, 9, mtime=0)
    return Asset(
        body=body,
        gzipped=packed if len(packed) < len(body) else None,
        content_type=CONTENT_TYPES[path.suffix],
        etag=f'"{hashlib.sha256(body).hexdigest()[:32]}"',
    )


@router.get("/vendor/swagger-ui/{version}/{name}")
async def vendored_asset(request: Request, version: str, name: str) -> Response:
    if version != SWAGGER_UI_VERSION or name not in SERVED:
        return Response(status_code=404, headers={"X-Content-Type-Options": "nosniff"})
    asset = await asyncio.to_thread(_vendored, name)
    return asset_response(request, asset, f"public, max-age={YEAR_SECONDS}, immutable")
