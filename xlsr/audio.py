"""Audio in: any file -> 16 kHz mono float32; normalisation; batching.

wav, flac, ogg (Vorbis, Opus) and mp3 are decoded by soundfile (libsndfile); other containers
(m4a, webm, video files) by PyAV when it is installed (`pip install av`). Any sample rate is
resampled with soxr, any number of channels is averaged to mono, integer samples are scaled to
[-1, 1]. Long files can be streamed block by block so memory does not grow with their length.
An `EncodedAudio` (the bytes of an audio file kept inside another file, such as a row of a Hugging Face
dataset: `data/tables.py`) is decoded from memory by the same decoders, without a temporary file.

The native decoders write their own diagnostics straight to the process's stderr (libmpg123 inside
libsndfile prints "Note: Illegal Audio-MPEG-Header ..." for a text file named .mp3). Every call into them
runs under `_native_quiet`, so a bad file gets xlsr's one line (an AudioError) and nothing else.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch
from torch import Tensor

from .config import SAMPLE_RATE
from .errors import AudioError
from .models.padding import padding_mask

AUDIO_EXTENSIONS = {
    ".wav",
    ".flac",
    ".ogg",
    ".oga",
    ".opus",
    ".mp3",
    ".aiff",
    ".aif",
    ".au",
    ".caf",
    ".w64",
    ".rf64",
    ".m4a",
    ".aac",
    ".webm",
    ".mka",
    ".mkv",
    ".mp4",
    ".mov",
    ".wma",
    ".amr",
}
# what soundfile (libsndfile) cannot read and PyAV (FFmpeg) can: the `[formats]` extra
PYAV_EXTENSIONS = {".m4a", ".aac", ".webm", ".mka", ".mkv", ".mp4", ".mov", ".wma", ".amr"}
BLOCK_SECONDS = 30.0  # what stream_audio decodes at a time
# A header outside these rates is corrupt: at 1 Hz, one second's 16000 frames would become 16000 s of audio.
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1_000, 1_000_000
_SF_FORMATS = "wav, flac, ogg, mp3 or aiff"  # what libsndfile reads
_PYAV_HINT = "pip install av (or pip install 'xlsr[formats]')"


class EncodedAudio:
    """An audio file's encoded bytes kept inside another file (a row of a parquet or Arrow table). `str()` is
    the name messages give it; `suffix` the original file's extension when known. Subclasses: `read_bytes`."""

    suffix = ""

    def read_bytes(self) -> bytes:
        raise NotImplementedError


AudioInput = str | Path | EncodedAudio  # what the functions below read


def _file(path: AudioInput) -> Path | EncodedAudio:
    return path if isinstance(path, EncodedAudio) else Path(path)


def _opened(path: Path | EncodedAudio) -> str | io.BytesIO:
    """What the decoders open: the file's name, or its bytes as a file object."""
    return io.BytesIO(path.read_bytes()) if isinstance(path, EncodedAudio) else str(path)


_quiet_lock = threading.Lock()
_quiet_depth = 0  # how many threads are inside a native call now
_saved_stderr = -1  # a duplicate of the real fd 2 while it points at /dev/null


@contextlib.contextmanager
def _native_quiet() -> Iterator[None]:
    """Points file descriptor 2 at /dev/null for the duration of a native decoder call.

    fd 2 belongs to the whole process, so threads share one redirection: the first to enter makes it,
    the last to leave restores it (under a lock). Keep the block to the native call itself: whatever
    any thread writes to stderr meanwhile is lost.
    """
    global _quiet_depth, _saved_stderr
    with _quiet_lock:
        if _quiet_depth == 0:
            try:
                sys.stderr.flush()  # Python's buffered text goes out before fd 2 moves
            except (AttributeError, OSError, ValueError):
                pass
            try:
                saved = os.dup(2)
            except OSError:  # no fd 2 at all: nothing to keep quiet
                saved = -1
            if saved >= 0:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 2)
                os.close(devnull)
            _saved_stderr = saved
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0 and _saved_stderr >= 0:
                os.dup2(_saved_stderr, 2)
                os.close(_saved_stderr)
                _saved_stderr = -1


_END = object()


def _quietly(it: Iterator) -> Iterator:
    """Yields the items of a native iterator, each pulled under `_native_quiet` (never across a yield)."""
    while True:
        with _native_quiet():
            item = next(it, _END)
        if item is _END:
            return
        yield item


