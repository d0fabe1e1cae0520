"""`xlsr features`: one (frames, dim) array per audio file, from the final output or any block; with
`pool="mean"`, one (dim,) vector per file instead (the mean over its frames: an utterance embedding for
speaker verification or clustering, scored by cosine similarity).

Files go through the shared inference driver (`driver.py`: one line per bad input, the others written,
atomic writes, --skip-existing) and the window runner (`inference.py`: long recordings in windows of
`chunk_seconds` with `stride_seconds` of context, stitched exactly, so memory holds one batch of windows and
the file's features, never the whole recording's activations).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .audio import normalize
from .checkpoints import inference_model
from .driver import run_inputs, write_atomic
from .errors import ConfigError, OldSpelling
from .inference import FrameCollector, FrameMean, WindowedRunner
from .runtime import audio_progress, set_threads

POOLING = (None, "mean")


@dataclass
class FeatureFile:
    path: str
    output: str | None = None
    shape: tuple[int, ...] = ()
    model: str = ""
    error: str | None = None
    skipped: bool = False
    array: np.ndarray | None = None  # the features, until written

    @property
    def input(self) -> str:  # the name the command line has always printed
        return self.path

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "output": self.output, "shape": list(self.shape), "model": self.model,
                "error": self.error}  # fmt: skip


def _npy(r: FeatureFile, _: str) -> bytes:
    buf = io.BytesIO()
    np.save(buf, r.array)
    return buf.getvalue()


@torch.inference_mode()
def embed(model: nn.Module, waveform: np.ndarray, layer: int | None = None) -> np.ndarray:
    """(S,) float32 16 kHz -> (T, D) float32: the encoder's final output (transformers
    `last_hidden_state`), or with `layer=K` the output of block K (transformers `hidden_states[K]`;
    0 is the input of the first block). One file, whole: `features` streams long files in windows."""
    p = next(model.parameters())
    x = torch.as_tensor(waveform, dtype=torch.float32, device=p.device)[None]
    if model.preprocessing.do_normalize:
        x = normalize(x, eps=model.preprocessing.normalize_eps)
    return model.encode(x.to(p.dtype), num_layers=layer).x[0].float().cpu().numpy()


def features(
    model: str | Path | nn.Module | None,
    audio: list[str | Path],
    output_dir: str | Path | None = None,
    layer: int | None = None,
    pool: str | None = None,
    chunk_seconds: float = 20.0,
    stride_seconds: float = 3.0,
    batch_seconds: float = 60.0,
    device: str | None = None,
    dtype: str | None = None,
    threads: int | None = None,
    skip_existing: bool = False,
    quiet: bool = False,
    out: str | Path | None = None,
    audio_column: str | None = None,
) -> list[FeatureFile]:
    """Writes `output_dir/<name>.npy` per input ((frames, dim) float32, or with `pool="mean"` the (dim,) mean over
    the file's frames, accumulated window by window); one result per input, in input order.

    model: any wav2vec2 model xlsr reads (None: the bundled reference model's encoder). `out` is the old
    spelling: a folder (= output_dir), or a `.npy` file for a single input. `audio_column` names the audio column
    of the data sources among the inputs (`data/sources.py`). A file that cannot be read is
    reported in its result and the others are still written.
    """
    single = None
    if out is not None:
        warnings.warn("features(out=...) / --out is now output_dir / --output-dir", OldSpelling, stacklevel=2)
        if Path(out).suffix == ".npy":
            single = Path(out)
        else:
            output_dir = out
    if output_dir is None and single is None:
        raise ConfigError("features need --output-dir (one .npy per input)")
    if single is not None and (len(audio) != 1 or Path(audio[0]).is_dir() or Path(audio[0]).suffix == ".tsv"):
        raise ConfigError(f"{single}: a single .npy holds one file's features; give --output-dir for several")
    if pool not in POOLING:
        raise ConfigError(f"--pool must be one of {', '.join(p for p in POOLING if p)}, not {pool!r}")
    set_threads(threads)
    net = inference_model(model, device, dtype, kind="asr")
    if not hasattr(net, "encode") or not hasattr(net.cfg, "encoder_layers"):
        raise ConfigError(f"{net.source}: features come from wav2vec2 encoders, not from a {type(net).__name__}")
    if layer is not None and not 0 <= layer <= net.cfg.encoder_layers:
        raise ConfigError(f"--layer must be between 0 and {net.cfg.encoder_layers} for this model, not {layer}")

    def forward(waves, lengths):  # with num_layers=K, x is block K's output
        return net.encode(waves, lengths, num_layers=layer).x

    runner = WindowedRunner.for_model(net, forward, chunk_seconds, stride_seconds, batch_seconds)

    def process(paths, samples):
        bar = audio_progress("features", quiet)
        for done in runner.run(paths, samples, bar, consumer=FrameMean if pool == "mean" else FrameCollector):
            path = str(paths[done.item])
            if done.outputs is None:
                yield done.item, FeatureFile(path, model=net.source, error=done.error)
                continue
            array = done.outputs.astype(np.float32)
            r = FeatureFile(path, shape=array.shape, model=net.source, array=array)
            if single is not None:
                write_atomic(single, _npy(r, "npy"))
                r.output = str(single)
            yield done.item, r
        bar.close()

    if single is not None:
        return run_inputs(audio, process, FeatureFile, net.source, on_result=_drop_array, audio_column=audio_column)
    return run_inputs(audio, process, FeatureFile, net.source, output_dir, "npy", skip_existing, _npy, _drop_array,
                      audio_column=audio_column)  # fmt: skip


def _drop_array(r: FeatureFile) -> None:
    r.array = None  # written: the result keeps its shape and file name only
