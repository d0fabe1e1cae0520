"""`xlsr identify`: the top-k labels (languages, speakers, ...) of audio files with a classification model.

Each file is cut into windows of `chunk_seconds` (the streaming windows of `inference.py`, so memory stays
flat on long recordings); each window's class probabilities (softmax) are averaged over the file, weighted
by the window's length, as they complete; the top-k labels are reported.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .checkpoints import inference_model
from .data.manifest import Utterance
from .driver import Process, check_format, print_results, run_inputs
from .errors import ConfigError
from .inference import MIN_SPEECH_SECONDS, FrameMean, WindowedRunner, WithSpeech
from .runtime import audio_progress, set_threads

FORMATS = ("txt", "json", "tsv")
CHUNK_SECONDS = 10.0  # identify's and classifier evaluation's window


@dataclass
class Identification:
    path: str
    top: list[tuple[str, float]] = field(default_factory=list)  # (label, probability), best first
    duration: float = 0.0
    model: str = ""
    error: str | None = None
    skipped: bool = False
    no_speech: bool = False  # the speech detector found none: no label rather than a confident guess

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "labels": [{"label": label, "probability": round(p, 6)} for label, p in self.top],
            "no_speech": self.no_speech,
            "duration": round(self.duration, 3),
            "model": self.model,
            "error": self.error,
        }


def render(r: Identification, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(r.to_dict(), ensure_ascii=False, indent=2) + "\n"
    if fmt == "tsv":
        return "label\tprobability\n" + "".join(f"{label}\t{p:.4f}\n" for label, p in r.top)
    if r.no_speech:
        return "no speech\n"
    return "".join(f"{label} {p:.4f}\n" for label, p in r.top)


def line(r: Identification) -> str:
    """stdout's txt line for a file: its path, then every top-k label with its probability (or `no speech`)."""
    return "\t".join([r.path, *(f"{label} {p:.4f}" for label, p in r.top)] + (["no speech"] if r.no_speech else []))


def classification_model(model: str | Path | nn.Module | None, device: str | None, dtype: str | None) -> nn.Module:
    """Loads a model (None: the bundled language-ID model) and checks that it classifies."""
    net = inference_model(model, device, dtype, kind="lid")
    head = getattr(net.cfg, "head", type(net).__name__)
    if head != "classification":
        raise ConfigError(
            f"{net.source} has no classification head ({head}); fine-tune one with `xlsr finetune classify`"
        )
    return net


def window_probabilities(net: nn.Module):
    """The runner's forward: each window's class probabilities, repeated on each of its frames, so that the
    frames' sum over a file is the length-weighted sum over its windows."""

    def forward(waves: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        probs = net(waves, lengths).float().softmax(-1)  # (B, K)
        T = int(net.frame_lengths(torch.tensor([waves.shape[1]]))[0])
        return probs[:, None, :].expand(-1, T, -1)

    return forward


def identify(
    model: str | Path | nn.Module | None,
    audio: list[str | Path | Utterance],
    top_k: int = 3,
    output_dir: str | Path | None = None,
    format: str = "txt",
    chunk_seconds: float = CHUNK_SECONDS,
    batch_seconds: float = 60.0,
    device: str | None = None,
    dtype: str | None = None,
    threads: int | None = None,
    skip_existing: bool = False,
    speech_check: bool = True,
    quiet: bool = False,
    audio_column: str | None = None,
) -> list[Identification]:
    """Top-k labels with probabilities for files, folders, manifests and the other data sources of
    `data/sources.py` (`audio_column` names their audio column); one result per input, in input order.
    model: a classification model (None: the bundled language-ID model). A file that cannot be read gets
    `error` set and every other file is still done; one with less than `MIN_SPEECH_SECONDS` of speech (the
    detector of `vad.py`) gets no labels and `no_speech` set, unless `speech_check` is False (audio that is not
    speech, or a detector that misjudges a recording)."""
    check_format(format, FORMATS)
    if top_k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {top_k}")
    set_threads(threads)
    net = classification_model(model, device, dtype)
    process = identifier(
        net,
        top_k=top_k,
        chunk_seconds=chunk_seconds,
        batch_seconds=batch_seconds,
        speech_check=speech_check,
        quiet=quiet,
    )
    return run_inputs(audio, process, Identification, net.source, output_dir, format, skip_existing, render,
                      audio_column=audio_column)  # fmt: skip


def identifier(
    net: nn.Module,
    *,
    top_k: int,
    chunk_seconds: float,
    batch_seconds: float,
    speech_check: bool,
    quiet: bool,
    batching: Callable | None = None,
) -> Process:
    """`identify`'s work on a loaded classification model, as the `process` of `driver.run_inputs` (the options
    as `identify`'s); also what `xlsr serve` runs on each upload. `batching(forward, key)` wraps the runner's
    forward (the server's cross-request batcher, `server/batching.py`); None: the model is called directly."""
    labels = net.cfg.labels
    frame = net.cfg.frame_stride / net.preprocessing.sample_rate
    forward = window_probabilities(net)
    if batching is not None:
        forward = batching(forward, "window_probabilities")
    runner = WindowedRunner.for_model(net, forward, chunk_seconds, frame, batch_seconds)

    def process(paths, samples):
        bar = audio_progress("identify", quiet)
        make = lambda: WithSpeech(FrameMean(), runner.sample_rate)  # noqa: E731
        for done in runner.run(paths, samples, bar, consumer=make):
            path = str(paths[done.item])
            if done.outputs is None:
                yield done.item, Identification(path, model=net.source, error=done.error)
                continue
            probs, speech = done.outputs
            if (
                speech_check and speech < MIN_SPEECH_SECONDS
            ):  # silence, noise, a click: no label rather than a confident guess
                yield done.item, Identification(path, [], done.seconds, net.source, no_speech=True)
                continue
            best = np.argsort(-probs)[:top_k]
            yield (
                done.item,
                Identification(path, [(labels[k], float(probs[k])) for k in best], done.seconds, net.source),
            )
        bar.close()

    return process


def print_identifications(results: list[Identification], fmt: str, stream=None) -> None:
    """To stdout, the same shape for any number of files: `path<TAB>label p<TAB>...` lines (txt), JSON Lines."""
    print_results(results, fmt, line, render, stream)
