"""/api/docs: Swagger UI served by the service itself, under the pages' strict CSP; nothing is
loaded from another origin, so the reference works offline (tests/e2e/test_api_docs.py renders
it in Chromium with every other origin refused)."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from app.pages.apidocs import SWAGGER_UI_VERSION, VENDOR_DIR
from tests.test_pages import links


@pytest.fixture
def database_url(sqlite_url: str) -> str:
    """The page touches no database: one run is enough."""
    return sqlite_url


class TestDocsPage:
    async def test_strict_policy_and_only_same_origin_assets(
        self, client: httpx.AsyncClient
    ) -> None:
        response = await client.get("/api/docs")
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/html; charset=utf-8"
        policy = response.headers["content-security-policy"]
        assert "default-src 'none'" in policy
        assert "script-src 'self';" in policy
        assert "style-src 'self';" in policy
        assert "unsafe-inline" not in policy
        assert "unsafe-eval" not in policy
        assert "frame-ancestors 'none'" in policy
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["referrer-policy"] == "no-referrer"
        page = links(response.text)
        assert page.inline_scripts == 0
        assert page.inline_styles == 0
        for url in page.urls:
            assert url.startswith("/"), url
            assert not url.startswith("//"), url
        assert not re.search(r"https?:|//cdn", response.text)
        assert f"/vendor/swagger-ui/{SWAGGER_UI_VERSION}/swagger-ui-bundle.js" in page.urls
        assert f"/vendor/swagger-ui/{SWAGGER_UI_VERSION}/swagger-ui.css" in page.urls

    async def test_every_asset_it_names_loads_and_the_document_it_shows(
        self, client: httpx.AsyncClient
    ) -> None:
        html = (await client.get("/api/docs")).text
        types = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
        for url in links(html).urls:
            response = await client.get(url, headers={"accept-encoding": "gzip"})
            assert response.status_code == 200, url
            assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
            assert response.headers["x-content-type-options"] == "nosniff"
            suffix = url[url.rfind(".") :]
            if suffix in types:
                assert response.headers["content-type"] == types[suffix], url
            if url.endswith(".css"):
                assert not re.search(r"url\(\s*['\"]?(https?:)?//", response.text), url
        document = re.search(r'data-openapi="([^"]+)"', html)
        assert document is not None
        served = await client.get(document.group(1))
        assert served.status_code == 200
        assert served.json()["info"]["title"] == "Televisit"

    async def test_only_the_two_files_of_this_version_are_served(
        self, client: httpx.AsyncClient
    ) -> None:
        here = f"/vendor/swagger-ui/{SWAGGER_UI_VERSION}"
        bundle = await client.get(f"{here}/swagger-ui-bundle.js")
        assert bundle.status_code == 200
        again = await client.get(
            f"{here}/swagger-ui-bundle.js", headers={"if-none-match": bundle.headers["etag"]}
        )
        assert again.status_code == 304
        for path in (
            f"{here}/LICENSE",
            f"{here}/package.json",
            f"{here}/../../../config.py",
            "/vendor/swagger-ui/0.0.1/swagger-ui.css",
        ):
            assert (await client.get(path)).status_code == 404, path


class TestVendoredCopy:
    def test_version_and_licence_are_kept_beside_it(self) -> None:
        package = json.loads((VENDOR_DIR / "package.json").read_text(encoding="utf-8"))
        assert package["name"] == "swagger-ui-dist"
        assert package["license"] == "Apache-2.0"
        assert package["version"] == SWAGGER_UI_VERSION
        assert "Apache License" in (VENDOR_DIR / "LICENSE").read_text(encoding="utf-8")
        assert (VENDOR_DIR / "NOTICE").is_file()
        assert (VENDOR_DIR / "swagger-ui-bundle.js.LICENSE.txt").is_file()
        note = (VENDOR_DIR / "README.md").read_text(encoding="utf-8")
        assert f"swagger-ui-dist@{SWAGGER_UI_VERSION}" in note
