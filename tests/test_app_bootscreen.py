"""The boot screen (``app/bootscreen.py``) on Streamlit's own page, behind the same gzip
middleware Streamlit uses, called as ASGI (no server, no browser; the browser test checks
that it shows first and goes once the page draws)."""

from __future__ import annotations

import asyncio
import gzip
import sys
from pathlib import Path

import streamlit
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "app"))
from bootscreen import BOOT_ID, ROOT, SCREEN, BootScreen  # noqa: E402

PAGE = (Path(streamlit.__file__).parent / "static" / "index.html").read_bytes()
DATA = {"values": list(range(2000))}  # big enough for gzip


def _app() -> Starlette:
    async def page(_request):  # noqa: ANN001, ANN202
        return HTMLResponse(PAGE)

    async def data(_request):  # noqa: ANN001, ANN202
        return JSONResponse(DATA)

    return Starlette(
        routes=[Route("/", page, methods=["GET", "POST"]), Route("/data", data)],
        middleware=[Middleware(BootScreen), Middleware(GZipMiddleware, minimum_size=500)],
    )


def _call(path: str, accept: str, method: str = "GET") -> tuple[dict[bytes, bytes], bytes]:
    """One request -> (response headers, body); a header sent twice fails."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
        "headers": [(b"host", b"x"), (b"accept", accept.encode()),
                    (b"accept-encoding", b"gzip, deflate")],
    }  # fmt: skip
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(_app()(scope, receive, send))
    headers = dict(sent[0]["headers"])
    assert len(headers) == len(sent[0]["headers"]), sent[0]["headers"]
    return headers, b"".join(m.get("body", b"") for m in sent[1:])


def test_a_page_load_gets_the_boot_screen_beside_an_empty_root() -> None:
    headers, body = _call("/", "text/html,application/xhtml+xml,*/*;q=0.8")
    assert b"content-encoding" not in headers  # not gzipped: it could be rewritten
    assert int(headers[b"content-length"]) == len(body)
    assert body.count(f'id="{BOOT_ID}"'.encode()) == 1
    assert ROOT in body  # React mounts into an empty root, as before
    assert body.index(ROOT) < body.index(BOOT_ID.encode())
    assert (
        body.replace(SCREEN[len(ROOT) :], b"", 1) == PAGE
    )  # nothing else of Streamlit's page changed


def test_everything_else_passes_untouched() -> None:
    headers, body = _call("/data", "*/*")  # an API call: still gzipped, not rewritten
    assert headers[b"content-encoding"] == b"gzip"
    assert gzip.decompress(body) == JSONResponse(DATA).body
    _, body = _call("/", "*/*", method="POST")  # HTML that is not a page load
    assert BOOT_ID.encode() not in gzip.decompress(body)
