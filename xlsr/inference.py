"""Running a model over many files of any length: streaming, windows, length-sorted batches.

Each file is read block by block and cut into overlapping windows (`chunk_seconds` long, with
`stride_seconds` of context on each side, as transformers' ASR pipeline cuts them); windows of many
files are packed into batches bounded by total audio seconds. Windows start on frame boundaries, and
every frame of the file is taken from exactly one window (the one where it is not in the context), so
stitching is exact: a model whose frames only see nearby audio gives the same frames chunked or not.
Memory holds one batch of windows, never a whole recording.

Dimension letters: B windows in a batch, S samples, T frames, K outputs per frame.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .audio import audio_duration, check_waveform, normalize, pad_batch, stream_audio
from .errors import AudioError, ConfigError, XlsrError
from .models import Wav2Vec2Model


@dataclass
class Window:
    item: int  # index of the input it comes from
    audio: np.ndarray  # (S,) float32
    keep: tuple[int, int]  # the frames [a, b) of this window that belong to the output
    last: bool


def windows(
    path: str | Path, item: int, chunk: int, stride: int, frame_stride: int, receptive_field: int, sample_rate: int
) -> Iterator[Window]:
    """Cuts a file into windows of `chunk` samples overlapping by 2 * `stride` (chunk=0: the whole file)."""
    blocks = stream_audio(path, sample_rate)
    buffer = np.zeros(0, np.float32)
    offset = 0  # absolute sample index of buffer[0]
    start, first, exhausted = 0, True, False
    while True:
        # read until the window is complete and we know whether audio follows it
        while not exhausted and (chunk == 0 or len(buffer) + offset <= start + chunk):
            block = next(blocks, None)
            if block is None:
                exhausted = True
            else:
                buffer = np.concatenate([buffer, block])
        total = offset + len(buffer)
        if first:
            check_waveform(buffer, path)
            if total < receptive_field:
                raise AudioError(
                    path,
                    f"too short ({1000 * total / sample_rate:.0f} ms): the model needs at least "
                    f"{1000 * receptive_field / sample_rate:.0f} ms",
                )
        last = chunk == 0 or (exhausted and start + chunk >= total)
        audio = buffer[start - offset :] if chunk == 0 else buffer[start - offset : start - offset + chunk]
        frames = (len(audio) - receptive_field) // frame_stride + 1
        left = 0 if first else stride // frame_stride
        right = frames if last else (chunk - stride) // frame_stride
        yield Window(item, audio, (left, right), last)
        if last:
            return
        first = False
        start += chunk - 2 * stride
        buffer, offset = buffer[start - offset :], start


@dataclass
class Done:
    item: int
    outputs: np.ndarray | None  # (T, K) the file's stitched frame outputs, or None when it failed
    error: str | None = None
    seconds: float = 0.0


class WindowedRunner:
    """Runs `forward` over files in length-sorted batches of windows and yields each file when complete.

    forward: (waveforms (B, S), lengths (B,)) -> (B, T, K) frame outputs, given normalised input.
    """

    def __init__(
        self,
        model: Wav2Vec2Model,
        forward: Callable[[Tensor, Tensor], Tensor],
        chunk_seconds: float = 20.0,
        stride_seconds: float = 3.0,
        batch_seconds: float = 60.0,
    ):
        cfg, pre = model.cfg, model.preprocessing
        self.model, self.forward = model, forward
        self.sample_rate, self.frame_stride = pre.sample_rate, cfg.frame_stride
        self.receptive_field = cfg.receptive_field
        align = lambda seconds: int(round(seconds * pre.sample_rate / cfg.frame_stride)) * cfg.frame_stride  # noqa: E731
        self.chunk, self.stride = align(chunk_seconds), align(stride_seconds)
        if chunk_seconds < 0 or stride_seconds < 0 or batch_seconds <= 0:
            raise ConfigError("--chunk-seconds and --stride-seconds must be >= 0, --batch-seconds > 0")
        if self.chunk and self.stride < cfg.frame_stride:
            raise ConfigError(f"--stride-seconds must be at least one frame ({cfg.frame_stride / pre.sample_rate} s)")
        if self.chunk and self.chunk - 2 * self.stride < cfg.frame_stride:
            raise ConfigError("--chunk-seconds must be longer than twice --stride-seconds")
        if self.chunk and self.chunk < cfg.receptive_field:
            raise ConfigError("--chunk-seconds is shorter than one frame's receptive field")
        self.batch_samples = int(batch_seconds * pre.sample_rate)

    @property
    def frame_seconds(self) -> float:
        return self.frame_stride / self.sample_rate

    def durations(self, paths: list[Path], known: list[int | None]) -> tuple[list[float], dict[int, str]]:
        """Seconds per file (from the manifest's `samples`, else the file header), and errors."""
        seconds, errors = [], {}
        for i, (path, samples) in enumerate(zip(paths, known)):
            try:
                seconds.append(samples / self.sample_rate if samples else audio_duration(path))
            except XlsrError as e:
                seconds.append(0.0)
                errors[i] = str(e).removeprefix(f"{path}: ")
        return seconds, errors

    @torch.inference_mode()
    def _run(self, batch: list[Window]) -> list[np.ndarray]:
        device, dtype = self.model.mask_emb.device, self.model.mask_emb.dtype
        waves, lengths = pad_batch([w.audio for w in batch])
        waves, lengths = waves.to(device), lengths.to(device)
        if self.model.preprocessing.do_normalize:
            waves = normalize(waves, lengths, self.model.preprocessing.normalize_eps)
        out = self.forward(waves.to(dtype), lengths).float().cpu().numpy()
        return [out[i, a:b] for i, (a, b) in enumerate(w.keep for w in batch)]

    def run(self, paths: list[Path], known_samples: list[int | None] | None = None, progress=None) -> Iterator[Done]:
        """Yields a Done per file, longest files first; a file that fails yields its error and the others go on."""
        known_samples = known_samples or [None] * len(paths)
        seconds, errors = self.durations(paths, known_samples)
        for i, message in errors.items():
            yield Done(i, None, message)
        order = sorted((i for i in range(len(paths)) if i not in errors), key=lambda i: -seconds[i])
        pieces: dict[int, list[np.ndarray]] = {}
        failed: set[int] = set()
        batch: list[Window] = []

        def flush() -> Iterator[Done]:
            outputs = self._run(batch)
            for window, frames in zip(batch, outputs):
                if window.item in failed:
                    continue
                pieces[window.item].append(frames)
                if progress is not None:
                    progress.update(len(frames) * self.frame_seconds)
                if window.last:
                    parts = pieces.pop(window.item)
                    yield Done(window.item, np.concatenate(parts), seconds=seconds[window.item])
            batch.clear()

        for i in order:
            pieces[i] = []
            try:
                for window in windows(
                    paths[i], i, self.chunk, self.stride, self.frame_stride, self.receptive_field, self.sample_rate
                ):
                    batch.append(window)
                    if sum(len(w.audio) for w in batch) >= self.batch_samples:
                        yield from flush()
            except XlsrError as e:
                failed.add(i)
                pieces.pop(i, None)
                yield Done(i, None, str(e).removeprefix(f"{paths[i]}: "))
        if batch:
            yield from flush()
