"""`xlsr transcribe`: speech to text with a CTC model, for files of any length and any number of them."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .checkpoints import inference_model
from .data.manifest import Utterance
from .decoding.ctc import BeamSearchDecoder, BeamSearchOptions, GreedyStream
from .driver import Process, check_format, print_results, run_inputs
from .errors import ConfigError
from .inference import MIN_SPEECH_SECONDS, WindowedRunner, WithSpeech
from .runtime import audio_progress, set_threads
from .writers import FORMATS, Transcript, render


def ctc_model(model: str | Path | nn.Module | None, device: str | None, dtype: str | None) -> nn.Module:
    """Loads a model (None: the bundled one) and checks that it can transcribe."""
    net = inference_model(model, device, dtype, kind="asr")
    head = getattr(net.cfg, "head", type(net).__name__)
    if head != "ctc":
        raise ConfigError(
            f"{net.source} has no CTC head ({head}): it cannot transcribe; fine-tune it first with `xlsr finetune ctc`"
        )
    if net.tokenizer is None:
        raise ConfigError(f"{net.source} has no vocabulary (vocab.json), so its outputs cannot be read as text")
    return net


def transcribe(
    model: str | Path | nn.Module | None,
    audio: list[str | Path | Utterance],
    output_dir: str | Path | None = None,
    format: str = "txt",
    chunk_seconds: float = 20.0,
    stride_seconds: float = 3.0,
    batch_seconds: float = 60.0,
    lm: str | None = None,
    lexicon: str | None = None,
    lm_weight: float = 2.0,
    word_score: float = 0.0,
    beam_size: int = 50,
    hotwords: tuple[str, ...] = (),
    hotword_weight: float = 5.0,
    device: str | None = None,
    dtype: str | None = None,
    threads: int | None = None,
    skip_existing: bool = False,
    speech_check: bool = True,
    quiet: bool = False,
    on_result: Callable[[Transcript], None] | None = None,
    audio_column: str | None = None,
) -> list[Transcript]:
    """Transcribes files, folders, manifests and the other data sources of `data/sources.py` (Common Voice,
    Hugging Face datasets, parquet; `audio_column` names their audio column); returns one Transcript per input,
    in input order.

    model: any model xlsr reads (None: the bundled reference model). A file that cannot be read gets a
    Transcript with `error` set; every other file is still transcribed. With `output_dir`, each transcript is
    written (atomically) as soon as its file is done, as `<name>.<format>`; `skip_existing` skips inputs whose
    output is already there. Without `lm`, decoding is greedy; with it, a beam search with that KenLM model
    (see `BeamSearchOptions`). Each window is decoded as soon as its batch is done: memory holds the text and
    timestamps of a recording, never its frame outputs.
    """
    check_format(format, FORMATS)
    set_threads(threads)
    net = ctc_model(model, device, dtype)
    process = transcriber(net, chunk_seconds=chunk_seconds, stride_seconds=stride_seconds, batch_seconds=batch_seconds,
                          lm=lm, lexicon=lexicon, lm_weight=lm_weight, word_score=word_score, beam_size=beam_size,
                          hotwords=hotwords, hotword_weight=hotword_weight, speech_check=speech_check,
                          quiet=quiet)  # fmt: skip
    return run_inputs(audio, process, Transcript, net.source, output_dir, format, skip_existing, render, on_result,
                      audio_column)  # fmt: skip


def transcriber(
    net: nn.Module,
    *,
    chunk_seconds: float,
    stride_seconds: float,
    batch_seconds: float,
    lm: str | None,
    lexicon: str | None,
    lm_weight: float,
    word_score: float,
    beam_size: int,
    hotwords: tuple[str, ...],
    hotword_weight: float,
    speech_check: bool,
    quiet: bool,
    batching: Callable | None = None,
) -> Process:
    """`transcribe`'s work on a loaded CTC model, as the `process` of `driver.run_inputs` (the options as
    `transcribe`'s); also what `xlsr serve` runs on each upload. `batching(forward, key)` wraps the runner's
    forward (the server's cross-request batcher, `server/batching.py`); None: the model is called directly."""
    decoder = None
    if lm:
        options = BeamSearchOptions(
            lm, lexicon, lm_weight, word_score, beam_size, hotwords=tuple(hotwords), hotword_weight=hotword_weight
        )
        decoder = BeamSearchDecoder(net.tokenizer, options)
    elif hotwords or lexicon:
        raise ConfigError("--hotwords and --lexicon need an n-gram language model (--lm)")
    forward = lambda w, n: torch.log_softmax(net(w, n).float(), dim=-1)  # noqa: E731
    if batching is not None:
        forward = batching(forward, "log_softmax")
    runner = WindowedRunner.for_model(net, forward, chunk_seconds, stride_seconds, batch_seconds)

    def stream():
        inner = decoder.stream(runner.frame_seconds) if decoder else GreedyStream(net.tokenizer, runner.frame_seconds)
        return WithSpeech(inner, runner.sample_rate)

    def process(paths, samples):
        bar = audio_progress("transcribe", quiet)
        started, files = time.perf_counter(), 0
        for done in runner.run(paths, samples, bar, consumer=stream):
            path = str(paths[done.item])
            if done.outputs is None:
                yield done.item, Transcript(path, model=net.source, error=done.error)
                continue
            hyp, speech = done.outputs
            files += 1
            speed = bar.n / max(time.perf_counter() - started, 1e-9)
            bar.set_postfix_str(f"{files}/{len(paths)} files, {speed:.1f}x real time")
            if (
                speech_check and speech < MIN_SPEECH_SECONDS
            ):  # silence, noise, a click: no transcript rather than a guess
                yield done.item, Transcript(path, duration=done.seconds, model=net.source, no_speech=True)
                continue
            yield done.item, Transcript(path, hyp.text, hyp.words, done.seconds, net.source)
        bar.close()

    return process


def print_transcripts(transcripts: list[Transcript], format: str, stream=None) -> None:
    """To stdout, the same shape for any number of files: `path<TAB>text` lines (txt), JSON Lines (json)."""
    print_results(transcripts, format, lambda t: f"{t.path}\t{t.text}", render, stream)
