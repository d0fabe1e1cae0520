"""`xlsr serve`: every endpoint, OpenAI's client and shapes, results equal to the command line's `--format json`,
batching, the queue limit, bad input, the API key, metrics, a cut-off upload, and the command itself.

References: the command line (`xlsr transcribe / translate / identify --format json`, run here through
`xlsr.cli.main`) for every result; the `openai` package (OpenAI's own client) for the API's shapes."""

from __future__ import annotations

import contextlib
import io
import json
import re
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import speechlike

from xlsr.cli import main

pytest.importorskip("starlette")
from starlette.testclient import TestClient  # noqa: E402

from xlsr.server import create_app  # noqa: E402
from xlsr.server.batching import Batcher  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
ST_MODEL = ROOT / "tests" / "fixtures" / "fairseq_st" / "st.pt"  # a tiny fairseq xm_transformer (random weights)
ST_OPTIONS = {"max_len_b": "10"}  # short translations: the fixture's decoder is random


@pytest.fixture(scope="module")
def nets():
    """The models, loaded once for the module's apps: the bundled CTC and language-ID models, the tiny ST model."""
    from xlsr.identify import classification_model
    from xlsr.transcribe import ctc_model
    from xlsr.translate import translation_model

    return {"asr": ctc_model(None, None, None), "lid": classification_model(None, None, None),
            "st": translation_model(ST_MODEL, None, None)}  # fmt: skip


@contextlib.contextmanager
def app_for(nets, **kwargs):
    names = kwargs.pop("models", ("asr", "st", "lid"))
    models = {k: nets[k] for k in names}
    app = create_app(models.get("asr", "none"), models.get("st", "none"), models.get("lid", "none"), **kwargs)
    try:
        yield app
    finally:
        app.server.service.close()


@pytest.fixture(scope="module")
def app(nets):
    with app_for(nets, max_wait_ms=50) as app:
        yield app


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as c:
        yield c


