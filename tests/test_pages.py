"""The pages over HTTP: security headers, same-origin assets only, caching, the test hooks."""

from __future__ import annotations

import gzip
import logging
import re
from html.parser import HTMLParser

import httpx
import pytest

from app.pages.router import STATIC_DIR, TEMPLATE_DIR

PAGES = [
    "/login",
    "/clinic",
    "/schedule",
    "/admin",
    "/reset-password",
    "/visit/aVisitTokenThatIsLongEnough0123456789",
]
CONTRACT_HOOKS = [
    "login-email",
    "login-password",
    "login-submit",
    "consent-accept",
    "consent-decline",
    "join",
    "local-video",
    "remote-video",
    "queue-item",
    "admit",
    "end-call",
    "leave",
    "audio-only",  # v1.1: media on real networks
    "chat-input",  # guests in a visit: chat
    "chat-send",
    "chat-message",
    "invite-participant",  # guests in a visit (issue 14)
    "participant-tile",
    "share-screen",
]


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts = 0
        self.inline_styles = 0
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for name in ("src", "href"):
            if values.get(name):
                self.urls.append(str(values[name]))
        if "style" in values:
            self.inline_styles += 1
        if tag == "style":
            self.inline_styles += 1
        self._in_script = tag == "script"
        if tag == "script" and not values.get("src"):
            self.inline_scripts += 1


def links(html: str) -> _Links:
    parser = _Links()
    parser.feed(html)
    return parser


class TestPageHeaders:
    @pytest.mark.parametrize("path", PAGES)
    async def test_strict_headers_on_every_page(self, client: httpx.AsyncClient, path: str) -> None:
        response = await client.get(path)
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/html; charset=utf-8"
        policy = response.headers["content-security-policy"]
        assert "default-src 'none'" in policy
        assert "script-src 'self'" in policy
        assert "unsafe-inline" not in policy
        assert "unsafe-eval" not in policy
        assert "connect-src 'self' ws://testserver wss://testserver" in policy
        assert "media-src 'self' blob:" in policy
        assert "frame-ancestors 'none'" in policy
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["cache-control"] == "no-store"
        assert "camera=(self)" in response.headers["permissions-policy"]
        assert "display-capture=(self)" in response.headers["permissions-policy"]

    async def test_a_hostile_host_header_is_not_echoed_into_the_policy(
        self, client: httpx.AsyncClient
    ) -> None:
        response = await client.get("/login", headers={"Host": "evil.example; script-src *"})
        policy = response.headers["content-security-policy"]
        assert "evil" not in policy
        assert "connect-src 'self';" in policy

    async def test_the_root_goes_to_sign_in(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/")
        assert response.status_code == 303
        assert response.headers["location"] == "/login"


class TestNothingFromElsewhere:
    @pytest.mark.parametrize("path", PAGES)
    async def test_pages_load_only_their_own_assets_and_no_inline_code(
        self, client: httpx.AsyncClient, path: str
    ) -> None:
        page = links((await client.get(path)).text)
        assert page.urls
        for url in page.urls:
            same_page = url.startswith("#")
            assert same_page or (url.startswith("/") and not url.startswith("//")), url
        assert page.inline_scripts == 0
        assert page.inline_styles == 0

    def test_no_asset_names_another_origin(self) -> None:
        """A visit token must never reach a third party: no script, style or image refers out."""
        for path in STATIC_DIR.rglob("*"):
            if path.suffix in {".js", ".css"}:
                text = path.read_text(encoding="utf-8")
                # RTP header extension names (RFC 8285 URIs in SDP, never fetched) are not origins.
                text = text.replace("http://www.webrtc.org/experiments/rtp-hdrext/", "")
                assert not re.search(r"https?://", text), path.name
                assert "innerHTML" not in text, path.name


class TestAssets:
    async def test_every_referenced_asset_is_served_for_a_year(
        self, client: httpx.AsyncClient
    ) -> None:
        seen: set[str] = set()
        for path in PAGES:
            seen.update(u for u in links((await client.get(path)).text).urls if "/static/" in u)
        assert any(u.endswith(".js") for u in seen)
        for url in seen:
            response = await client.get(url)
            assert response.status_code == 200, url
            assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
            assert response.headers["x-content-type-options"] == "nosniff"
        script = next(u for u in seen if u.endswith("visit.js"))
        assert (await client.get(script)).headers["content-type"].startswith("text/javascript")

    async def test_module_imports_resolve(self, client: httpx.AsyncClient) -> None:
        page = (await client.get("/login")).text
        prefix = re.search(r'"(/static/[0-9a-f]+)/', page)
        assert prefix is not None
        for path in (STATIC_DIR / "js").glob("*.js"):
            for name in re.findall(r'from "\./([a-z]+\.js)"', path.read_text(encoding="utf-8")):
                response = await client.get(f"{prefix.group(1)}/js/{name}")
                assert response.status_code == 200, f"{path.name} imports {name}"

    async def test_compressed_when_asked_and_revalidated_by_etag(
        self, client: httpx.AsyncClient
    ) -> None:
        page = (await client.get("/login")).text
        match = re.search(r'href="(/static/[^"]+app\.css)"', page)
        assert match is not None
        url = match.group(1)
        plain = await client.get(url, headers={"Accept-Encoding": "identity"})
        packed = await client.get(url, headers={"Accept-Encoding": "gzip"})
        assert packed.headers["content-encoding"] == "gzip"
        assert packed.content == plain.content  # httpx decodes it
        assert len(gzip.compress(plain.content)) < len(plain.content)
        again = await client.get(url, headers={"If-None-Match": plain.headers["etag"]})
        assert again.status_code == 304

    async def test_an_old_version_is_served_but_not_kept(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/static/0000000000000000/css/app.css")
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-cache"

    async def test_unknown_assets_are_404(self, client: httpx.AsyncClient) -> None:
        for path in ("/static/x/js/nope.js", "/static/x/../app/config.py", "/static/x/"):
            assert (await client.get(path)).status_code == 404


class TestHooksAndPrivacy:
    def test_every_contract_hook_is_on_a_page(self) -> None:
        sources = "".join(
            p.read_text(encoding="utf-8")
            for p in [*TEMPLATE_DIR.glob("*.html"), *(STATIC_DIR / "js").glob("*.js")]
        )
        for hook in CONTRACT_HOOKS:
            assert re.search(rf'data-testid"?[=:] ?"{hook}"', sources), hook

    async def test_the_visit_token_is_not_logged(
        self, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
    ) -> None:
        token = "Zk3TokenThatMustNeverBeLogged0123456789abc"
        with caplog.at_level(logging.INFO):
            assert (await client.get(f"/visit/{token}")).status_code == 200
        # The server's own records (the test's HTTP client logs its URLs, as a browser would not).
        served = [r for r in caplog.records if r.name.startswith("televisit")]
        assert any(r.__dict__.get("route") == "/visit/{token}" for r in served)
        for record in served:
            assert token not in record.getMessage()
            assert token not in str(record.__dict__.get("route", ""))
