"""`discourse-rl serve`: a web page and JSON API over one loaded `Labeller`.

* `GET /` the page (static files shipped in the package; nothing is fetched from elsewhere).
* `POST /api/label` `{"text"}` -> `{"schema_version", "stage", "n_words", "elements", "summary"}`,
  the elements in the same schema as `predict --format jsonl`.
* `POST /api/label-batch` `{"essays": [{"name", "text"}]}` (or `{"text", "separator"}`: pasted
  essays split by separator lines) -> one labelled essay per entry: the page's class set.
* `POST /api/summary` `{"elements"}` -> the summary of a teacher's corrected labels.
* `POST /api/docx` (a Word file) -> `{"text"}`; `POST /api/unpack` (a .zip of .txt and .docx
  files) -> `{"essays", "skipped"}`.
* `GET/POST /api/class-sets`, `GET/PUT/DELETE /api/class-sets/{id}`: class sets the teacher saved
  (one SQLite file on this machine, `store.py`), only when the teacher presses Save.
* `GET /api/health`, `GET /api/info` (stages, held-out scores per type, definitions, limits,
  licence, the privacy line), `GET /api/openapi.json` (every shape above, from `api.py`).

Safe by default: binds 127.0.0.1 and answers only requests whose Host header is a loopback name;
any other address needs `--allow-remote` and an access token on every API call
(`security.py`). Essays over `MAX_ESSAY_BYTES` get 413, .docx uploads over `MAX_DOCX_BYTES` 413
(each message names its own limit), empty or non-UTF-8 input 400, a damaged or encrypted .docx
400, anything but the expected media type 415; errors reach the client as one line of JSON,
never a traceback; essay text is never logged (uvicorn's access log has the method, path and
status only). One worker thread labels, in arrival order (the Labeller holds a lock: torch's
thread count is process-wide); at most `queue_limit` requests wait for it, the next gets 503 with
Retry-After. SIGTERM (or Ctrl-C) drains: requests in flight finish, new ones get 503, then the
process exits 0.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
import traceback
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

# Module level: FastAPI reads the handlers' annotations to know what to inject.
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException

from discourse_rl import __version__
from discourse_rl.app import api
from discourse_rl.app.batch import UnpackError, split_pasted, unpack_zip
from discourse_rl.app.docx import DOCX_MEDIA, DocxError, docx_text
from discourse_rl.app.feedback import (
    COLOURS,
    DEFINITIONS,
    GUESS_BELOW,
    RELIABLE_FROM,
    UNSURE_BELOW,
    summarise,
)
from discourse_rl.app.labeller import SCHEMA_VERSION, Element, Labeller
from discourse_rl.app.security import Access, Gate, Guard
from discourse_rl.app.store import ClassSetStore
from discourse_rl.core.common import DiscourseRLError

MAX_ESSAY_BYTES = 200_000
"""Largest essay (UTF-8 bytes of text) the API labels: about 30,000 words."""
MAX_DOCX_BYTES = 15_000_000
"""Largest .docx upload: a Word file with photos is far larger than its text."""
MAX_ZIP_BYTES = 50_000_000
"""Largest .zip upload (a class set's files)."""
MAX_BATCH_ESSAYS = 200
MAX_BATCH_BYTES = 4_000_000
"""Largest class set: essays per request, and their text's UTF-8 bytes together."""
QUEUE_LIMIT = 32
"""Requests that may wait for the labelling worker; the next one gets 503 with Retry-After."""
BATCH_CHUNK = 8
"""A class set is labelled this many essays per worker job, so single essays slot in between."""
DRAIN_SECONDS = 300.0
"""On SIGTERM, how long requests in flight may take before the server stops anyway."""
# JSON escapes can make a body up to six times its text (\\uXXXX per character).
_MAX_BODY_BYTES = 6 * MAX_ESSAY_BYTES + 4096
_MAX_BATCH_BODY = 6 * MAX_BATCH_BYTES + 65536
_MAX_SET_BODY = 2 * _MAX_BATCH_BODY
LICENCE = (
    "Models trained on the PERSUADE corpus (Scott Crossley et al., The Learning Agency Lab, "
    "Georgia State University) carry its licence, CC BY-NC-SA 4.0: non-commercial use, "
    "with attribution, shared alike."
)
log = logging.getLogger("discourse_rl.app.serve")
T = TypeVar("T", bound=BaseModel)
F = TypeVar("F", bound=Callable[..., Any])


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclass
class ServeOptions:
    """How a server is reached and what it may keep."""

    access: Access = field(default_factory=Access)
    store: ClassSetStore | None = None
    """Where Save puts class sets; None: saving is off."""
    queue_limit: int = QUEUE_LIMIT
    address: str = "http://127.0.0.1:8000"


def static_dir() -> Path:
    return Path(str(resources.files("discourse_rl") / "app" / "static"))


def privacy_line(options: ServeOptions) -> str:
    """What happens to an essay, true for the way this server is reached."""
    kept = (
        "a class set is kept there only when you press Save"
        if options.store is not None
        else "nothing is kept (saving is off)"
    )
    if options.access.remote:
        return (
            f"This page comes from a server on the network ({options.address}): the essays you "
            f"label are sent to that machine over plain http (not encrypted) and from there "
            f"nowhere else; {kept}."
        )
    kept = kept.replace("there", "on this computer")
    return (
        "This page comes from the program running on this computer: essays are labelled here "
        f"and sent nowhere else; {kept}."
    )


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def info(labeller: Labeller, options: ServeOptions | None = None) -> dict[str, Any]:
    options = options or ServeOptions()
    scores = {
        k: {
            "macro_f1": _finite(v.macro_f1),
            "per_type": {c: f for c, f in v.per_type.items() if math.isfinite(f)},
            "source": v.source,
            "recall": {c: r for c, r in v.recall.items() if math.isfinite(r)},
            "recall_source": v.recall_source,
        }
        for k, v in labeller.scores.items()
    }
    return {
        "version": __version__,
        "schema_version": SCHEMA_VERSION,
        "stage": labeller.stage,
        "stages": list(labeller.stages),
        "scores": scores,
        "colours": COLOURS,
        "definitions": DEFINITIONS,
        "thresholds": {
            "unsure_below": UNSURE_BELOW,
            "guess_below": GUESS_BELOW,
            "reliable_from": RELIABLE_FROM,
        },
        "limits": {
            "essay_bytes": MAX_ESSAY_BYTES,
            "docx_bytes": MAX_DOCX_BYTES,
            "zip_bytes": MAX_ZIP_BYTES,
            "batch_essays": MAX_BATCH_ESSAYS,
            "batch_bytes": MAX_BATCH_BYTES,
        },
        "max_essay_bytes": MAX_ESSAY_BYTES,
        "licence": LICENCE,
        "privacy": privacy_line(options),
        "token_required": options.access.token is not None,
        "store": options.store is not None,
    }


def _too_large(what: str, limit: int, size: int | None = None) -> ApiError:
    got = f"{size:,} bytes; " if size is not None else ""
    return ApiError(413, f"{what} too large: {got}the limit is {limit:,} bytes")


def _essay_text(text: str, name: str = "essay") -> str:
    """The text as labelled (a BOM dropped), or ApiError naming `name` and the essay limit."""
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates from \\udXXX escapes
        raise ApiError(400, f"{name}: not valid Unicode text") from None
    if size > MAX_ESSAY_BYTES:
        raise ApiError(
            413,
            f"{name} too large: {size:,} bytes of text; the limit for an essay is "
            f"{MAX_ESSAY_BYTES:,} bytes",
        )
    text = text.removeprefix("\ufeff")
    if not text.split():
        empty = f"{name}: empty (no words)" if name != "essay" else "the essay is empty (no words)"
        raise ApiError(400, empty)
    return text


def _media(content_type: str | None) -> str:
    """The media type of a Content-Type header, without its parameters, in lower case."""
    return (content_type or "").split(";")[0].strip().lower()


def _json_body(content_type: str | None, body: bytes, expected: str) -> Any:
    if _media(content_type) != "application/json":
        raise ApiError(415, f"send JSON: Content-Type: application/json, body {expected}")
    try:
        return json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise ApiError(400, "the request body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"the request body is not valid JSON ({exc.msg})") from None


def _validate(model: type[T], payload: Any) -> T:
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise ApiError(400, f"{where}: {first['msg']}") from None


def parse_essay(content_type: str | None, body: bytes) -> str:
    """The essay text of a /api/label request body, or an ApiError saying what is wrong."""
    payload = _json_body(content_type, body, '{"text": "..."}')
    if not isinstance(payload, dict) or not isinstance(payload.get("text"), str):
        raise ApiError(400, 'expected a JSON object with a string field "text"')
    return _essay_text(payload["text"])


async def _read_body(
    request: Request, limit: int, too_large: Callable[[int | None], ApiError]
) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large(int(declared))
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large(None)
    return bytes(body)


async def _json_request(
    request: Request, limit: int, too_large: Callable[[int | None], ApiError], expected: str
) -> Any:
    """The JSON value of a request body of at most `limit` bytes (`expected`: its shape, for
    the error that asks for JSON)."""
    body = await _read_body(request, limit, too_large)
    return _json_body(request.headers.get("content-type"), body, expected)


def _essay_body_too_large(size: int | None) -> ApiError:
    return ApiError(413, f"essay too large: the limit is {MAX_ESSAY_BYTES:,} bytes of text")


def _docx_too_large(size: int | None) -> ApiError:
    return ApiError(
        413,
        f"the .docx file is too large{f': {size:,} bytes' if size else ''}; the limit for a "
        f".docx upload is {MAX_DOCX_BYTES:,} bytes",
    )


def _zip_too_large(size: int | None) -> ApiError:
    return ApiError(
        413,
        f"the .zip file is too large{f': {size:,} bytes' if size else ''}; the limit for a .zip "
        f"upload is {MAX_ZIP_BYTES:,} bytes",
    )


def _batch_too_large(size: int | None) -> ApiError:
    return ApiError(
        413,
        f"class set too large: the limit is {MAX_BATCH_BYTES:,} bytes of text in "
        f"{MAX_BATCH_ESSAYS} essays",
    )


class LabelQueue:
    """The requests waiting for the one labelling worker, bounded (503 with Retry-After)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.waiting = 0
        self.job_seconds = 1.0
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="labeller")

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self.waiting >= self.limit:
            wait = max(1, min(300, math.ceil(self.waiting * self.job_seconds)))
            raise ApiError(
                503,
                f"the server is busy ({self.waiting} requests are waiting to be labelled): "
                f"try again in {wait} s",
                {"Retry-After": str(wait)},
            )
        self.waiting += 1
        try:
            yield
        finally:
            self.waiting -= 1

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` on the worker thread. A failure is logged by type and frames only (its
        message could quote the essay) and never reaches the server's own traceback logging."""
        t0 = time.perf_counter()
        try:
            return await asyncio.get_running_loop().run_in_executor(self.worker, fn, *args)
        except (ApiError, DocxError, UnpackError):
            raise
        except Exception as exc:
            frames = "".join(traceback.format_tb(exc.__traceback__))
            log.error("%s failed: %s\n%s", fn.__name__, type(exc).__name__, frames)
            raise ApiError(500, "internal error; see the server's log") from None
        finally:
            self.job_seconds = 0.8 * self.job_seconds + 0.2 * (time.perf_counter() - t0)


def _element_from(corrected: api.CorrectedElement) -> Element:
    # A teacher's element counts as sure (confidence 1) in the summary.
    conf = 1.0 if corrected.confidence is None or corrected.changed else corrected.confidence
    return Element(
        corrected.type,
        corrected.word_start,
        corrected.word_end,
        corrected.char_start,
        corrected.char_end,
        corrected.text,
        conf,
    )


def create_app(labeller: Labeller, options: ServeOptions | None = None) -> FastAPI:
    """The ASGI app serving one loaded labeller (loopback rules and no saving by default)."""
    options = options or ServeOptions()
    app = FastAPI(
        title="discourse-rl",
        version=str(SCHEMA_VERSION),
        description="Label the discourse elements of student essays.",
        docs_url=None,
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    gate = Gate(options.access)
    app.state.gate = gate
    queue = LabelQueue(options.queue_limit)
    app.state.queue = queue
    about = info(labeller, options)
    stage_scores = labeller.scores.get(labeller.stage)
    per_type = stage_scores.per_type if stage_scores else {}
    recall = stage_scores.recall if stage_scores else {}
    store = options.store
    errors: dict[int | str, dict[str, Any]] = {
        code: {"model": api.ErrorResponse} for code in (400, 401, 413, 415, 421, 503)
    }

    def with_body(
        add: Callable[..., Callable[[F], F]],
        path: str,
        response: type[BaseModel],
        model: type[BaseModel] | None,
        media: str = "application/json",
    ) -> Callable[[F], F]:
        """`add` (app.post, app.put) of a route that reads its request body itself: the body
        (`model`, else a file of type `media`) and the error responses in the API's schema."""
        schema: dict[str, Any] = (
            {"$ref": f"#/components/schemas/{model.__name__}"}
            if model is not None
            else {"type": "string", "format": "binary"}
        )
        body = {"requestBody": {"required": True, "content": {media: {"schema": schema}}}}
        return add(path, response_model=response, responses=errors, openapi_extra=body)

    def summary_of(elements: list[Element]) -> dict[str, Any]:
        return summarise(elements, per_type, recall).to_json()

    @app.middleware("http")
    async def headers(request: Request, call_next: Any) -> Any:
        response = await call_next(request)
        # Everything the page needs comes from this server.
        response.headers["Content-Security-Policy"] = "default-src 'self'"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    app.add_middleware(Guard, gate=gate)

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(DocxError)
    async def docx_error(_request: Request, exc: DocxError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        # The type only: a message could quote the essay.
        log.error("%s %s failed: %s", request.method, request.url.path, type(exc).__name__)
        return JSONResponse({"error": "internal error; see the server's log"}, status_code=500)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(static_dir() / "index.html")

    @app.get("/api/health", response_model=api.HealthResponse)
    async def health() -> dict[str, str]:
        return {"status": "ok", "stage": labeller.stage}

    @app.get("/api/info", response_model=api.InfoResponse)
    async def get_info() -> dict[str, Any]:
        return about

    @with_body(app.post, "/api/label", api.LabelResponse, api.LabelRequest)
    async def label(request: Request) -> dict[str, Any]:
        body = await _read_body(request, _MAX_BODY_BYTES, _essay_body_too_large)
        text = parse_essay(request.headers.get("content-type"), body)
        async with queue.slot():
            elements = await queue.run(labeller.label, text)
        return {
            "schema_version": SCHEMA_VERSION,
            "stage": labeller.stage,
            "n_words": len(text.split()),
            "elements": [el.to_json() for el in elements],
            "summary": summary_of(elements),
        }

    @with_body(app.post, "/api/label-batch", api.BatchResponse, api.BatchRequest)
    async def label_batch(request: Request) -> dict[str, Any]:
        payload = await _json_request(
            request, _MAX_BATCH_BODY, _batch_too_large, '{"essays": [{"name", "text"}]}'
        )
        req = _validate(api.BatchRequest, payload)
        if (req.essays is None) == (req.text is None):
            raise ApiError(400, 'send either "essays" (a list of {"name", "text"}) or "text"')
        if req.essays is not None:
            named = [(e.name or f"Essay {i + 1}", e.text) for i, e in enumerate(req.essays)]
        else:
            named = [
                (f"Essay {i + 1}", t)
                for i, t in enumerate(split_pasted(req.text or "", req.separator))
            ]
        if not named:
            raise ApiError(400, "no essays: the class set is empty")
        if len(named) > MAX_BATCH_ESSAYS:
            raise ApiError(
                413, f"{len(named)} essays: the limit for a class set is {MAX_BATCH_ESSAYS}"
            )
        texts = [_essay_text(t, f"essay {i + 1} ({n})") for i, (n, t) in enumerate(named)]
        total = sum(len(t.encode("utf-8")) for t in texts)
        if total > MAX_BATCH_BYTES:
            raise _too_large("class set", MAX_BATCH_BYTES, total)
        labelled: list[list[Element]] = []
        async with queue.slot():
            for lo in range(0, len(texts), BATCH_CHUNK):
                labelled += await queue.run(labeller.label_many, texts[lo : lo + BATCH_CHUNK])
        return {
            "schema_version": SCHEMA_VERSION,
            "stage": labeller.stage,
            "essays": [
                {
                    "name": name,
                    "text": text,
                    "n_words": len(text.split()),
                    "elements": [el.to_json() for el in els],
                    "summary": summary_of(els),
                }
                for (name, _), text, els in zip(named, texts, labelled, strict=True)
            ],
        }

    @with_body(app.post, "/api/summary", api.SummaryModel, api.SummaryRequest)
    async def summary(request: Request) -> dict[str, Any]:
        """The summary of corrected labels (no model call: it answers at once)."""
        payload = await _json_request(request, _MAX_BODY_BYTES, _essay_body_too_large, "{elements}")
        req = _validate(api.SummaryRequest, payload)
        return summary_of([_element_from(e) for e in req.elements])

    @with_body(app.post, "/api/docx", api.DocxResponse, None, DOCX_MEDIA)
    async def docx(request: Request) -> dict[str, str]:
        """The text of an uploaded .docx, for the page to show and label (nothing is kept)."""
        if _media(request.headers.get("content-type")) != DOCX_MEDIA:
            raise ApiError(415, f"send the .docx file itself: Content-Type: {DOCX_MEDIA}")
        body = await _read_body(request, MAX_DOCX_BYTES, _docx_too_large)
        async with queue.slot():
            text = await queue.run(docx_text, body, "the .docx file")
        size = len(text.encode("utf-8"))
        if size > MAX_ESSAY_BYTES:
            raise ApiError(
                413,
                f"the essay in this .docx is too long: {size:,} bytes of text; the limit for an "
                f"essay's text is {MAX_ESSAY_BYTES:,} bytes",
            )
        if not text.split():
            raise ApiError(400, "the .docx holds no text")
        return {"text": text}

    @with_body(app.post, "/api/unpack", api.UnpackResponse, None, "application/zip")
    async def unpack(request: Request) -> dict[str, Any]:
        """The essays (.txt and .docx files) in an uploaded .zip, unlabelled."""
        if _media(request.headers.get("content-type")) not in (
            "application/zip",
            "application/x-zip-compressed",
        ):
            raise ApiError(415, "send the .zip file itself: Content-Type: application/zip")
        body = await _read_body(request, MAX_ZIP_BYTES, _zip_too_large)
        try:
            async with queue.slot():
                essays, skipped = await queue.run(unpack_zip, body, MAX_ESSAY_BYTES)
        except UnpackError as exc:
            raise ApiError(exc.status, exc.message) from None
        return {
            "essays": [{"name": n, "text": t} for n, t in essays],
            "skipped": [{"name": n, "reason": r} for n, r in skipped],
        }

    # --- saved class sets ------------------------------------------------------------------------
    def the_store() -> ClassSetStore:
        if store is None:
            raise ApiError(404, "saving is off on this server (serve --no-store)")
        return store

    async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args)
        except KeyError:
            raise ApiError(404, f"no saved class set {args[0] if args else ''}") from None
        except DiscourseRLError as exc:
            log.error("class-set store: %s", exc)
            raise ApiError(500, "the class-set store failed; see the server's log") from None

    async def read_set(request: Request) -> dict[str, Any]:
        payload = await _json_request(
            request,
            _MAX_SET_BODY,
            lambda _size: ApiError(
                413, f"class set too large: the limit is {_MAX_SET_BODY:,} bytes"
            ),
            "a class set",
        )
        return _validate(api.ClassSetIn, payload).model_dump(mode="json")

    @app.get("/api/class-sets", response_model=api.ClassSetList, responses=errors)
    async def list_sets() -> dict[str, Any]:
        where = (
            "saving is off"
            if store is None
            else f"in one file on the server ({store.path})"
            if not options.access.remote
            else "in one file on the server"
        )
        sets = [] if store is None else await in_thread(store.list)
        return {"class_sets": sets, "where": where}

    @with_body(app.post, "/api/class-sets", api.ClassSetEntry, api.ClassSetIn)
    async def save_set(request: Request) -> dict[str, Any]:
        document = await read_set(request)
        return dict(await in_thread(the_store().save, document))

    @with_body(app.put, "/api/class-sets/{set_id}", api.ClassSetEntry, api.ClassSetIn)
    async def resave_set(set_id: int, request: Request) -> dict[str, Any]:
        document = await read_set(request)
        st = the_store()
        return dict(await in_thread(lambda i, d: st.save(d, i), set_id, document))

    @app.get("/api/class-sets/{set_id}", response_model=api.ClassSet, responses=errors)
    async def get_set(set_id: int) -> dict[str, Any]:
        return dict(await in_thread(the_store().get, set_id))

    @app.delete("/api/class-sets/{set_id}", response_model=api.Deleted, responses=errors)
    async def delete_set(set_id: int) -> dict[str, int]:
        await in_thread(the_store().delete, set_id)
        return {"deleted": set_id}

    def openapi() -> dict[str, Any]:
        """FastAPI's document, plus the request bodies the handlers parse themselves."""
        if app.openapi_schema is None:
            # built once, on the first request for the document
            from fastapi.openapi.utils import get_openapi

            doc = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            schemas = doc.setdefault("components", {}).setdefault("schemas", {})
            for model in (api.LabelRequest, api.BatchRequest, api.SummaryRequest, api.ClassSetIn):
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                schemas.update(schema.pop("$defs", {}))
                schemas[model.__name__] = schema
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.mount("/static", StaticFiles(directory=static_dir()), name="static")
    return app


def _server_class() -> type[Any]:
    # uvicorn only when serving: create_app's users (tests, tools) bring their own server
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """uvicorn's server, stopped gracefully: the first SIGTERM or Ctrl-C lets the requests
        in flight finish while new ones get 503, then stops; a second Ctrl-C stops at once. The
        signal is not raised again afterwards, so the process exits 0."""

        gate: Gate

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if self.gate.draining:
                self.should_exit = True
                self.force_exit = True
                return
            self.gate.draining = True
            print(
                f"discourse-rl: stopping: finishing {self.gate.in_flight} request(s) in flight, "
                "refusing new ones",
                flush=True,
            )

            def drain() -> None:
                self.gate.idle.wait(DRAIN_SECONDS)
                self.should_exit = True

            threading.Thread(target=drain, name="drain", daemon=True).start()

    return DrainingServer


def serve(
    model: str | Path,
    stage: str | None,
    host: str,
    port: int,
    *,
    allow_remote: bool = False,
    allowed_hosts: tuple[str, ...] = (),
    store: Path | None = None,
    queue_limit: int = QUEUE_LIMIT,
) -> None:
    """Load the model (failing at once if it is missing or broken), then serve until SIGTERM or
    Ctrl-C. `store` None: saving class sets is off."""
    # uvicorn only when serving: create_app's users (tests, tools) bring their own server
    import uvicorn

    access = Access.for_bind(host, allow_remote, allowed_hosts)  # before loading: fail fast
    labeller = Labeller.load(model, stage)
    shown = f"[{host}]" if ":" in host else host
    address = f"http://{shown}:{port}"
    options = ServeOptions(
        access, None if store is None else ClassSetStore(store), queue_limit, address
    )
    app = create_app(labeller, options)
    print(f"discourse-rl: serving {labeller.run} (stage {labeller.stage}) on {address}")
    if access.token is not None:
        print(f"discourse-rl: access token: {access.token} (every API call needs it)")
        names = sorted(access.allowed_hosts - {"localhost", "127.0.0.1", "::1"})
        for name in names or ["localhost"]:
            shown_name = f"[{name}]" if ":" in name else name
            print(f"discourse-rl: open http://{shown_name}:{port}/#token={access.token}")
        print("discourse-rl: other host names the server should answer to: --allowed-host NAME")
    if store is not None:
        print(f"discourse-rl: class sets are saved (when the teacher presses Save) in {store}")
    print(f"discourse-rl: {LICENCE}")
    server = _server_class()(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="info",
            timeout_graceful_shutdown=int(DRAIN_SECONDS),
        )
    )
    server.gate = app.state.gate
    server.run()
    print("discourse-rl: stopped", flush=True)
