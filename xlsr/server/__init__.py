"""`xlsr serve`: the models behind an HTTP endpoint (OpenAI's audio API, language ID) and a page to try them.

    app.py        routes, the gate (API key, one log line per request, metrics), errors as one-line JSON
    uploads.py    the multipart form read into memory, within the size limit (nothing goes to disk)
    service.py    the models, loaded once; the commands' own `process` run on each upload
    batching.py   the one model worker: forward calls of concurrent requests combined into batches
    responses.py  OpenAI's response formats over the commands' JSON
    metrics.py    Prometheus text format
The page is `xlsr/assets/web/` (plain HTML, CSS and JavaScript, no build step, nothing from the network).
Needs the `[serve]` extra (Starlette, uvicorn, python-multipart).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from ..errors import ConfigError
from ..runtime import set_threads

API_KEY_VARIABLE = "XLSR_API_KEY"  # the key, when --api-key is not given (a command line is visible to `ps`)


def _require_extra() -> None:
    try:
        import python_multipart  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"xlsr serve needs {e.name}: pip install 'xlsr[serve]'") from None


def create_app(
    asr: str | Path | None = None,
    st: str | Path | None = None,
    lid: str | Path | None = None,
    max_batch: int = 16,
    max_wait_ms: float = 10.0,
    max_queue: int = 64,
    max_upload_mb: float = 25.0,
    max_audio_s: float = 3600.0,
    api_key: str | None = None,
    lm: str | None = None,
    lexicon: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
):
    """The ASGI application of `serve` (its `.server.service` holds the models; call `.server.service.close()`
    to stop the model worker). Models may also be given loaded (nn.Module)."""
    _require_extra()
    from .app import Server, asgi
    from .service import Service

    if max_batch < 1 or max_queue < 1 or max_wait_ms < 0 or max_upload_mb <= 0 or max_audio_s <= 0:
        raise ConfigError("--max-batch and --max-queue must be >= 1, --max-wait-ms >= 0, the limits > 0")
    service = Service(asr, st, lid, device=device, dtype=dtype, lm=lm, lexicon=lexicon, max_batch=max_batch,
                      max_wait_ms=max_wait_ms, max_audio_s=max_audio_s)  # fmt: skip
    return asgi(Server(service, max_queue, max_upload_mb), api_key)


def serve(
    asr: str | None = None,
    st: str | None = None,
    lid: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_batch: int = 16,
    max_wait_ms: float = 10.0,
    max_queue: int = 64,
    max_upload_mb: float = 25.0,
    max_audio_s: float = 3600.0,
    api_key: str | None = None,
    lm: str | None = None,
    lexicon: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    threads: int | None = None,
) -> None:
    """Serves the models over HTTP until interrupted: OpenAI's `POST /v1/audio/transcriptions` and
    `/v1/audio/translations`, `POST /v1/identify`, `GET /v1/models`, `/health`, `/metrics`, and the page at `/`.

    asr, st, lid: a CTC, a speech-translation and a classification model (None: the bundled ones; "none": not
    loaded). Requests from many clients are batched together (up to
    `max_batch` windows, waiting at most `max_wait_ms` for more), at most `max_queue` are admitted at once (then
    503 with Retry-After), uploads are limited to `max_upload_mb` and `max_audio_s`. `api_key` (or the
    XLSR_API_KEY variable): every endpoint but /health and the page wants `Authorization: Bearer KEY`. `lm`,
    `lexicon`: KenLM beam search for every transcription (as `xlsr transcribe --lm`).
    """
    _require_extra()
    import uvicorn

    set_threads(threads)
    api_key = api_key or os.environ.get(API_KEY_VARIABLE) or None
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s xlsr serve: %(message)s"))
    log = logging.getLogger("xlsr.serve")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    app = create_app(asr, st, lid, max_batch, max_wait_ms, max_queue, max_upload_mb, max_audio_s, api_key, lm,
                     lexicon, device, dtype)  # fmt: skip
    models = ", ".join(f"{m.id} ({m.kind})" for m in app.server.service.models.values()) or "none"
    where = f"[{host}]" if ":" in host else host
    log.info("http://%s:%d/ with %s%s", where, port, models, "; API key required" if api_key else "")
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            limit_concurrency=4 * max_queue + 16, timeout_keep_alive=5)  # fmt: skip
    try:
        uvicorn.Server(config).run()
    finally:
        app.server.service.close()
        log.removeHandler(handler)