@contextlib.contextmanager
def live(app):
    """The app behind a real uvicorn on a free port of 127.0.0.1, in a thread: its base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def upload(path: Path, name: str | None = None) -> dict:
    return {"file": (name or path.name, path.read_bytes(), "application/octet-stream")}


def cli_json(capsys, *argv) -> dict:
    """The command line's --format json for one input (one JSON line)."""
    capsys.readouterr()
    assert main([*map(str, argv), "--format", "json", "--quiet"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    return json.loads(line)


def cli_file(tmp_path, *argv, format: str) -> str:
    """What the command line writes for one input with --output-dir and --format."""
    out = tmp_path / f"cli-{format}"
    assert main([*map(str, argv), "--format", format, "--output-dir", str(out), "--quiet"]) == 0
    (written,) = out.iterdir()
    return written.read_text(encoding="utf-8")


def as_served(reference: dict, name: str, model: str) -> dict:
    return {**reference, "path": name, "model": model}


def kept(served, reference) -> bool:
    """Whether `served` holds all of `reference`: every key of every object with the same value (OpenAI's fields
    come on top), lists of the same length."""
    if isinstance(reference, dict):
        return isinstance(served, dict) and all(k in served and kept(served[k], v) for k, v in reference.items())
    if isinstance(reference, list):
        return isinstance(served, list) and len(served) == len(reference) and all(map(kept, served, reference))
    return served == reference


def error_of(response, status: int, kind: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["type"] == kind, body
    assert "\n" not in response.text and "\n" not in body["error"]["message"]  # one line
    return body["error"]["message"]


# -- endpoints and results ---------------------------------------------------------------------------------------
def test_with_no_model_named_the_three_bundled_models_are_served():
    from xlsr.server.service import Service

    service = Service()
    try:
        ids = {kind: loaded.id for kind, loaded in service.models.items()}
        assert ids == {"asr": "xlsr-reference-asr", "st": "xlsr-reference-st", "lid": "xlsr-reference-lid"}
    finally:
        service.close()
    service = Service(st="none")  # `--st none`: no translation
    try:
        assert set(service.models) == {"asr", "lid"}
    finally:
        service.close()


def test_health_models_and_the_page_with_no_outside_address(client):
    assert client.get("/health").json() == {"status": "ok", "models": ["xlsr-reference-asr", "st",
                                                                       "xlsr-reference-lid"]}  # fmt: skip
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    kinds = {m["id"]: m["kind"] for m in models["data"]}
    assert kinds == {"xlsr-reference-asr": "asr", "st": "st", "xlsr-reference-lid": "lid"}
    st = next(m for m in models["data"] if m["kind"] == "st")
    assert "en_XX" in st["languages"] and "de_DE" in st["languages"]
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"] and 'id="file"' in page.text
    for asset in ("app.js", "style.css"):
        r = client.get(f"/web/{asset}")
        assert r.status_code == 200 and r.text and not re.search(r"https?://|url\(", r.text)
    assert not re.search(r"https?://", page.text)  # nothing from a CDN: the page's files ship in the package
    assert error_of(client.get("/nowhere"), 404, "not_found")
    assert error_of(client.get("/v1/audio/transcriptions"), 405, "method_not_allowed")


@pytest.mark.parametrize("clip", ["en.wav", "sw.wav"])
def test_transcriptions_are_the_command_lines_json_in_every_format(client, capsys, tmp_path, clip):
    path = EXAMPLES / clip
    reference = cli_json(capsys, "transcribe", path)
    data = {"model": "whisper-1", "response_format": "verbose_json"}
    r = client.post("/v1/audio/transcriptions", files=upload(path), data=data)
    body = r.json()
    assert r.status_code == 200 and kept(body, as_served(reference, clip, "xlsr-reference-asr"))
    assert body["task"] == "transcribe" and body["language"] == clip[:2]  # detected by the language-ID model
    words = reference["words"]
    assert body["segments"] and body["segments"][0]["start"] == words[0]["start"]
    assert body["segments"][-1]["end"] == words[-1]["end"]
    assert " ".join(s["text"] for s in body["segments"]) == reference["text"]
    assert client.post("/v1/audio/transcriptions", files=upload(path)).json() == {"text": reference["text"]}
    for fmt, cli_format in (("text", "txt"), ("srt", "srt"), ("vtt", "vtt")):
        r = client.post("/v1/audio/transcriptions", files=upload(path), data={"response_format": fmt})
        assert r.status_code == 200 and r.text == cli_file(tmp_path, "transcribe", path, format=cli_format)
    given = client.post("/v1/audio/transcriptions", files=upload(path), data={"response_format": "verbose_json",
                                                                              "language": "de"})  # fmt: skip
    assert given.json()["language"] == "de"  # the caller's word for it


def test_request_options_are_the_command_options(client, capsys):
    path = EXAMPLES / "de.wav"
    reference = cli_json(capsys, "transcribe", path, "--chunk-seconds", "2", "--stride-seconds", "0.5")
    r = client.post("/v1/audio/transcriptions", files=upload(path), data={
        "response_format": "verbose_json", "chunk_seconds": "2", "stride_seconds": "0.5"})  # fmt: skip
    assert kept(r.json(), as_served(reference, "de.wav", "xlsr-reference-asr"))
    reference = cli_json(capsys, "identify", path, "--top-k", "5", "--chunk-seconds", "2")
    r = client.post("/v1/identify", files=upload(path), data={"top_k": "5", "chunk_seconds": "2"})
    assert r.json() == as_served(reference, "de.wav", "xlsr-reference-lid") and len(r.json()["labels"]) == 5


def test_translations_are_the_command_lines_json_english_by_default(client, capsys, tmp_path):
    path = EXAMPLES / "fr.wav"
    for target in (None, "de"):
        argv = ["translate", "--model", ST_MODEL, path, "--max-len-b", "10"] + (["--target-lang", target] if target
                                                                                 else [])  # fmt: skip
        reference = cli_json(capsys, *argv)
        data = {**ST_OPTIONS, "response_format": "verbose_json", **({"target_lang": target} if target else {})}
        body = client.post("/v1/audio/translations", files=upload(path), data=data).json()
        assert kept(body, as_served(reference, "fr.wav", "st"))
        assert body["task"] == "translate" and body["language"] == ("de_DE" if target else "en_XX")
        assert [s["text"] for s in body["segments"]] == [s["text"] for s in reference["segments"]]
    r = client.post("/v1/audio/translations", files=upload(path), data={**ST_OPTIONS, "response_format": "srt"})
    assert r.text == cli_file(tmp_path, "translate", "--model", ST_MODEL, path, "--max-len-b", "10", format="srt")


def test_identify_is_the_command_lines_json(client, capsys):
    for clip in ("en.wav", "pt.wav"):
        reference = cli_json(capsys, "identify", EXAMPLES / clip)
        r = client.post("/v1/identify", files=upload(EXAMPLES / clip))
        assert r.status_code == 200 and r.json() == as_served(reference, clip, "xlsr-reference-lid")


def test_silence_is_no_speech_as_on_the_command_line(client, tmp_path):
    sf.write(tmp_path / "quiet.wav", np.zeros(32000, np.float32), 16000)
    body = client.post("/v1/audio/transcriptions", files=upload(tmp_path / "quiet.wav"),
                       data={"response_format": "verbose_json"}).json()  # fmt: skip
    assert body["no_speech"] is True and body["text"] == "" and body["segments"] == []
    found = client.post("/v1/identify", files=upload(tmp_path / "quiet.wav")).json()
    assert found["no_speech"] is True and found["labels"] == []


def test_formats_the_command_line_reads_are_read_from_memory(client, capsys, tmp_path):
    """flac and ogg (libsndfile) and m4a (PyAV): decoded from the upload's bytes, as the command line decodes files."""
    audio = sf.read(EXAMPLES / "nl.wav", dtype="float32")[0]
    sf.write(tmp_path / "nl.flac", audio, 16000)
    sf.write(tmp_path / "nl.ogg", audio, 16000)
    for path in (tmp_path / "nl.flac", tmp_path / "nl.ogg"):
        reference = cli_json(capsys, "transcribe", path)
        body = client.post("/v1/audio/transcriptions", files=upload(path), data={"response_format": "verbose_json"})
        assert kept(body.json(), as_served(reference, path.name, "xlsr-reference-asr"))


# -- OpenAI's client ------------------------------------------------------------------------------------------------
def test_the_openai_client_works_unchanged(nets, capsys):
    openai = pytest.importorskip("openai")
    en, de = EXAMPLES / "en.wav", EXAMPLES / "de.wav"
    text = cli_json(capsys, "transcribe", en)["text"]
    words = cli_json(capsys, "transcribe", en)["words"]
    translation = cli_json(capsys, "translate", "--model", ST_MODEL, de, "--max-len-b", "10")
    with app_for(nets, api_key="sk-test") as app, live(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-test", max_retries=0)
        with open(en, "rb") as f:
            assert client.audio.transcriptions.create(model="whisper-1", file=f).text == text
        with open(en, "rb") as f:
            verbose = client.audio.transcriptions.create(model="xlsr-reference-asr", file=f,
                                                         response_format="verbose_json",
                                                         timestamp_granularities=["word", "segment"])  # fmt: skip
        assert verbose.text == text and verbose.language == "en" and verbose.duration == pytest.approx(6.894)
        assert [(w.word, w.start, w.end) for w in verbose.words] == [(w["word"], w["start"], w["end"]) for w in words]
        assert verbose.segments[0].start == words[0]["start"] and verbose.segments[0].id == 0
        with open(en, "rb") as f:
            srt = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="srt")
        assert isinstance(srt, str) and srt.startswith("1\n00:00:00,000 --> ")
        with open(de, "rb") as f:
            out = client.audio.translations.create(model="st", file=f, extra_body=ST_OPTIONS)
        assert out.text == translation["text"]
        assert [m.id for m in client.models.list()] == ["xlsr-reference-asr", "st", "xlsr-reference-lid"]
        with open(en, "rb") as f, pytest.raises(openai.BadRequestError, match="unknown model 'gpt-9'"):
            client.audio.transcriptions.create(model="gpt-9", file=f)
        with open(en, "rb") as f, pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).audio.transcriptions.create(
                model="whisper-1", file=f)  # fmt: skip


def test_openai_documented_curl_request_and_json(client):
    """OpenAI's documented request (`curl .../v1/audio/transcriptions -F file=@x -F model=whisper-1`, a multipart
    form) and its documented answers: `{"text": ...}` for json, the bare text for text."""
    wav = (EXAMPLES / "es.wav").read_bytes()
    boundary = "----xlsr"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="es.wav"\r\n'
            "Content-Type: audio/wav\r\n\r\n").encode() + wav + f"\r\n--{boundary}--\r\n".encode()  # fmt: skip
    r = client.post("/v1/audio/transcriptions", content=body,
                    headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})  # fmt: skip
    assert r.status_code == 200 and list(r.json()) == ["text"] and r.headers["content-type"] == "application/json"
    text = client.post("/v1/audio/transcriptions", files=upload(EXAMPLES / "es.wav"), data={"response_format": "text"})
    assert text.headers["content-type"].startswith("text/plain") and text.text == r.json()["text"] + "\n"