def _check_file(path: Path | EncodedAudio) -> None:
    if isinstance(path, EncodedAudio):
        if not path.read_bytes():
            raise AudioError(path, "the audio is empty (0 bytes)")
        return
    if not path.exists():
        raise AudioError(path, "no such file")
    if path.is_dir():
        raise AudioError(path, "is a directory, not an audio file")
    if path.stat().st_size == 0:
        raise AudioError(path, "the file is empty (0 bytes)")


def _check_rate(path: Path | EncodedAudio, rate: int) -> None:
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioError(
            path, f"implausible sample rate {rate} Hz in the file's header (corrupt?): xlsr reads 1 kHz to 1 MHz"
        )


def _needs_pyav(path: Path | EncodedAudio) -> bool:
    """Whether the file is in a format only PyAV reads: by its name, or by the magic bytes of MP4/M4A
    (`ftyp` box), Matroska/WebM (EBML), ASF/WMA and AMR."""
    if path.suffix.lower() in PYAV_EXTENSIONS:
        return True
    try:
        if isinstance(path, EncodedAudio):
            head = path.read_bytes()[:16]
        else:
            with open(path, "rb") as f:
                head = f.read(16)
    except (OSError, AudioError):
        return False
    return (
        head[4:8] == b"ftyp"
        or head.startswith(b"\x1a\x45\xdf\xa3")
        or head.startswith(b"\x30\x26\xb2\x75\x8e\x66\xcf\x11")
        or head.startswith(b"#!AMR")
    )


def _reason(e: BaseException) -> str:
    """The decoder's own words, on one line, without the path it repeats."""
    text = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
    if text.startswith("Error opening") and ": " in text:  # libsndfile: "Error opening 'x.mp3': File ..."
        text = text.split(": ", 1)[1]
    # FFmpeg: "[Errno 1094995529] Invalid data found when processing input: 'x.mp3'"
    text = re.sub(r"^\[Errno -?\d+\] |: '[^']*'$", "", text)
    return text.rstrip(".")


def _open_av(path: Path | EncodedAudio):
    """Opens `path` with PyAV, after soundfile could not."""
    try:
        import av
    except ImportError:
        if _needs_pyav(path):
            kind = path.suffix.lower()[1:] if path.suffix.lower() in PYAV_EXTENSIONS else "this container format"
            raise AudioError(path, f"{kind} needs PyAV (FFmpeg), which is not installed: {_PYAV_HINT}") from None
        # libsndfile's own reason is often wrong ("not a regular file (possibly a pipe?)" for a bad mp3)
        raise AudioError(path, f"not a readable audio file (not valid {_SF_FORMATS} data)") from None
    try:
        with _native_quiet():
            container = av.open(_opened(path))
    except Exception as e:  # PyAV raises a family of FFmpeg errors
        raise AudioError(
            path, f"not a readable audio file (neither libsndfile nor FFmpeg can decode it: {_reason(e)})"
        ) from None
    if not container.streams.audio:
        container.close()
        raise AudioError(path, "the file has no audio stream")
    return container


def _av_blocks(path: Path | EncodedAudio, sample_rate: int) -> Iterator[np.ndarray]:
    """Decode with PyAV, resampled to `sample_rate` mono float32 by FFmpeg's resampler."""
    container = _open_av(path)  # first: it says what to install when PyAV is missing
    import av

    decoded = False
    try:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        for frame in _quietly(container.decode(audio=0)):
            decoded = True
            with _native_quiet():
                outs = resampler.resample(frame)
            for out in outs:
                yield out.to_ndarray().reshape(-1)
        with _native_quiet():
            outs = resampler.resample(None)
        for out in outs:
            yield out.to_ndarray().reshape(-1)
    except av.error.FFmpegError as e:
        raise AudioError(path, f"corrupt audio ({_reason(e)})") from None
    finally:
        container.close()
    if not decoded:  # FFmpeg guessed a format from the bytes, but no frame of it decodes
        raise AudioError(path, "no audio frame could be decoded: not an audio file, or corrupt")


