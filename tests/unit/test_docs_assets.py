"""The ``/docs`` assets: a fixed list of names, read from fastapi-offline without importing it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from aimesh.rest import docs_asset, swagger_page


@pytest.mark.parametrize(
    "name",
    ["", ".", "..", "../pyproject.toml", "redoc.standalone.js", "../core.py", "static/favicon.png"],
)
def test_a_name_off_the_list_is_none(name: str) -> None:
    assert docs_asset(name) is None


def test_the_page_names_each_asset_with_a_digest_of_its_content() -> None:
    page = swagger_page("t").decode()
    for name in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"):
        asset = docs_asset(name)
        assert asset is not None and len(asset.body) > 1000
        assert f'"/docs/assets/{name}?v={asset.digest}"' in page


def test_values_cannot_close_the_script_element() -> None:
    page = swagger_page("<b>", "/x</script><script>alert(1)//").decode()
    assert "<title>&lt;b&gt;</title>" in page
    assert page.count("</script>") == 2


def test_serving_the_assets_does_not_import_fastapi_offline() -> None:
    code = (
        "import sys; from aimesh.rest import docs_asset, swagger_page; swagger_page('t'); "
        "assert docs_asset('swagger-ui.css') is not None; "
        "assert 'fastapi_offline' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
