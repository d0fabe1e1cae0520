"""`xlsr transcribe`: speech to text with a CTC model, for files of any length and any number of them."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from .checkpoints import load_model
from .checkpoints.io import atomic_write_text
from .data.manifest import InputError, Utterance, expand_inputs, output_names
from .decoding.ctc import BeamSearchDecoder, BeamSearchOptions, greedy
from .errors import ConfigError
from .inference import WindowedRunner
from .models import Wav2Vec2Model
from .runtime import progress, resolve_device, resolve_dtype, set_threads
from .writers import FORMATS, Transcript, render


def ctc_model(model: str | Path | Wav2Vec2Model, device: str | None, dtype: str | None) -> Wav2Vec2Model:
    """Loads a model and checks that it can transcribe."""
    dev = resolve_device(device)
    net = model if isinstance(model, Wav2Vec2Model) else load_model(model, device=dev)
    if net.cfg.head != "ctc":
        raise ConfigError(
            f"{net.source} has no CTC head ({net.cfg.head}): it cannot transcribe; "
            "fine-tune it first with `xlsr finetune ctc`"
        )
    if net.tokenizer is None:
        raise ConfigError(f"{net.source} has no vocabulary (vocab.json), so its outputs cannot be read as text")
    return net.to(device=dev, dtype=resolve_dtype(dtype, dev))


def transcribe(
    model: str | Path | Wav2Vec2Model,
    audio: list[str | Path],
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
    quiet: bool = False,
    on_result: Callable[[Transcript], None] | None = None,
) -> list[Transcript]:
    """Transcribes files, folders and manifests; returns one Transcript per input, in input order.

    A file that cannot be read gets a Transcript with `error` set; every other file is still transcribed.
    With `output_dir`, each transcript is written (atomically) as soon as its file is done, as
    `<name>.<format>`; `skip_existing` skips inputs whose output is already there. Without `lm`, decoding
    is greedy; with it, a beam search with that KenLM model (see `BeamSearchOptions`).
    """
    if format not in FORMATS:
        raise ConfigError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
    set_threads(threads)
    net = ctc_model(model, device, dtype)
    decoder = None
    if lm:
        options = BeamSearchOptions(
            lm, lexicon, lm_weight, word_score, beam_size, hotwords=tuple(hotwords), hotword_weight=hotword_weight
        )
        decoder = BeamSearchDecoder(net.tokenizer, options)
    elif hotwords or lexicon:
        raise ConfigError("--hotwords and --lexicon need an n-gram language model (--lm)")
    runner = WindowedRunner(
        net, lambda w, n: torch.log_softmax(net(w, n).float(), dim=-1), chunk_seconds, stride_seconds, batch_seconds
    )
    entries = expand_inputs(audio)
    results: list[Transcript | None] = [None] * len(entries)
    items = {i: u for i, u in enumerate(entries) if isinstance(u, Utterance)}
    names = dict(zip(items, output_names([u.path for u in items.values()])))
    out_dir = Path(output_dir) if output_dir else None

    def finish(i: int, t: Transcript) -> None:
        results[i] = t
        if out_dir and t.error is None and not t.skipped:
            atomic_write_text(out_dir / f"{names[i]}.{format}", render(t, format))
        if on_result:
            on_result(t)

    todo = []
    for i, entry in enumerate(entries):
        if isinstance(entry, InputError):
            finish(i, Transcript(entry.path, model=net.source, error=entry.cause))
        elif out_dir and skip_existing and (out_dir / f"{names[i]}.{format}").exists():
            finish(i, Transcript(str(entry.path), model=net.source, skipped=True))
        else:
            todo.append(i)

    def decode(log_probs):
        if decoder is not None:
            return decoder.decode(log_probs, runner.frame_seconds)
        return greedy(log_probs, net.tokenizer, runner.frame_seconds)

    bar = progress(None, "transcribe", "s", quiet, bar_format="{desc}: {n:.0f} s of audio [{elapsed}] {postfix}")
    started, done_files = time.perf_counter(), 0
    for done in runner.run([items[i].path for i in todo], [items[i].samples for i in todo], bar):
        i = todo[done.item]
        path = str(items[i].path)
        if done.outputs is None:
            finish(i, Transcript(path, model=net.source, error=done.error))
            continue
        hyp = decode(done.outputs)
        finish(i, Transcript(path, hyp.text, hyp.words, done.seconds, net.source))
        done_files += 1
        speed = bar.n / max(time.perf_counter() - started, 1e-9)
        bar.set_postfix_str(f"{done_files}/{len(todo)} files, {speed:.1f}x real time")
    bar.close()
    return [r for r in results if r is not None]


def print_transcripts(transcripts: list[Transcript], format: str, stream=None) -> None:
    """To stdout: one file as the format itself; several as TSV lines (txt) or JSON lines (json)."""
    stream = stream or sys.stdout
    ok = [t for t in transcripts if t.error is None and not t.skipped]
    if len(transcripts) == 1 and ok:
        stream.write(render(ok[0], format))
        return
    if format in ("srt", "vtt", "tsv") and len(ok) > 1:
        raise ConfigError(f"--format {format} for several files needs --output-dir (one file per input)")
    for t in ok:
        stream.write(f"{t.path}\t{t.text}\n" if format == "txt" else json.dumps(t.to_dict(), ensure_ascii=False) + "\n")
