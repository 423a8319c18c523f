"""The ASGI app of ``nscl serve``: the page (``static/``) and the JSON API it uses.

API (every error is ``{"error": "one line"}`` with a 4xx status; 5xx only for bugs):

- ``GET /api/info`` -> ``{"checkpoint", "images", "detector", "uploads": bool, "limits": {...}, "examples"}``
- ``GET /api/images?page=0&per_page=12`` -> ``{"total", "page", "pages", "per_page", "items": [{"index",
  "filename", "objects", "url"}]}``
- ``GET /api/images/{index}`` -> ``{"index", "filename", "url", "width", "height", "objects": [{"index", "box",
  "attributes"}], "questions": [{"question", "answer"}]}`` (the split's ground truth)
- ``GET /api/images/{index}/image`` -> the image file
- ``POST /api/uploads`` (body: the PNG/JPEG bytes, ``Content-Type: image/png|image/jpeg``, at most 10 MB) ->
  ``{"id", "url", "width", "height", "objects": [{"index", "box"}]}`` (boxes from the detector)
- ``GET /api/uploads/{id}/image`` -> the upload, re-encoded as PNG
- ``POST /api/ask`` (body: ``{"question": str, "image": int}`` or ``{"question": str, "upload": id}``) ->
  ``{"question", "image", "refusal": str | null, "result": AskResult.to_json() | null, "expected", "seconds"}``

Inference runs in a worker thread, one question at a time (the session's lock); at most ``Limits.waiting``
requests wait for it, later ones get 503.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import NSCLError
from .session import ServeError, Session

STATIC = Path(__file__).resolve().parent / "static"
JSON_BODY_BYTES = 16 * 1024  # an /api/ask body
PER_PAGE_MAX = 60
UPLOAD_ID = re.compile(r"[0-9a-f]{16}")
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@dataclass
class Gate:
    """Bounded waiting for the one inference slot: ``waiting`` requests at most, later ones are refused."""

    waiting: int
    queued: int = 0
    slot: anyio.Lock = field(default_factory=anyio.Lock)

    async def run(self, fn: Any, *args: Any) -> Any:
        if self.queued >= self.waiting + 1:
            raise ServeError(503, "the server is busy answering other questions; try again in a moment")
        self.queued += 1
        try:
            async with self.slot:
                return await run_in_threadpool(fn, *args)
        finally:
            self.queued -= 1


# --------------------------------------------------------------------------------------------- requests
def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not re.fullmatch(r"\d{1,9}", raw) or not low <= int(raw) <= high:
        raise ServeError(400, f"query parameter {name!r} must be an integer from {low} to {high}")
    return int(raw)


def _path_index(request: Request) -> int:
    raw = request.path_params["index"]
    if not re.fullmatch(r"\d{1,9}", raw):
        raise ServeError(404, f"no image with index {raw[:20]!r} in this split")
    return int(raw)


def _upload_id(request: Request) -> str:
    raw = request.path_params["uid"]
    if not UPLOAD_ID.fullmatch(raw):
        raise ServeError(404, "no such upload")
    return raw


async def _read_body(request: Request, limit: int, what: str) -> bytes:
    """The body, refused with 413 as soon as it is known to pass ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ServeError(
            413, f"the {what} is {int(declared) / 2**20:.1f} MB; the limit is {limit / 2**20:.0f} MB"
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ServeError(413, f"the {what} is larger than the limit of {limit / 2**20:.0f} MB")
        chunks.append(chunk)
    return b"".join(chunks)


def _ask_args(body: bytes, max_chars: int) -> tuple[str, int | None, str | None]:
    """(question, dataset index or None, upload id or None) from an /api/ask body."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ServeError(400, "the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ServeError(400, 'expected a JSON object: {"question": "...", "image": INDEX}')
    unknown = sorted(set(data) - {"question", "image", "upload"})
    if unknown:
        raise ServeError(400, f"unknown field {unknown[0]!r} (fields: question, image, upload)")
    q = data.get("question")
    if not isinstance(q, str) or not q.strip():
        raise ServeError(400, "'question' must be a non-empty string")
    if len(q) > max_chars:
        raise ServeError(400, f"the question is {len(q)} characters long; the limit is {max_chars}")
    image, upload = data.get("image"), data.get("upload")
    if (image is None) == (upload is None):
        raise ServeError(400, "give exactly one of 'image' (a dataset index) or 'upload' (an upload id)")
    if image is not None and (not isinstance(image, int) or isinstance(image, bool) or image < 0):
        raise ServeError(400, "'image' must be a dataset image index (a non-negative integer)")
    if upload is not None and (not isinstance(upload, str) or not UPLOAD_ID.fullmatch(upload)):
        raise ServeError(400, "'upload' must be an id returned by POST /api/uploads")
    return q.strip(), image, upload


# --------------------------------------------------------------------------------------------- app
def create_app(session: Session) -> Starlette:
    """The app serving ``session`` (which it shares read-only between requests; see :class:`Session`)."""
    gate = Gate(session.limits.waiting)

    async def index(_: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def info(_: Request) -> Response:
        return JSONResponse(session.info())

    async def images(request: Request) -> Response:
        page = _int_param(request, "page", 0, 0, 10**9)
        per_page = _int_param(request, "per_page", 12, 1, PER_PAGE_MAX)
        return JSONResponse(session.gallery(page, per_page))

    async def image_details(request: Request) -> Response:
        return JSONResponse(session.image_details(_path_index(request)))

    async def image_file(request: Request) -> Response:
        return FileResponse(session.image_file(_path_index(request)))

    async def upload_file(request: Request) -> Response:
        return FileResponse(session.upload_file(_upload_id(request)), media_type="image/png")

    async def upload(request: Request) -> Response:
        session.require_detector()  # before reading the body
        kind = request.headers.get("content-type", "")
        data = await _read_body(request, session.limits.upload_bytes, "upload")
        return JSONResponse(await gate.run(session.add_upload, data, kind), status_code=201)

    async def ask(request: Request) -> Response:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json":
            raise ServeError(415, "send the question as JSON (Content-Type: application/json)")
        body = await _read_body(request, JSON_BODY_BYTES, "request body")
        question, index, upload_id = _ask_args(body, session.limits.question_chars)
        return JSONResponse(await gate.run(session.ask, question, index, upload_id))

    routes = [
        Route("/", index),
        Route("/api/info", info),
        Route("/api/images", images),
        Route("/api/images/{index}", image_details),
        Route("/api/images/{index}/image", image_file),
        Route("/api/uploads", upload, methods=["POST"]),
        Route("/api/uploads/{uid}/image", upload_file),
        Route("/api/ask", ask, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(SecurityHeaders)],
        exception_handlers={
            ServeError: _serve_error,
            NSCLError: _nscl_error,
            HTTPException: _http_error,
            500: _internal_error,
        },
    )
    app.state.session = session
    return app


@dataclass
class SecurityHeaders:
    """ASGI middleware: the page may load only its own scripts, styles and images (SECURITY_HEADERS)."""

    app: Any

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [
                    (k.lower().encode(), v.encode())
                    for k, v in SECURITY_HEADERS.items()
                    if k.lower().encode() not in present
                ]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _serve_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServeError)
    return JSONResponse({"error": str(exc)}, status_code=exc.status)


async def _nscl_error(_: Request, exc: Exception) -> Response:
    """A data or model error met while answering (a missing image file, a bad box): the request's fault or
    the split's, never a crash of the server."""
    return JSONResponse({"error": str(exc)}, status_code=422)


async def _internal_error(_: Request, exc: Exception) -> Response:
    return JSONResponse(
        {"error": f"internal error ({type(exc).__name__}); see the server's log"}, status_code=500
    )


async def _http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    messages = {404: "no such page or API route", 405: "method not allowed on this route"}
    return JSONResponse(
        {"error": messages.get(exc.status_code, str(exc.detail))},
        status_code=exc.status_code,
        headers=getattr(exc, "headers", None),
    )
