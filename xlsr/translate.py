"""`xlsr translate`: speech in one language -> text in another, with an XLS-R speech-translation model.

The model (`models/speech_translation.py`: XLS-R encoder, adapter, mBART-style decoder) comes from a Hugging
Face `SpeechEncoderDecoderModel` directory or a fairseq `xm_transformer` checkpoint. Files go through the shared
driver (`driver.py`) and the segment runner (`inference.py`: a long recording is cut at pauses into segments of at
most `segment_seconds`, each translated on its own, with its start and end times); generation is
`decoding/generate.py` (fairseq's beam rules, the target-language tag forced first).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from .checkpoints import inference_model
from .checkpoints.hf_st import target_languages
from .decoding.generate import DecoderInference, DecodingOptions, generate
from .driver import Process, check_format, print_results, run_inputs
from .errors import ConfigError
from .inference import SegmentRunner, model_placement
from .models.speech_translation import SpeechTranslationModel
from .runtime import audio_progress, set_threads
from .writers import _timestamp, _wrap

FORMATS = ("txt", "json", "srt", "vtt")
DEFAULT_TARGET = "en_XX"  # as the 21 -> English models and the OpenAI translations API


@dataclass
class Translation:
    path: str
    text: str = ""
    segments: list[tuple[float, float, str]] = field(default_factory=list)  # (start, end, text) per segment
    tokens: list[int] = field(default_factory=list)  # generated ids after the language tag, without </s>
    duration: float = 0.0
    target_lang: str = ""
    model: str = ""
    error: str | None = None
    skipped: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "text": self.text,
            "segments": [{"start": round(s, 3), "end": round(e, 3), "text": t} for s, e, t in self.segments],
            "tokens": self.tokens,
            "duration": round(self.duration, 3),
            "target_lang": self.target_lang,
            "model": self.model,
            "error": self.error,
        }


def render(t: Translation, fmt: str) -> str:
    if fmt == "txt":
        return t.text + "\n"
    if fmt == "json":
        return json.dumps(t.to_dict(), ensure_ascii=False, indent=2) + "\n"
    cues = [(s, e, x) for s, e, x in t.segments if x]
    if fmt == "srt":
        return "\n".join(
            f"{i}\n{_timestamp(s, ',')} --> {_timestamp(e, ',')}\n{_wrap(x)}\n" for i, (s, e, x) in enumerate(cues, 1)
        )
    if fmt == "vtt":
        return "WEBVTT\n\n" + "\n".join(
            f"{_timestamp(s, '.')} --> {_timestamp(e, '.')}\n{_wrap(x)}\n" for s, e, x in cues
        )
    raise ValueError(f"unknown format {fmt!r}")


def translation_model(model: str | Path | nn.Module | None, device: str | None, dtype: str | None) -> nn.Module:
    """Loads a model (None: the bundled speech-translation model) and checks that it translates."""
    net = inference_model(model, device, dtype, kind="st")
    if not isinstance(net, SpeechTranslationModel):
        raise ConfigError(f"{net.source} is not a speech-translation model; use `xlsr transcribe` for CTC models")
    if net.tokenizer is None:
        raise ConfigError(f"{net.source} has no target vocabulary (sentencepiece.bpe.model / dict.txt)")
    return net


def target_id(net: SpeechTranslationModel, target_lang: str | None) -> tuple[int, str]:
    """The language tag to force: --target-lang, else the model's own (generation config), else English."""
    tok, trained = net.tokenizer, target_languages(net)
    if target_lang is None:
        forced = getattr(getattr(net, "generation", None), "forced_bos_token_id", None)
        if forced is not None:
            return forced, tok.tokens[forced]
        if DEFAULT_TARGET not in trained:
            raise ConfigError(f"{net.source}: name the target language with --target-lang ({' '.join(trained)})")
        target_lang = DEFAULT_TARGET
    only = f"{net.source} was fine-tuned to translate into {', '.join(trained)} only"
    try:
        i = tok.lang_id(target_lang)
    except ConfigError as e:  # unknown or ambiguous in the vocabulary
        if trained == tok.languages:
            raise
        raise ConfigError(f"{only}; --target-lang {target_lang}: {str(e).split(';')[0]}") from None
    if i not in {tok.lang_id(c) for c in trained}:
        raise ConfigError(f"{only}, not {tok.tokens[i]} (--target-lang {target_lang})")
    return i, tok.tokens[i]


class _Joined:
    """A file's consumer: its segments' hypotheses, joined."""

    def __init__(self, net: SpeechTranslationModel, eos: int):
        self.net, self.eos, self.segments, self.tokens = net, eos, [], []

    def add(self, piece) -> None:
        start, end, hyp = piece
        ids = [t for t in hyp.tokens[1:] if t != self.eos] if hyp is not None else []
        self.tokens.extend(ids)
        self.segments.append((start, end, self.net.tokenizer.decode(ids)))

    def finish(self):
        return self.segments, self.tokens


