"""The web page at /: a summary in, a streamed abstract out, its unsupported facts marked. Its three files are in
writemypaper/static/ (package data) and are read once, when the router is made: no route turns a request's path
into a file path.

    writemypaper serve --model runs/demo        # then open http://127.0.0.1:8000/
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import Response

STATIC = Path(__file__).resolve().parent.parent / "static"
PAGE_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}
# Everything the page loads comes from this server; the browser enforces it. Only Colab may frame it: its
# serve_kernel_port_as_iframe shows the page in an output frame on *.googleusercontent.com inside
# colab.research.google.com, and frame-ancestors must allow every ancestor.
FRAME_ANCESTORS = "'self' https://colab.research.google.com https://*.googleusercontent.com"
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
            f"font-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors {FRAME_ANCESTORS}")
# The page's word for each kind of fact the fact check emits (writemypaper.factcheck.Fact.kind); /health sends
# them, so the page holds no list of its own. tests/test_serve_app.py checks that no kind lacks one.
FACT_LABELS = {"number": "숫자", "year": "연도", "century": "세기", "quoted": "인용구", "latin": "영문 용어",
               "hanja": "한자어"}
# Why a marked fact is unsupported (factcheck.REASONS), in the page's words.
FACT_REASONS = {"absent": "요약에 없는", "repeated": "요약보다 자주 쓴", "noun": "요약과 다른 대상에 붙은"}
HEADERS = {"Content-Security-Policy": PAGE_CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}


def page_router() -> APIRouter:
    """GET routes for the page and its assets, with their bytes read now."""
    router = APIRouter(include_in_schema=False)
    for route, (name, mime) in PAGE_FILES.items():
        body = (STATIC / name).read_bytes()
        router.add_api_route(route, _serve(body, mime), methods=["GET"])
    return router


def _serve(body: bytes, mime: str):
    async def page_file():
        return Response(body, media_type=mime, headers=HEADERS)

    return page_file
