"""What the server runs: the models, loaded once, and the commands' own code over one upload at a time.

Each request runs the command's `process` (`transcribe.transcriber`, `translate.translator`,
`identify.identifier`: what `xlsr transcribe` / `translate` / `identify` run over their files) on its upload,
in a thread of its own, with the runner's forward handed to the one model worker (`batching.py`). So a request
gets exactly the result the command line gives for that file (its `--format json`), decoded from memory, and the
options a request may set are the command's, with the command's defaults (read from its signature). A process
is built once per set of options and kept: a KenLM decoder is not reloaded for every request.
"""

from __future__ import annotations

import inspect
import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..audio import audio_duration
from ..errors import AudioError, ConfigError
from .batching import Batcher
from .errors import RequestError
from .metrics import Metrics
from .uploads import Form, Upload

KINDS = ("asr", "st", "lid")
TASKS = {"asr": "transcriptions", "st": "translations", "lid": "identify"}
OPENAI_ALIAS = "whisper-1"  # what OpenAI's examples and clients send; taken for the model loaded for the task
# Audio per call of a request's runner: one 20 s window at a time (the commands batch 60 s), so a long recording
# takes one window's turn in each model batch and others' windows join it; the batcher makes the batches.
SERVER_BATCH_SECONDS = 20.0


@dataclass(frozen=True)
class Option:
    """A command option a request may set, as a form field of the same name, within bounds."""

    name: str
    kind: type  # int, float, bool, str
    low: float | None = None
    high: float | None = None

    def parse(self, raw: str) -> Any:
        raw = raw.strip()
        if self.kind is bool:
            if raw.lower() in ("true", "1", "yes", "on"):
                return True
            if raw.lower() in ("false", "0", "no", "off"):
                return False
            raise self.invalid("true or false")
        if self.kind is str:
            return raw
        try:
            value = self.kind(raw)
        except ValueError:
            raise self.invalid(f"{'an integer' if self.kind is int else 'a number'}") from None
        if not math.isfinite(value) or (self.low is not None and value < self.low) or (
                self.high is not None and value > self.high):  # fmt: skip
            raise self.invalid(f"a number from {self.low:g} to {self.high:g}")
        return value

    def invalid(self, what: str) -> RequestError:
        return RequestError(400, "invalid_field", f"{self.name} must be {what}", param=self.name)


# What a request may set, per model kind (form fields; the names and defaults of the command's options).
REQUEST_OPTIONS = {
    "asr": (Option("chunk_seconds", float, 1, 120), Option("stride_seconds", float, 0.02, 30),
            Option("beam_size", int, 1, 500), Option("lm_weight", float, -100, 100),
            Option("word_score", float, -100, 100), Option("speech_check", bool)),
    "st": (Option("target_lang", str), Option("beam_size", int, 1, 16), Option("max_new_tokens", int, 0, 1024),
           Option("max_len_a", float, 0, 10), Option("max_len_b", int, 0, 1024), Option("min_len", int, 0, 1024),
           Option("length_penalty", float, -10, 10), Option("no_repeat_ngram_size", int, 0, 10),
           Option("segment_seconds", float, 1, 120)),
    "lid": (Option("top_k", int, 1, 1000), Option("chunk_seconds", float, 1, 120), Option("speech_check", bool)),
}  # fmt: skip


@dataclass
class Loaded:
    kind: str
    id: str  # what requests name it by (`model`) and /v1/models lists
    net: nn.Module


def _commands() -> dict[str, tuple[Callable, Callable, Callable]]:
    """Per kind: (the loader that checks the model, the command function (its defaults), the process builder)."""
    from ..identify import classification_model, identifier, identify
    from ..transcribe import ctc_model, transcribe, transcriber
    from ..translate import translate, translation_model, translator

    return {
        "asr": (ctc_model, transcribe, transcriber),
        "st": (translation_model, translate, translator),
        "lid": (classification_model, identify, identifier),
    }


def model_id(kind: str, given: str | Path | nn.Module | None, net: nn.Module) -> str:
    """What requests call a model: `xlsr-reference-asr` / `-st` / `-lid` for the bundled ones, else the name of its
    directory or file (without a checkpoint suffix); never a path of the server's."""
    from ..checkpoints import BUNDLED_MODEL

    source = str(getattr(net, "source", ""))  # "Hugging Face directory /path/to/model", ...
    if given is None or source.endswith(str((BUNDLED_MODEL / kind).resolve())):
        return f"xlsr-reference-{kind}"
    name = Path(source if isinstance(given, nn.Module) else str(given)).name
    return Path(name).stem if Path(name).suffix in (".pt", ".ckpt", ".bin", ".safetensors") else name