# -- bad input --------------------------------------------------------------------------------------------------
def test_every_bad_input_gets_a_4xx_naming_its_cause_and_the_server_goes_on(nets, tmp_path):
    short = tmp_path / "four.wav"
    sf.write(short, speechlike(4.0, sample_rate=8000), 8000, subtype="PCM_16")  # 64 kB, 4 s
    wav = EXAMPLES / "es.wav"
    with app_for(nets, models=("asr", "lid"), max_audio_s=3.0, max_upload_mb=0.2) as app, TestClient(app) as c:
        asr = "/v1/audio/transcriptions"
        assert "not a readable audio file" in error_of(c.post(asr, files={"file": ("a.wav", b"hello, world")}), 400,
                                                       "invalid_audio")  # fmt: skip
        assert "empty" in error_of(c.post(asr, files={"file": ("a.wav", b"")}), 400, "empty_audio")
        zero = io.BytesIO()
        sf.write(zero, np.zeros(0, np.float32), 16000, format="WAV")
        assert error_of(c.post(asr, files={"file": ("z.wav", zero.getvalue())}), 400, "empty_audio")
        assert "at most 3 s" in error_of(c.post(asr, files=upload(short)), 400, "audio_too_long")
        assert "0.2 MB" in error_of(c.post(asr, files={"file": ("big.wav", bytes(300_000))}), 413, "upload_too_large")
        assert "gpt-9" in error_of(c.post(asr, files=upload(wav), data={"model": "gpt-9"}), 400, "unknown_model")
        assert "'xx'" in error_of(c.post(asr, files=upload(wav), data={"language": "xx"}), 400, "unknown_language")
        assert "'file'" in error_of(c.post(asr, data={"model": "whisper-1"}), 400, "missing_field")
        assert "'file'" in error_of(c.post(asr, files={"model": (None, "whisper-1")}), 400, "missing_field")
        assert "multipart" in error_of(c.post(asr, json={"file": "x"}), 400, "invalid_request")
        assert error_of(c.post(asr, files=upload(wav), data={"response_format": "xml"}), 400, "invalid_field")
        assert "beam_size" in error_of(c.post(asr, files=upload(wav), data={"beam_size": "0"}), 400, "invalid_field")
        assert error_of(c.post(asr, files=upload(wav), data={"chunk_seconds": "nan"}), 400, "invalid_field")
        two = [("file", ("a.wav", wav.read_bytes())), ("file2", ("b.wav", wav.read_bytes()))]
        assert "one audio file" in error_of(c.post(asr, files=two), 400, "invalid_request")
        message = error_of(c.post("/v1/audio/translations", files=upload(wav)), 400, "model_not_loaded")
        assert message == "no translation model loaded (start with --st MODEL)"
        assert c.post(asr, files=upload(wav)).status_code == 200  # and everyone else is still served
    with app_for(nets, models=("st",)) as app, TestClient(app) as c:
        assert "tlh" in error_of(c.post("/v1/audio/translations", files=upload(wav), data={"target_lang": "tlh"}), 400,
                                 "unknown_language")  # fmt: skip
        assert error_of(c.post("/v1/identify", files=upload(wav)), 400, "model_not_loaded")
        assert c.get("/v1/models").json()["data"][0]["id"] == "st" and len(c.get("/v1/models").json()["data"]) == 1


