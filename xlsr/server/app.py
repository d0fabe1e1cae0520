"""The HTTP side of `xlsr serve`: routes, the request gate (API key, log line, metrics), errors as JSON.

Starlette (the ASGI toolkit FastAPI is built on) and uvicorn; the form is read by `uploads.py`, the work done
by `service.py` in worker threads, so the event loop only moves bytes. At most `max_queue` requests are
admitted at a time (reading, waiting or running); past that a request gets 503 with Retry-After at once.
"""

from __future__ import annotations

import collections
import hmac
import logging
import math
import time
from functools import partial
from importlib import resources
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import XlsrError
from . import responses
from .errors import RequestError
from .service import Service
from .uploads import CutOff, Form, read_form

log = logging.getLogger("xlsr.serve")
WEB = resources.files("xlsr") / "assets" / "web"
ISO_639_1 = set(
    "aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu cv cy da de dv dz ee "
    "el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu hy hz ia id ie ig ii ik io is it "
    "iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb lg li ln lo lt lu lv mg mh mi mk ml mn mr ms mt my "
    "na nb nd ne ng nl nn no nr nv ny oc oj om or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd se sg si sk sl sm sn "
    "so sq sr ss st su sv sw ta te tg th ti tk tl tn to tr ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi yo za zh zu"
    .split()
)  # fmt: skip


class Server:
    """The application's state: the service, the queue bound, the metrics."""

    def __init__(self, service: Service, max_queue: int = 64, max_upload_mb: float = 25.0):
        self.service, self.metrics = service, service.metrics
        self.max_queue, self.max_bytes = max(1, max_queue), int(max_upload_mb * 1e6)
        self.in_flight = 0
        self.limiter = anyio.CapacityLimiter(self.max_queue)
        self.recent = collections.deque(maxlen=50)  # latencies of the last requests, for Retry-After

    # -- admission and work ----------------------------------------------------------------------------------
    async def admitted(self, request: Request, kind: str, work) -> Response:
        """Admits the request (or 503), reads its form, and runs `work(form)` in a worker thread."""
        if self.in_flight >= self.max_queue:
            wait = max(1, math.ceil(sum(self.recent) / len(self.recent))) if self.recent else 1
            raise RequestError(503, "overloaded", f"the server's queue is full ({self.max_queue} requests); retry "
                               f"in {wait} s", headers={"Retry-After": str(wait)})  # fmt: skip
        self.in_flight += 1
        self.metrics.queue_depth = self.in_flight
        started = time.monotonic()
        try:
            form = await read_form(request.headers.get("content-type"), request.headers.get("content-length"),
                                   request.stream(), self.max_bytes)  # fmt: skip
            if form.file is None:
                raise RequestError(400, "missing_field", "no audio: send it as the multipart field 'file'", "file")
            loaded = self.service.model(kind, form.get("model"))
            response = await anyio.to_thread.run_sync(partial(work, form, loaded), limiter=self.limiter)
            request.state.audio_seconds = getattr(response, "audio_seconds", 0.0)
            self.recent.append(time.monotonic() - started)
            return response
        finally:
            self.in_flight -= 1
            self.metrics.queue_depth = self.in_flight

    def transcribe(self, form: Form, loaded) -> Response:
        fmt = responses.check_response_format(form.get("response_format"))
        language = _language(form.get("language"))
        for g in form.get_all("timestamp_granularities"):
            if g not in ("word", "segment"):
                raise RequestError(400, "invalid_field", "timestamp_granularities are word and segment",
                                   "timestamp_granularities")  # fmt: skip
        options = self.service.options("asr", form)
        self.service.check_audio(form.file)
        t = self.service.run("asr", form.file, options)
        if fmt == "verbose_json" and language is None and "lid" in self.service.models and not t.no_speech:
            found = self.service.run("lid", form.file, self.service.options("lid", Form()))
            language = found.top[0][0] if found.top else None
        body = responses.transcription(t, fmt, form.file.name, loaded.id, language)
        return _answer(body, fmt, t.duration)

    def translate(self, form: Form, loaded) -> Response:
        fmt = responses.check_response_format(form.get("response_format"))
        options = self.service.options("st", form)
        self.service.check_audio(form.file)
        t = self.service.run("st", form.file, options)
        return _answer(responses.translation(t, fmt, form.file.name, loaded.id), fmt, t.duration)

    def identify(self, form: Form, loaded) -> Response:
        options = self.service.options("lid", form)
        self.service.check_audio(form.file)
        r = self.service.run("lid", form.file, options)
        return _answer(responses.command_json(r, form.file.name, loaded.id), "json", r.duration)


def _language(value: str | None) -> str | None:
    """OpenAI's `language` (ISO 639-1, as `en`; a region, as `en-US`, is allowed and dropped)."""
    if not value:
        return None
    code = value.strip().lower().replace("_", "-").split("-")[0]
    if code not in ISO_639_1:
        raise RequestError(400, "unknown_language", f"unknown language {value!r}: give an ISO 639-1 code (en, de, "
                           "sw, ...)", "language")  # fmt: skip
    return code


