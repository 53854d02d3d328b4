"""`discourse-rl serve`: a local web page and JSON API over one loaded `Labeller`.

* `GET /` the page (static files shipped in the package; nothing is fetched from elsewhere).
* `POST /api/label` `{"text": "..."}` -> `{"stage", "elements": [...], "summary": {...}}`, the
  elements in the same schema as `predict --format jsonl`.
* `GET /api/health`, `GET /api/info` (stages, held-out F1 per type, limits, licence).
* `POST /api/docx` (a Word file's bytes) -> `{"text"}`: the page's .docx upload.

Safe by default: binds 127.0.0.1; essays over `MAX_ESSAY_BYTES` get 413, empty or non-UTF-8
input 400, anything but JSON 415; errors reach the client as one line of JSON, never a
traceback; essay text is never logged (uvicorn's access log has the method, path and status
only). Requests are labelled one at a time: the Labeller holds a lock (torch's thread count is
process-wide, so parallel essays would only share the same cores) and one worker thread runs
them, in arrival order; the page and the health check stay responsive meanwhile.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import traceback
import xml.etree.ElementTree as ET
import zipfile
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any

# Module level: FastAPI reads the handlers' annotations to know what to inject.
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from discourse_rl import __version__
from discourse_rl.app.feedback import COLOURS, GUESS_BELOW, RELIABLE_FROM, UNSURE_BELOW, summarise
from discourse_rl.app.labeller import Labeller

MAX_ESSAY_BYTES = 200_000
"""Largest essay (UTF-8 bytes) the API labels: about 30,000 words, far above any real essay."""
# JSON escapes can make a body up to six times its text (\\uXXXX per character).
_MAX_BODY_BYTES = 6 * MAX_ESSAY_BYTES + 4096
LICENCE = (
    "Models trained on the PERSUADE corpus (Scott Crossley et al., The Learning Agency Lab, "
    "Georgia State University) carry its licence, CC BY-NC-SA 4.0: non-commercial use, "
    "with attribution, shared alike."
)
log = logging.getLogger("discourse_rl.app.serve")


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def static_dir() -> Path:
    return Path(str(resources.files("discourse_rl") / "app" / "static"))


def info(labeller: Labeller) -> dict[str, Any]:

    return {
        "version": __version__,
        "stage": labeller.stage,
        "stages": list(labeller.stages),
        "scores": {k: v.to_json() for k, v in labeller.scores.items()},
        "colours": COLOURS,
        "thresholds": {
            "unsure_below": UNSURE_BELOW,
            "guess_below": GUESS_BELOW,
            "reliable_from": RELIABLE_FROM,
        },
        "max_essay_bytes": MAX_ESSAY_BYTES,
        "licence": LICENCE,
    }


def parse_essay(content_type: str | None, body: bytes) -> str:
    """The essay text of a /api/label request body, or an ApiError saying what is wrong."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media != "application/json":
        raise ApiError(415, 'send JSON: Content-Type: application/json, body {"text": "..."}')
    if len(body) > _MAX_BODY_BYTES:
        raise ApiError(413, f"essay too large: the limit is {MAX_ESSAY_BYTES:,} bytes of text")
    try:
        payload = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise ApiError(400, "the request body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"the request body is not valid JSON ({exc.msg})") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("text"), str):
        raise ApiError(400, 'expected a JSON object with a string field "text"')
    text: str = payload["text"]
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates from \\udXXX escapes
        raise ApiError(400, "the essay is not valid Unicode text") from None
    if size > MAX_ESSAY_BYTES:
        raise ApiError(
            413, f"essay too large: {size:,} bytes; the limit is {MAX_ESSAY_BYTES:,} bytes"
        )
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text.split():
        raise ApiError(400, "the essay is empty (no words)")
    return text


DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_MAX_DOCX_XML = 20_000_000  # uncompressed document.xml: a bound against zip bombs


def docx_text(data: bytes) -> str:
    """The text of a .docx (Word) file: its paragraphs, separated by blank lines."""

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            info = zf.getinfo("word/document.xml")
            if info.file_size > _MAX_DOCX_XML:
                raise ApiError(413, "the .docx is too large")
            root = ET.fromstring(zf.read(info))
    except (zipfile.BadZipFile, KeyError, ET.ParseError):
        raise ApiError(400, "not a .docx file (Word 2007 or later)") from None
    paragraphs = []
    for p in root.iter(f"{_W}p"):
        parts = []
        for node in p.iter():
            if node.tag == f"{_W}t" and node.text:
                parts.append(node.text)
            elif node.tag == f"{_W}tab":
                parts.append("\t")
            elif node.tag in (f"{_W}br", f"{_W}cr"):
                parts.append("\n")
        paragraphs.append("".join(parts))
    return "\n\n".join(p for p in paragraphs if p.strip())


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > _MAX_BODY_BYTES:
        raise ApiError(413, f"essay too large: the limit is {MAX_ESSAY_BYTES:,} bytes of text")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_BODY_BYTES:
            raise ApiError(413, f"essay too large: the limit is {MAX_ESSAY_BYTES:,} bytes")
    return bytes(body)


def create_app(labeller: Labeller) -> FastAPI:
    """The ASGI app serving one loaded labeller."""

    app = FastAPI(title="discourse-rl", docs_url=None, redoc_url=None, openapi_url=None)
    # One worker thread labels every essay: requests queue for it (the Labeller would serialise
    # them anyway), and its memory is reused instead of spread over a pool's threads.
    worker = ThreadPoolExecutor(1, thread_name_prefix="labeller")
    about = info(labeller)
    per_type = about["scores"].get(labeller.stage, {}).get("per_type", {})

    async def in_worker(fn: Any, arg: Any) -> Any:
        """`fn(arg)` on the worker thread. A failure is logged by type and frames only (its
        message could quote the essay) and never reaches the server's own traceback logging."""
        try:
            return await asyncio.get_running_loop().run_in_executor(worker, fn, arg)
        except ApiError:
            raise
        except Exception as exc:
            frames = "".join(traceback.format_tb(exc.__traceback__))
            log.error("%s failed: %s\n%s", fn.__name__, type(exc).__name__, frames)
            raise ApiError(500, "internal error; see the server's log") from None

    @app.middleware("http")
    async def headers(request: Request, call_next: Any) -> Any:
        response = await call_next(request)
        # Everything the page needs comes from this server.
        response.headers["Content-Security-Policy"] = "default-src 'self'"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        # The type only: a message could quote the essay.
        log.error("%s %s failed: %s", request.method, request.url.path, type(exc).__name__)
        return JSONResponse({"error": "internal error; see the server's log"}, status_code=500)

    @app.get("/")
    async def index() -> FileResponse:
        return FileResponse(static_dir() / "index.html")

    @app.get("/api/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "stage": labeller.stage}

    @app.get("/api/info")
    async def get_info() -> dict[str, Any]:
        return about

    @app.post("/api/label")
    async def label(request: Request) -> dict[str, Any]:
        text = parse_essay(request.headers.get("content-type"), await _read_body(request))
        elements = await in_worker(labeller.label, text)
        return {
            "stage": labeller.stage,
            "n_words": len(text.split()),
            "elements": [el.to_json() for el in elements],
            "summary": summarise(elements, per_type).to_json(),
        }

    @app.post("/api/docx")
    async def docx(request: Request) -> dict[str, str]:
        """The text of an uploaded .docx, for the page to show and label (nothing is kept)."""
        media = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
        if media != DOCX:
            raise ApiError(415, f"send the .docx file itself: Content-Type: {DOCX}")
        body = await _read_body(request)
        text = await in_worker(docx_text, body)
        if len(text.encode("utf-8")) > MAX_ESSAY_BYTES:
            raise ApiError(413, f"essay too large: the limit is {MAX_ESSAY_BYTES:,} bytes of text")
        if not text.split():
            raise ApiError(400, "the .docx holds no text")
        return {"text": text}

    app.mount("/static", StaticFiles(directory=static_dir()), name="static")
    return app


def serve(model: str | Path, stage: str | None, host: str, port: int) -> None:
    """Load the model (failing at once if it is missing or broken), then serve until Ctrl-C."""
    # uvicorn: only `serve` starts a server
    import uvicorn

    labeller = Labeller.load(model, stage)
    app = create_app(labeller)
    print(f"discourse-rl: serving {labeller.run} (stage {labeller.stage}) on http://{host}:{port}")
    print(f"discourse-rl: {LICENCE}")
    uvicorn.run(app, host=host, port=port, log_level="info")
