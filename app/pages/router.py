"""The HTML pages and their static assets, served by the API's own process.

Pages are plain HTML that load JavaScript modules; nothing is rendered per request except the
asset prefix. Assets live under `/static/{version}/…`, where the version is a digest of every
asset, so they can be cached for a year: a new release changes every asset URL at once, and
relative module imports stay inside one version.

Every page is sent with a strict Content-Security-Policy (no inline script or style, nothing
from another origin) and `Referrer-Policy: no-referrer`: the patient's visit token is in the
page's URL and must never travel to anyone in a Referer header.
"""

from __future__ import annotations

import gzip
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

router = APIRouter(include_in_schema=False)

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
TEMPLATE_DIR = HERE / "templates"

CONTENT_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".webmanifest": "application/manifest+json",
}
# Assets worth compressing (text); images are compressed already or tiny.
COMPRESSIBLE = {".js", ".css", ".svg", ".webmanifest"}
YEAR_SECONDS = 365 * 24 * 3600
# A Host header we are willing to echo into the CSP: a name or address with an optional port.
_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")

# The camera and microphone, and the screen (the clinician shares it), only for our own pages;
# nothing else a page could ask for.
PERMISSIONS_POLICY = (
    "camera=(self), microphone=(self), display-capture=(self), geolocation=(), payment=(), "
    "usb=(), serial=()"
)


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    gzipped: bytes | None
    content_type: str
    etag: str


class Assets:
    """Every static file, read once at start-up, with its digest and a gzipped copy."""

    def __init__(self, root: Path = STATIC_DIR) -> None:
        self.files: dict[str, Asset] = {}
        digest = hashlib.sha256()
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            suffix = path.suffix.lower()
            if suffix not in CONTENT_TYPES:
                continue
            name = path.relative_to(root).as_posix()
            body = path.read_bytes()
            file_digest = hashlib.sha256(body).hexdigest()
            digest.update(name.encode() + b"\0" + file_digest.encode())
            packed = gzip.compress(body, 9, mtime=0) if suffix in COMPRESSIBLE else None
            self.files[name] = Asset(
                body=body,
                gzipped=packed if packed is not None and len(packed) < len(body) else None,
                content_type=CONTENT_TYPES[suffix],
                etag=f'"{file_digest[:32]}"',
            )
        self.version = digest.hexdigest()[:16]

    @property
    def prefix(self) -> str:
        return f"/static/{self.version}"


class Templates:
    """The pages' HTML with the asset prefix filled in."""

    def __init__(self, assets: Assets, root: Path = TEMPLATE_DIR) -> None:
        self.pages = {
            path.stem: path.read_text(encoding="utf-8").replace("{{static}}", assets.prefix)
            for path in root.glob("*.html")
        }


_assets = Assets()
_templates = Templates(_assets)


def content_security_policy(host: str | None) -> str:
    sockets = f" ws://{host} wss://{host}" if host and _HOST.match(host) else ""
    return "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data: blob:",
            "media-src 'self' blob:",
            "font-src 'self'",
            f"connect-src 'self'{sockets}",
            "manifest-src 'self'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


def security_headers(request: Request) -> dict[str, str]:
    return {
        "Content-Security-Policy": content_security_policy(request.headers.get("host")),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
        "Permissions-Policy": PERMISSIONS_POLICY,
        # The visit page's URL holds the token: keep the page out of shared caches and history
        # snapshots alike.
        "Cache-Control": "no-store",
    }


def _page(request: Request, name: str) -> Response:
    return Response(
        _templates.pages[name],
        media_type="text/html; charset=utf-8",
        headers=security_headers(request),
    )


@router.get("/")
async def home() -> RedirectResponse:
    return RedirectResponse("/login", status_code=303)


@router.get("/login")
async def login_page(request: Request) -> Response:
    return _page(request, "login")


@router.get("/reset-password")
async def reset_password_page(request: Request) -> Response:
    """Setting a new password with an admin's link (the token is in the URL's fragment)."""
    return _page(request, "reset")


@router.get("/clinic")
async def clinic_page(request: Request) -> Response:
    return _page(request, "clinic")


@router.get("/schedule")
async def schedule_page(request: Request) -> Response:
    return _page(request, "schedule")


@router.get("/admin")
async def admin_page(request: Request) -> Response:
    """For administrators; the page's script says so to anyone else (the API enforces it)."""
    return _page(request, "admin")


@router.get("/visit/{token}")
async def visit_page(request: Request, token: str) -> Response:
    """The page only; the visit itself is looked up by the page's own API calls."""
    return _page(request, "visit")


@router.get("/favicon.ico")
async def favicon() -> RedirectResponse:
    return RedirectResponse(f"{_assets.prefix}/img/icon.svg", status_code=301)


@router.get("/static/{version}/{path:path}")
async def static_asset(request: Request, version: str, path: str) -> Response:
    asset = _assets.files.get(path)
    if asset is None:
        return Response(status_code=404, headers={"X-Content-Type-Options": "nosniff"})
    # An older page asking for an older version gets today's file, but must not keep it.
    cache = (
        f"public, max-age={YEAR_SECONDS}, immutable" if version == _assets.version else "no-cache"
    )
    return asset_response(request, asset, cache)


def asset_response(request: Request, asset: Asset, cache: str) -> Response:
    """A static file with its caching headers: 304 for its ETag, gzipped where accepted."""
    headers = {
        "Cache-Control": cache,
        "ETag": asset.etag,
        "X-Content-Type-Options": "nosniff",
        "Cross-Origin-Resource-Policy": "same-origin",
        "Vary": "Accept-Encoding",
    }
    if request.headers.get("if-none-match") == asset.etag:
        return Response(status_code=304, headers=headers)
    body = asset.body
    if asset.gzipped is not None and "gzip" in request.headers.get("accept-encoding", ""):
        body = asset.gzipped
        headers["Content-Encoding"] = "gzip"
    return Response(body, media_type=asset.content_type, headers=headers)