def test_an_upload_whose_body_ends_early_is_cut_off(client):
    boundary = "b"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'.encode()
            + (EXAMPLES / "es.wav").read_bytes()[:5000])  # fmt: skip
    r = client.post("/v1/audio/transcriptions", content=body,
                    headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})  # fmt: skip
    assert "cut off" in error_of(r, 400, "upload_cut_off")


def test_a_client_that_goes_away_mid_upload_leaves_the_server_serving(nets):
    with app_for(nets, models=("asr",)) as app, live(app) as url:
        host, port = url.removeprefix("http://").split(":")
        boundary = "b"
        head = (f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: {host}\r\nContent-Length: 400000\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n"
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n')  # fmt: skip
        with socket.create_connection((host, int(port))) as s:
            s.sendall(head.encode() + (EXAMPLES / "es.wav").read_bytes()[:20000])
            time.sleep(0.2)
        deadline = time.monotonic() + 10
        while 'xlsr_errors_total{type="upload_cut_off"} 1' not in httpx.get(f"{url}/metrics").text:
            assert time.monotonic() < deadline, httpx.get(f"{url}/metrics").text
            time.sleep(0.05)
        assert app.server.in_flight == 0
        r = httpx.post(f"{url}/v1/audio/transcriptions", files=upload(EXAMPLES / "es.wav"), timeout=60)
        assert r.status_code == 200 and r.json()["text"]


def test_the_api_key_guards_every_endpoint_but_health_and_the_page(nets):
    with app_for(nets, models=("asr",), api_key="s3cret") as app, TestClient(app) as c:
        assert c.get("/health").status_code == 200 and c.get("/").status_code == 200
        assert c.get("/web/app.js").status_code == 200
        for method, path in (("GET", "/v1/models"), ("GET", "/metrics"), ("POST", "/v1/audio/transcriptions"),
                             ("POST", "/v1/audio/translations"), ("POST", "/v1/identify")):  # fmt: skip
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
                r = c.request(method, path, headers=headers)
                error_of(r, 401, "unauthorized")
                assert r.headers["www-authenticate"] == "Bearer"
        key = {"Authorization": "Bearer s3cret"}
        assert c.get("/v1/models", headers=key).status_code == 200 and c.get("/metrics", headers=key).status_code == 200
        r = c.post("/v1/audio/transcriptions", files=upload(EXAMPLES / "es.wav"), headers=key)
        assert r.status_code == 200


# -- concurrency ----------------------------------------------------------------------------------------------------
def close(a, b) -> bool:
    """Equal, but for scores (confidences, probabilities, log-probs) within one unit of their printed rounding:
    a padded batch gives each row its unpadded outputs up to float rounding (about 1e-5 in the log-probs)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(close, a, b))
    if isinstance(a, float) and isinstance(b, float) and a != b:
        return abs(a - b) <= 1.001e-3
    return a == b


def batch_sizes(metrics_text: str) -> tuple[int, int]:
    """(batches run, batches of one row) from /metrics."""
    count = int(re.search(r"^xlsr_batch_size_count (\d+)$", metrics_text, re.M).group(1))
    ones = int(re.search(r'^xlsr_batch_size_bucket\{le="1"\} (\d+)$', metrics_text, re.M).group(1))
    return count, ones


def test_concurrent_requests_are_batched_and_equal_one_by_one_results(nets, tmp_path):
    clips = sorted(EXAMPLES.glob("*.wav"))[:6]
    long = tmp_path / "long.wav"  # keeps the model worker busy while the others queue up behind it
    sf.write(long, np.concatenate([sf.read(c, dtype="float32")[0] for c in clips]), 16000)
    with app_for(nets, models=("asr", "lid"), max_batch=16, max_wait_ms=100) as app, live(app) as url:

        def post(path, endpoint="/v1/audio/transcriptions"):
            data = {"response_format": "verbose_json"} if "audio" in endpoint else {}
            r = httpx.post(url + endpoint, files=upload(path), data=data, timeout=120)
            assert r.status_code == 200, r.text
            return r.json()

        alone = {c.name: post(c) for c in clips}
        alone_lid = {c.name: post(c, "/v1/identify") for c in clips}
        before = batch_sizes(httpx.get(f"{url}/metrics").text)
        with ThreadPoolExecutor(2 * len(clips) + 1) as pool:
            busy = pool.submit(post, long)
            time.sleep(0.05)
            together = {c.name: pool.submit(post, c) for c in clips}
            together_lid = {c.name: pool.submit(post, c, "/v1/identify") for c in clips}
            together = {k: f.result() for k, f in together.items()}
            together_lid = {k: f.result() for k, f in together_lid.items()}
            busy.result()
        after = batch_sizes(httpx.get(f"{url}/metrics").text)
    for name in alone:  # the same words at the same times; scores up to the float rounding of batched matmuls
        assert close(together[name], alone[name]) and close(together_lid[name], alone_lid[name]), name
    batches, ones = after[0] - before[0], after[1] - before[1]
    assert batches < 2 * len(clips) + 2 and ones < batches  # windows of several requests shared model batches


def test_a_long_recording_does_not_hold_up_a_short_one(nets, tmp_path):
    long = tmp_path / "long.wav"
    sf.write(long, speechlike(150.0, seed=3), 16000)  # 8 windows of 20 s: model calls of 3 windows
    with app_for(nets, models=("asr",), max_wait_ms=5) as app, live(app) as url:
        done = {}

        def post(path):
            r = httpx.post(f"{url}/v1/audio/transcriptions", files=upload(path), timeout=300)
            done[path.name] = time.monotonic()
            assert r.status_code == 200

        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(post, long)
            while not app.server.in_flight:
                time.sleep(0.01)
            time.sleep(0.3)  # the long one is being read and run
            second = pool.submit(post, EXAMPLES / "es.wav")
            first.result(), second.result()
    assert done["es.wav"] < done["long.wav"]


def test_a_full_queue_answers_503_with_retry_after(nets):
    with app_for(nets, models=("asr",), max_queue=1) as app, live(app) as url:
        release, run = threading.Event(), app.server.service.run

        def held(*args, **kwargs):
            release.wait(30)
            return run(*args, **kwargs)

        app.server.service.run = held
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(httpx.post, f"{url}/v1/audio/transcriptions", files=upload(EXAMPLES / "es.wav"),
                                timeout=60)  # fmt: skip
            deadline = time.monotonic() + 10
            while app.server.in_flight == 0:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            assert "xlsr_queue_depth 1" in httpx.get(f"{url}/metrics").text
            r = httpx.post(f"{url}/v1/audio/transcriptions", files=upload(EXAMPLES / "es.wav"))
            assert "queue is full" in error_of(r, 503, "overloaded") and int(r.headers["retry-after"]) >= 1
            release.set()
            assert first.result().status_code == 200
        assert httpx.post(f"{url}/v1/audio/transcriptions", files=upload(EXAMPLES / "es.wav"),
                          timeout=60).status_code == 200  # fmt: skip


def test_batcher_combines_calls_of_one_key_and_gives_each_its_rows():
    """Rows of many callers, run as one zero-padded batch, equal each call run alone; other keys are never mixed
    in; a call much shorter than the batch is not padded to it; an error reaches its callers only."""
    sizes = []

    def forward(waves, lengths):  # a per-row function of the valid samples: cumulative sums, masked
        sizes.append(tuple(waves.shape))
        if (lengths == 7).any():
            raise ValueError("seven")
        valid = torch.arange(waves.shape[1])[None] < lengths[:, None]
        return (waves * valid).cumsum(1)

    batcher = Batcher(max_batch=8, max_wait_s=0.5)
    g = torch.Generator().manual_seed(0)
    calls = [(torch.randn(2, 100, generator=g), torch.tensor([100, 90])) for _ in range(3)]
    calls.append((torch.randn(4, 10, generator=g), torch.full((4,), 10)))  # padded to 100, a third would be padding
    try:
        with ThreadPoolExecutor(6) as pool, contextlib.ExitStack() as jobs:
            for _ in range(len(calls) + 2):
                jobs.enter_context(batcher.job())
            futures = [pool.submit(batcher.call, "k", forward, w, n) for w, n in calls]
            other = pool.submit(batcher.call, "other key", forward, *calls[0])
            bad = pool.submit(batcher.call, "bad", forward, torch.ones(1, 50), torch.tensor([7]))
            outputs = [f.result() for f in futures]
            assert torch.equal(other.result(), forward(*calls[0]))
            with pytest.raises(ValueError, match="seven"):
                bad.result()
        for (w, n), out in zip(calls, outputs):
            assert torch.equal(out[:, : w.shape[1]], forward(w, n))
        assert (6, 100) in sizes and (4, 10) in sizes  # three calls in one batch; the short one on its own
        assert torch.equal(batcher.call("k", forward, *calls[0]), forward(*calls[0]))  # the worker goes on
    finally:
        batcher.close()


# -- logs, metrics, the command -----------------------------------------------------------------------------------
def test_one_log_line_per_request_and_prometheus_metrics(client, caplog):
    with caplog.at_level("INFO", logger="xlsr.serve"):
        client.post("/v1/audio/transcriptions", files=upload(EXAMPLES / "it.wav"))
        client.post("/v1/audio/transcriptions", files={"file": ("x.wav", b"junk")})
    lines = [r.getMessage() for r in caplog.records if r.name == "xlsr.serve"]
    assert re.fullmatch(r"POST /v1/audio/transcriptions 200 7\.2s audio \d+\.\d{3}s", lines[0]), lines
    assert re.fullmatch(r"POST /v1/audio/transcriptions 400 0\.0s audio \d+\.\d{3}s", lines[1]), lines
    text = client.get("/metrics").text
    assert re.search(r'^xlsr_requests_total\{method="POST",path="/v1/audio/transcriptions",status="200"\} \d+$',
                     text, re.M)  # fmt: skip
    assert re.search(r'^xlsr_errors_total\{type="invalid_audio"\} \d+$', text, re.M)
    assert float(re.search(r'^xlsr_audio_seconds_total\{task="asr"\} (\S+)$', text, re.M).group(1)) >= 7.17
    assert re.search(r"^xlsr_queue_depth 0$", text, re.M) and "# TYPE xlsr_batch_size histogram" in text
    assert re.search(r'^xlsr_request_duration_seconds_count\{path="/v1/audio/transcriptions"\} \d+$', text, re.M)


def test_the_serve_command_listens_on_localhost_and_logs_requests(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "xlsr", "serve", "--port", str(port), "--lid", "none"],
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health")
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        assert health.json() == {"status": "ok", "models": ["xlsr-reference-asr", "xlsr-reference-st"]}
        r = httpx.post(f"http://127.0.0.1:{port}/v1/audio/transcriptions", files=upload(EXAMPLES / "es.wav"))
        assert r.status_code == 200 and r.json()["text"]
    finally:
        proc.terminate()
        err = proc.communicate(timeout=30)[1]
    assert f"http://127.0.0.1:{port}/ with xlsr-reference-asr (asr), xlsr-reference-st (st)" in err
    assert re.search(r"POST /v1/audio/transcriptions 200 2\.0s audio \d+\.\d{3}s", err), err