def _answer(body: dict | str, fmt: str, audio_seconds: float) -> Response:
    if isinstance(body, dict):
        response = JSONResponse(body)
    else:
        response = PlainTextResponse(body, media_type=responses.MEDIA_TYPES.get(fmt, "text/plain"))
    response.audio_seconds = audio_seconds  # for the log line
    return response


def error_response(e: RequestError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers={**e.headers, "X-Error-Type": e.type})


def asgi(server: Server, api_key: str | None = None) -> Gate:
    """The ASGI application: the routes, inside the gate. `api_key`: what every endpoint but /health and the
    page's files want as `Authorization: Bearer KEY`."""

    async def transcriptions(request: Request) -> Response:
        return await server.admitted(request, "asr", server.transcribe)

    async def translations(request: Request) -> Response:
        return await server.admitted(request, "st", server.translate)

    async def identify(request: Request) -> Response:
        return await server.admitted(request, "lid", server.identify)

    async def models(request: Request) -> Response:
        return JSONResponse(responses.models_list(list(server.service.models.values())))

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "models": [m.id for m in server.service.models.values()]})

    async def metrics(request: Request) -> Response:
        return PlainTextResponse(server.metrics.text(), media_type="text/plain; version=0.0.4")

    async def page(request: Request) -> Response:
        return HTMLResponse((WEB / "index.html").read_text(encoding="utf-8"))

    async def request_error(request: Request, e: RequestError) -> Response:
        return error_response(e)

    async def http_error(request: Request, e: HTTPException) -> Response:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "invalid_request")
        return error_response(RequestError(e.status_code, kind, f"{request.method} {request.url.path}: {e.detail}"))

    async def cut_off(request: Request, e: CutOff) -> Response:
        return error_response(RequestError(400, "upload_cut_off", f"the upload was cut off: {e}"))

    async def user_error(request: Request, e: XlsrError) -> Response:
        return error_response(RequestError(400, "invalid_request", str(e)))

    async def server_error(request: Request, e: Exception) -> Response:
        log.exception("%s %s failed", request.method, request.url.path)
        return error_response(RequestError(500, "server_error", f"internal error ({type(e).__name__}); see the "
                                           "server's log"))  # fmt: skip

    app = Starlette(
        routes=[
            Route("/", page),
            Mount("/web", StaticFiles(directory=str(WEB)), name="web"),
            Route("/health", health),
            Route("/metrics", metrics),
            Route("/v1/models", models),
            Route("/v1/audio/transcriptions", transcriptions, methods=["POST"]),
            Route("/v1/audio/translations", translations, methods=["POST"]),
            Route("/v1/identify", identify, methods=["POST"]),
        ],
        exception_handlers={
            RequestError: request_error,
            HTTPException: http_error,
            CutOff: cut_off,
            XlsrError: user_error,
            Exception: server_error,
        },
        lifespan=None,
    )
    return Gate(app, server, api_key)


ROUTES = ("/", "/health", "/metrics", "/v1/models", "/v1/audio/transcriptions", "/v1/audio/translations",
          "/v1/identify")  # fmt: skip


class Gate:
    """Around every request: the API key (all but OPEN_PATHS), then one log line and the metrics."""

    def __init__(self, app: Any, server: Server, api_key: str | None = None):
        self.app, self.server, self.api_key = app, server, api_key

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status, error = time.monotonic(), [500], [None]

        async def sending(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                error[0] = _error_type(message)
            await send(message)

        path = scope["path"]
        try:
            if self.api_key and not self._open(path) and not self._authorized(scope):
                e = RequestError(401, "unauthorized", "this server needs an API key: Authorization: Bearer KEY",
                                 headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
                await error_response(e)(scope, receive, sending)
            else:
                await self.app(scope, receive, sending)
        finally:
            seconds = time.monotonic() - started
            audio = scope.get("state", {}).get("audio_seconds", 0.0)
            label = path if path in ROUTES else ("/web/" if path.startswith("/web/") else "other")
            self.server.metrics.request(scope["method"], label, status[0], seconds)
            if status[0] >= 400:
                self.server.metrics.error(error[0] or str(status[0]))
            log.info("%s %s %d %.1fs audio %.3fs", scope["method"], path, status[0], audio, seconds)

    @staticmethod
    def _open(path: str) -> bool:
        """No key for the health check and the page's static files (a browser cannot send one to load them;
        the page sends it with every request it makes)."""
        return path in ("/health", "/") or path.startswith("/web/")

    def _authorized(self, scope) -> bool:
        headers = dict(scope["headers"])
        given = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, token = given.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.api_key.encode())


def _error_type(start_message) -> str | None:
    for name, value in start_message.get("headers", []):
        if name.lower() == b"x-error-type":
            return value.decode("latin-1")
    return None