def translate(
    model: str | Path | nn.Module | None,
    audio: list[str | Path],
    target_lang: str | None = None,
    output_dir: str | Path | None = None,
    format: str = "txt",
    beam_size: int = 5,
    max_new_tokens: int | None = None,
    max_len_a: float = 0.0,
    max_len_b: int = 200,
    min_len: int = 1,
    length_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
    segment_seconds: float = 30.0,
    batch_seconds: float = 60.0,
    device: str | None = None,
    dtype: str | None = None,
    threads: int | None = None,
    skip_existing: bool = False,
    quiet: bool = False,
    audio_column: str | None = None,
) -> list[Translation]:
    """Translates files, folders and manifests; one Translation per input, in input order.

    model: any speech-translation model xlsr reads (None: the bundled reference model, de/es/fr/it -> en).
    target_lang: mBART-50 code (`de_DE`) or ISO 639-1 (`de`); default: the model's own target, else English.
    Decoding options are fairseq's (`DecodingOptions`): `max_len_a * frames + max_len_b` bounds the output, and
    `max_new_tokens` caps it. A file that cannot be read gets `error` set; every other file is still done.
    `audio` may hold the data sources of `data/sources.py` (`audio_column` names their audio column).
    """
    check_format(format, FORMATS)
    set_threads(threads)
    net = translation_model(model, device, dtype)
    process = translator(net, target_lang=target_lang, beam_size=beam_size, max_new_tokens=max_new_tokens,
                         max_len_a=max_len_a, max_len_b=max_len_b, min_len=min_len, length_penalty=length_penalty,
                         no_repeat_ngram_size=no_repeat_ngram_size, segment_seconds=segment_seconds,
                         batch_seconds=batch_seconds, quiet=quiet)  # fmt: skip
    return run_inputs(audio, process, Translation, net.source, output_dir, format, skip_existing, render,
                      audio_column=audio_column)  # fmt: skip


def translator(
    net: SpeechTranslationModel,
    *,
    target_lang: str | None,
    beam_size: int,
    max_new_tokens: int | None,
    max_len_a: float,
    max_len_b: int,
    min_len: int,
    length_penalty: float,
    no_repeat_ngram_size: int,
    segment_seconds: float,
    batch_seconds: float,
    quiet: bool,
    batching: Callable | None = None,
) -> Process:
    """`translate`'s work on a loaded speech-translation model, as the `process` of `driver.run_inputs` (the
    options as `translate`'s); also what `xlsr serve` runs on each upload. `batching(forward, key)` wraps the
    runner's forward (the server's cross-request batcher, `server/batching.py`); None: the model is called
    directly."""
    tag, tag_name = target_id(net, target_lang)
    cfg = net.cfg
    options = DecodingOptions(
        beam_size=beam_size, max_new_tokens=max_new_tokens, max_len_a=max_len_a, max_len_b=max_len_b,
        min_len=min_len, length_penalty=length_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
        prefix_tokens=(tag,), decoder_start_id=cfg.decoder_start_token_id, eos_id=cfg.eos_token_id,
        pad_id=cfg.pad_token_id,
    )  # fmt: skip

    def forward(waves, lengths):
        encoder_out, padding = net.encode_by_length(waves, lengths)  # little work on padding; decoded as one batch
        return [h[0] if h else None for h in generate(DecoderInference(net.decoder, encoder_out, padding), options)]

    if batching is not None:
        forward = batching(forward, options)
    device_, dtype_ = model_placement(net)
    runner = SegmentRunner(net.preprocessing.sample_rate, net.preprocessing, forward, device_, dtype_,
                           segment_seconds, batch_seconds, cfg.encoder.receptive_field)  # fmt: skip
    lang = tag_name.removeprefix("<lang:").removesuffix(">")

    def process(paths, samples):
        bar = audio_progress("translate", quiet)
        for done in runner.run(paths, samples, bar, consumer=lambda: _Joined(net, cfg.eos_token_id)):
            path = str(paths[done.item])
            if done.outputs is None:
                yield done.item, Translation(path, model=net.source, error=done.error)
                continue
            segments, tokens = done.outputs
            text = " ".join(x for _, _, x in segments if x)
            yield done.item, Translation(path, text, segments, tokens, done.seconds, lang, net.source)
        bar.close()

    return process


def print_translations(results: list[Translation], format: str, stream=None) -> None:
    """To stdout, the same shape for any number of files: `path<TAB>text` lines (txt), JSON Lines (json)."""
    print_results(results, format, lambda t: f"{t.path}\t{t.text}", render, stream)