def _sf_blocks(
    f: sf.SoundFile, path: Path | EncodedAudio, sample_rate: int, block_seconds: float
) -> Iterator[np.ndarray]:
    """Read `f` block by block, down-mix, resample with a streaming soxr resampler."""
    _check_rate(path, f.samplerate)
    resampler = (
        soxr.ResampleStream(f.samplerate, sample_rate, 1, dtype="float32") if f.samplerate != sample_rate else None
    )
    block = max(1, int(block_seconds * f.samplerate))
    while True:
        try:
            with _native_quiet():
                data = f.read(block, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as e:
            raise AudioError(path, f"corrupt audio ({_reason(e)})") from None
        last = len(data) < block
        mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
        if resampler is not None:
            mono = resampler.resample_chunk(mono, last=last)
        if len(mono):
            yield np.ascontiguousarray(mono, dtype=np.float32)
        if last:
            return


def stream_audio(
    path: AudioInput, sample_rate: int = SAMPLE_RATE, block_seconds: float = BLOCK_SECONDS
) -> Iterator[np.ndarray]:
    """Yields consecutive blocks (S_i,) float32 of the file as 16 kHz mono; their concatenation is
    what `load_audio` returns. Raises AudioError for a missing, empty, corrupt or non-audio file."""
    path = _file(path)
    _check_file(path)
    try:
        with _native_quiet():
            f = sf.SoundFile(_opened(path))
    except (sf.LibsndfileError, RuntimeError, TypeError):
        yield from _av_blocks(path, sample_rate)
        return
    with f:
        yield from _sf_blocks(f, path, sample_rate, block_seconds)


def load_audio(path: AudioInput, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Any audio file -> (S,) float32 mono at `sample_rate`.

    Raises AudioError naming the file for a missing, empty, corrupt, non-audio or silent-length file.
    """
    blocks = list(stream_audio(path, sample_rate))
    audio = np.concatenate(blocks) if blocks else np.zeros(0, np.float32)
    check_waveform(audio, path)
    return audio


def check_waveform(audio: np.ndarray, path: AudioInput) -> None:
    if audio.size == 0:
        raise AudioError(path, "contains no audio samples (zero length)")
    if not np.isfinite(audio).all():
        raise AudioError(path, "contains NaN or infinite samples")


def audio_duration(path: AudioInput) -> float:
    """Duration in seconds from the file header, without decoding (AudioError if unreadable)."""
    path = _file(path)
    _check_file(path)
    try:
        with _native_quiet():
            info = sf.info(_opened(path))
        _check_rate(path, info.samplerate)
        if info.frames > 0:
            return info.frames / info.samplerate
        # some mp3 headers carry no frame count: fall through and decode
    except (sf.LibsndfileError, RuntimeError, TypeError):
        container = _open_av(path)
        try:
            stream = container.streams.audio[0]
            if stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base)
            if container.duration is not None:
                return container.duration / 1_000_000
        finally:
            container.close()
    return sum(len(b) for b in stream_audio(path)) / SAMPLE_RATE


def normalize(waveforms: Tensor, lengths: Tensor | None = None, eps: float = 1e-7) -> Tensor:
    """Zero mean, unit variance over each utterance's valid samples; padding stays zero.

    waveforms: (B, S) float, lengths: (B,) long -> (B, S). transformers' Wav2Vec2FeatureExtractor uses
    eps=1e-7; fairseq (F.layer_norm over the waveform) 1e-5: see `Preprocessing.normalize_eps`.
    """
    x = waveforms.float()
    if lengths is None:
        mean = x.mean(-1, keepdim=True)
        var = x.var(-1, unbiased=False, keepdim=True)
        return ((x - mean) / torch.sqrt(var + eps)).to(waveforms.dtype)
    valid = (~padding_mask(lengths, x.shape[-1])).to(x.dtype)  # (B, S)
    n = lengths[:, None].to(x.dtype).clamp(min=1)
    mean = (x * valid).sum(-1, keepdim=True) / n
    var = (((x - mean) * valid) ** 2).sum(-1, keepdim=True) / n
    return ((x - mean) / torch.sqrt(var + eps) * valid).to(waveforms.dtype)


def pad_batch(waveforms: list[np.ndarray] | list[Tensor]) -> tuple[Tensor, Tensor]:
    """Right-pads with zeros: list of (S_i,) -> waveforms (B, S) float32, lengths (B,) long."""
    lengths = torch.tensor([len(w) for w in waveforms], dtype=torch.long)
    batch = torch.zeros(len(waveforms), int(lengths.max()), dtype=torch.float32)
    for i, w in enumerate(waveforms):
        batch[i, : len(w)] = torch.as_tensor(w, dtype=torch.float32)
    return batch, lengths
