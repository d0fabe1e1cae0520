"""Running a model over many files of any length: streaming, windows, length-sorted batches.

Each file is read block by block and cut into overlapping windows (`chunk_seconds` long, with
`stride_seconds` of context on each side, as transformers' ASR pipeline cuts them); windows of many
files are packed into batches bounded by total audio seconds. Windows start on frame boundaries, and
every frame of the file is taken from exactly one window (the one where it is not in the context), so
stitching is exact: a model whose frames only see nearby audio gives the same frames chunked or not.
Memory holds one batch of windows, never a whole recording: each window's frames go to its file's
consumer as soon as its batch is done (a streaming CTC decoder, a running mean of class probabilities),
so nothing the size of the recording's frame outputs is ever held.

The runners see the audio geometry, the preprocessing and a forward function, never the model class:
`WindowedRunner` maps windows to frame outputs (CTC, classification, features); `SegmentRunner` maps
whole utterances, or segments of long ones, to one output each (sequence-to-sequence models).

Dimension letters: B windows in a batch, S samples, T frames, K outputs per frame.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from .audio import audio_duration, check_waveform, normalize, pad_batch, stream_audio
from .config import Preprocessing
from .errors import AudioError, ConfigError, XlsrError


@dataclass(frozen=True)
class Geometry:
    """How samples map to frames: `frame_stride` samples per frame, `receptive_field` samples seen by one."""

    sample_rate: int
    frame_stride: int
    receptive_field: int

    @classmethod
    def of(cls, model: nn.Module) -> Geometry:
        cfg = model.cfg.encoder if hasattr(model.cfg, "encoder") else model.cfg
        return cls(model.preprocessing.sample_rate, cfg.frame_stride, cfg.receptive_field)

    @property
    def frame_seconds(self) -> float:
        return self.frame_stride / self.sample_rate


def prepare_batch(
    audio: list[np.ndarray], preprocessing: Preprocessing, device: torch.device | str, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """The one way a batch reaches a model: list of (S_i,) -> zero-padded (B, S) on `device` in `dtype`,
    normalised as `preprocessing` says over each item's valid samples, and lengths (B,) long."""
    waves, lengths = pad_batch(audio)
    waves, lengths = waves.to(device), lengths.to(device)
    if preprocessing.do_normalize:
        waves = normalize(waves, lengths, preprocessing.normalize_eps)
    return waves.to(dtype), lengths