class Service:
    """The loaded models and the commands run on uploads: None loads the bundled model of its kind, "none"
    loads nothing."""

    def __init__(
        self,
        asr: str | Path | nn.Module | None = None,
        st: str | Path | nn.Module | None = None,
        lid: str | Path | nn.Module | None = None,
        *,
        device: str | None = None,
        dtype: str | None = None,
        lm: str | None = None,
        lexicon: str | None = None,
        max_batch: int = 16,
        max_wait_ms: float = 10.0,
        max_audio_s: float = 3600.0,
        metrics: Metrics | None = None,
    ):
        self.commands = _commands()
        self.device, self.dtype, self.lm, self.lexicon = device, dtype, lm, lexicon
        self.max_audio_s = max_audio_s
        self.metrics = metrics or Metrics()
        self.models: dict[str, Loaded] = {}
        for kind, given in (("asr", asr), ("st", st), ("lid", lid)):
            if isinstance(given, str) and given.lower() == "none":
                continue
            net = self.commands[kind][0](given, device, dtype)
            self.models[kind] = Loaded(kind, model_id(kind, given, net), net)
        self.batcher = Batcher(max_batch, max_wait_ms / 1000, on_batch=self.metrics.batch)
        self._processes: OrderedDict[tuple, Callable] = OrderedDict()
        self._lock = threading.Lock()
        if lm and "asr" in self.models:  # a wrong LM path stops the server at start, not at its first request
            self._process("asr", self.options("asr", Form()))

    def close(self) -> None:
        self.batcher.close()

    # -- what a request names --------------------------------------------------------------------------------
    def model(self, kind: str, requested: str | None) -> Loaded:
        """The model a request names (`model`; empty or OpenAI's alias: the one loaded for the task)."""
        loaded = self.models.get(kind)
        if loaded is None:
            hint = {"st": "--st MODEL", "asr": "--asr MODEL", "lid": "--lid MODEL"}[kind]
            what = {"st": "translation", "asr": "speech-recognition", "lid": "language-identification"}[kind]
            raise RequestError(400, "model_not_loaded", f"no {what} model loaded (start with {hint})", "model")
        if requested and requested not in (loaded.id, OPENAI_ALIAS):
            ids = ", ".join(m.id for m in self.models.values())
            raise RequestError(400, "unknown_model", f"unknown model {requested!r} for {TASKS[kind]}; loaded: {ids}",
                               "model")  # fmt: skip
        return loaded

    def options(self, kind: str, form: Form) -> dict[str, Any]:
        """The builder's keyword arguments: the request's options where given, else the command's defaults."""
        _, command, builder = self.commands[kind]
        defaults = {k: p.default for k, p in inspect.signature(command).parameters.items()}
        given = {o.name: o.parse(form.get(o.name)) for o in REQUEST_OPTIONS[kind] if form.get(o.name) is not None}
        server = {"lm": self.lm, "lexicon": self.lexicon, "batch_seconds": SERVER_BATCH_SECONDS, "quiet": True}
        names = [k for k in inspect.signature(builder).parameters if k not in ("net", "batching")]
        return {k: given.get(k, server.get(k, defaults.get(k))) for k in names}

    def check_audio(self, upload: Upload) -> float:
        """The upload's duration; RequestError when it is empty, not audio, or too long."""
        if not upload.data:
            raise RequestError(400, "empty_audio", f"{upload}: the file is empty (0 bytes)", "file")
        try:
            seconds = audio_duration(upload)
        except AudioError as e:
            raise RequestError(400, "invalid_audio", str(e), "file") from None
        if seconds <= 0:
            raise RequestError(400, "empty_audio", f"{upload}: contains no audio samples (zero length)", "file")
        if seconds > self.max_audio_s:
            raise RequestError(400, "audio_too_long", f"{upload}: {seconds:.1f} s of audio; this server takes at "
                               f"most {self.max_audio_s:g} s per request", "file")  # fmt: skip
        return seconds

    # -- running -------------------------------------------------------------------------------------------
    def run(self, kind: str, upload: Upload, options: dict[str, Any]) -> Any:
        """The command's result for the upload (its `to_dict()` is the command's --format json); blocks."""
        process = self._process(kind, options)
        with self.batcher.job():
            ((_, result),) = list(process([upload], [None]))
        if result.error is not None:
            raise RequestError(400, "invalid_audio", f"{upload}: {result.error}", "file")
        self.metrics.audio(kind, result.duration)
        return result

    def _process(self, kind: str, options: dict[str, Any]) -> Callable:
        key = (kind, tuple(sorted(options.items())))
        with self._lock:
            if key in self._processes:
                self._processes.move_to_end(key)
                return self._processes[key]
        net = self.models[kind].net
        if kind == "st":
            from ..translate import target_id

            try:
                target_id(net, options["target_lang"])
            except ConfigError as e:
                raise RequestError(400, "unknown_language", str(e), "target_lang") from None
        try:
            process = self.commands[kind][2](net, **options, batching=self._batching(net))
        except ConfigError as e:  # options the command refuses
            raise RequestError(400, "invalid_field", str(e)) from None
        with self._lock:
            self._processes[key] = process
            while len(self._processes) > 64:
                self._processes.popitem(last=False)
        return process

    def _batching(self, net: nn.Module) -> Callable:
        cfg = net.cfg.encoder if hasattr(net.cfg, "encoder") else net.cfg
        same_width = getattr(cfg, "extractor_mode", "layer_norm") == "group_norm"
        return lambda forward, key: self.batcher.wrap(forward, (id(net), key), same_width=same_width)