def model_placement(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """The device and floating dtype a model's weights are on."""
    p = next(model.parameters())
    return p.device, p.dtype


class Consumer(Protocol):
    """Takes one file's outputs piece by piece, in order, and gives the file's result at the end."""

    def add(self, outputs: Any) -> None: ...
    def finish(self) -> Any: ...


class WithSpeech:
    """Wraps a file's consumer and also gives the file's audio, as it streams, to a speech detector (`vad.py`):
    `finish()` -> (the inner consumer's result, seconds of speech in the file)."""

    def __init__(self, inner: Consumer, sample_rate: int):
        from .vad import SpeechDetector

        self.inner, self.detector, self.regions = inner, SpeechDetector(sample_rate), []

    def add(self, outputs: Any) -> None:
        self.inner.add(outputs)

    def audio(self, samples: np.ndarray) -> None:
        self.regions += self.detector.feed(samples)

    def finish(self) -> tuple[Any, float]:
        self.regions += self.detector.finish()
        return self.inner.finish(), sum(end - start for start, end in self.regions)


MIN_SPEECH_SECONDS = 0.25  # less than this in a file is "no speech": no transcript, no label


class FrameCollector:
    """The consumer that keeps every frame: (T, K) for the whole file (tests, short files)."""

    def __init__(self) -> None:
        self.parts: list[np.ndarray] = []

    def add(self, frames: np.ndarray) -> None:
        self.parts.append(frames)

    def finish(self) -> np.ndarray:
        return np.concatenate(self.parts)


class FrameMean:
    """The consumer that keeps a running mean of the frames: (K,) for the whole file, in float64 while it
    sums (identify's class probabilities, `features --pool mean`); memory does not grow with the file."""

    def __init__(self) -> None:
        self.total: np.ndarray | float = 0.0
        self.frames = 0

    def add(self, frames: np.ndarray) -> None:
        self.total = self.total + frames.sum(0, dtype=np.float64)
        self.frames += len(frames)

    def finish(self) -> np.ndarray:
        return np.asarray(self.total / max(self.frames, 1))


@dataclass
class Window:
    item: int  # index of the input it comes from
    audio: np.ndarray  # (S,) float32
    keep: tuple[int, int]  # the frames [a, b) of this window that belong to the output
    last: bool
    fresh: np.ndarray | None = None  # the samples no earlier window of the file had (the speech detector's)


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
        yield Window(item, audio, (left, right), last, audio if first else audio[2 * stride :])
        if last:
            return
        first = False
        start += chunk - 2 * stride
        buffer, offset = buffer[start - offset :], start


@dataclass
class Done:
    item: int
    outputs: Any  # what the file's consumer finished with (default: the (T, K) stitched frames); None: failed
    error: str | None = None
    seconds: float = 0.0


class WindowedRunner:
    """Runs `forward` over files in length-sorted batches of windows; each window's frames go to its file's
    consumer as soon as its batch is done, and each file is yielded when its last window is.

    forward: (waveforms (B, S), lengths (B,)) -> (B, T, K) frame outputs, given prepared input (`prepare_batch`).
    """

    def __init__(
        self,
        geometry: Geometry,
        preprocessing: Preprocessing,
        forward: Callable[[Tensor, Tensor], Tensor],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        chunk_seconds: float = 20.0,
        stride_seconds: float = 3.0,
        batch_seconds: float = 60.0,
    ):
        g = geometry
        self.geometry, self.preprocessing, self.forward = g, preprocessing, forward
        self.device, self.dtype = device, dtype
        self.sample_rate, self.frame_stride, self.receptive_field = g.sample_rate, g.frame_stride, g.receptive_field
        align = lambda seconds: int(round(seconds * g.sample_rate / g.frame_stride)) * g.frame_stride  # noqa: E731
        self.chunk, self.stride = align(chunk_seconds), align(stride_seconds)
        if chunk_seconds < 0 or stride_seconds < 0 or batch_seconds <= 0:
            raise ConfigError("--chunk-seconds and --stride-seconds must be >= 0, --batch-seconds > 0")
        if self.chunk and self.stride < g.frame_stride:
            raise ConfigError(f"--stride-seconds must be at least one frame ({g.frame_seconds} s)")
        if self.chunk and self.chunk - 2 * self.stride < g.frame_stride:
            raise ConfigError("--chunk-seconds must be longer than twice --stride-seconds")
        if self.chunk and self.chunk < g.receptive_field:
            raise ConfigError("--chunk-seconds is shorter than one frame's receptive field")
        self.batch_samples = int(batch_seconds * g.sample_rate)

    @classmethod
    def for_model(cls, model: nn.Module, forward: Callable[[Tensor, Tensor], Tensor], *args, **kwargs):
        """A runner with the model's geometry, preprocessing, device and dtype."""
        device, dtype = model_placement(model)
        return cls(Geometry.of(model), model.preprocessing, forward, device, dtype, *args, **kwargs)

    @property
    def frame_seconds(self) -> float:
        return self.geometry.frame_seconds

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
        waves, lengths = prepare_batch([w.audio for w in batch], self.preprocessing, self.device, self.dtype)
        out = self.forward(waves, lengths).float().cpu().numpy()
        return [out[i, a:b] for i, (a, b) in enumerate(w.keep for w in batch)]

    def run(
        self,
        paths: list[Path],
        known_samples: list[int | None] | None = None,
        progress=None,
        consumer: Callable[[], Consumer] = FrameCollector,
    ) -> Iterator[Done]:
        """Yields a Done per file, longest files first; a file that fails yields its error and the others go on.
        `consumer()` makes each file's consumer: it gets the file's frames window by window, in order."""
        known_samples = known_samples or [None] * len(paths)
        seconds, errors = self.durations(paths, known_samples)
        _set_total(progress, seconds)
        for i, message in errors.items():
            yield Done(i, None, message)
        order = sorted((i for i in range(len(paths)) if i not in errors), key=lambda i: -seconds[i])
        consumers: dict[int, Consumer] = {}
        failed: set[int] = set()
        batch: list[Window] = []

        def flush() -> Iterator[Done]:
            outputs = self._run(batch)
            for window, frames in zip(batch, outputs):
                if window.item in failed:
                    continue
                consumers[window.item].add(frames)
                if hasattr(consumers[window.item], "audio"):
                    consumers[window.item].audio(window.fresh)
                if progress is not None:
                    progress.update(len(frames) * self.frame_seconds)
                if window.last:
                    yield Done(window.item, consumers.pop(window.item).finish(), seconds=seconds[window.item])
            batch.clear()

        for i in order:
            consumers[i] = consumer()
            try:
                for window in windows(
                    paths[i], i, self.chunk, self.stride, self.frame_stride, self.receptive_field, self.sample_rate
                ):
                    batch.append(window)
                    if sum(len(w.audio) for w in batch) >= self.batch_samples:
                        yield from flush()
            except XlsrError as e:
                failed.add(i)
                consumers.pop(i, None)
                yield Done(i, None, str(e).removeprefix(f"{paths[i]}: "))
        if batch:
            yield from flush()


def _set_total(progress, seconds: list[float]) -> None:
    """Gives a progress bar its total (seconds of audio), so that it shows the ETA."""
    if progress is not None and hasattr(progress, "total"):
        progress.total = sum(seconds)
        progress.refresh()


@dataclass
class Segment:
    item: int  # index of the input it comes from
    audio: np.ndarray  # (S,) float32
    start: float  # seconds from the start of the file
    end: float
    last: bool


class SegmentRunner:
    """Runs `forward` over whole utterances, or segments of long ones, in length-sorted batches; each segment's
    output goes to its file's consumer as `(start, end, output)`, in order (sequence-to-sequence models).

    A file no longer than `segment_seconds` is one segment; a longer one is cut at pauses where it has them
    (`vad.pause_points`), else at fixed points, into pieces of at most `segment_seconds`.
    forward: (waveforms (B, S), lengths (B,)) -> a list of B outputs, given prepared input (`prepare_batch`).
    """

    def __init__(
        self,
        sample_rate: int,
        preprocessing: Preprocessing,
        forward: Callable[[Tensor, Tensor], list[Any]],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        segment_seconds: float = 30.0,
        batch_seconds: float = 60.0,
        min_samples: int = 400,
    ):
        if segment_seconds <= 0 or batch_seconds <= 0:
            raise ConfigError("--segment-seconds and --batch-seconds must be > 0")
        self.sample_rate, self.preprocessing, self.forward = sample_rate, preprocessing, forward
        self.device, self.dtype, self.min_samples = device, dtype, min_samples
        self.segment_seconds, self.batch_samples = segment_seconds, int(batch_seconds * sample_rate)

    def segments(self, path: Path, item: int) -> Iterator[Segment]:
        from .vad import pause_points

        audio = np.concatenate([np.zeros(0, np.float32), *stream_audio(path, self.sample_rate)])
        check_waveform(audio, path)
        if len(audio) < self.min_samples:
            raise AudioError(path, f"too short ({1000 * len(audio) / self.sample_rate:.0f} ms)")
        seconds = len(audio) / self.sample_rate
        cuts = [] if seconds <= self.segment_seconds else pause_points(audio, max_segment_seconds=self.segment_seconds)
        bounds = [0.0, *[c for c in cuts if 0 < c < seconds], seconds]
        pieces = [(a, b) for a, b in zip(bounds, bounds[1:]) if (b - a) * self.sample_rate >= self.min_samples]
        for k, (a, b) in enumerate(pieces):
            piece = audio[int(round(a * self.sample_rate)) : int(round(b * self.sample_rate))]
            yield Segment(item, piece, a, b, k == len(pieces) - 1)

    @torch.inference_mode()
    def _run(self, batch: list[Segment]) -> list[Any]:
        waves, lengths = prepare_batch([s.audio for s in batch], self.preprocessing, self.device, self.dtype)
        return self.forward(waves, lengths)

    def run(
        self, paths: list[Path], known_samples: list[int | None] | None = None, progress=None, consumer=FrameCollector
    ) -> Iterator[Done]:
        """Yields a Done per file, longest first; a file that fails yields its error and the others go on."""
        seconds, errors = WindowedRunner.durations(self, paths, known_samples or [None] * len(paths))
        _set_total(progress, seconds)
        for i, message in errors.items():
            yield Done(i, None, message)
        order = sorted((i for i in range(len(paths)) if i not in errors), key=lambda i: -seconds[i])
        consumers: dict[int, Consumer] = {}
        batch: list[Segment] = []

        def flush() -> Iterator[Done]:
            for segment, output in zip(batch, self._run(batch)):
                consumers[segment.item].add((segment.start, segment.end, output))
                if progress is not None:
                    progress.update(segment.end - segment.start)
                if segment.last:
                    yield Done(segment.item, consumers.pop(segment.item).finish(), seconds=seconds[segment.item])
            batch.clear()

        for i in order:
            try:
                pieces = list(self.segments(paths[i], i))
            except XlsrError as e:
                yield Done(i, None, str(e).removeprefix(f"{paths[i]}: "))
                continue
            consumers[i] = consumer()
            for segment in pieces:
                batch.append(segment)
                if sum(len(s.audio) for s in batch) >= self.batch_samples:
                    yield from flush()
        if batch:
            yield from flush()
