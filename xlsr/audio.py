"""Audio in: any file -> 16 kHz mono float32; normalisation; batching.

wav, flac, ogg (Vorbis, Opus) and mp3 are decoded by soundfile (libsndfile); other containers
(m4a, webm, video files) by PyAV when it is installed (`pip install av`). Any sample rate is
resampled with soxr, any number of channels is averaged to mono, integer samples are scaled to
[-1, 1]. Long files can be streamed block by block so memory does not grow with their length.
"""

from __future__ import annotations

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
BLOCK_SECONDS = 30.0  # what stream_audio decodes at a time


def _check_file(path: Path) -> None:
    if not path.exists():
        raise AudioError(path, "no such file")
    if path.is_dir():
        raise AudioError(path, "is a directory, not an audio file")
    if path.stat().st_size == 0:
        raise AudioError(path, "the file is empty (0 bytes)")


def _open_av(path: Path):
    try:
        import av
    except ImportError:
        raise AudioError(
            path, "not a readable audio file for soundfile (wav, flac, ogg, mp3); for m4a/webm/video, pip install av"
        ) from None
    try:
        container = av.open(str(path))
    except Exception as e:  # PyAV raises a family of FFmpeg errors
        raise AudioError(path, f"not a readable audio file ({type(e).__name__}: {e})") from None
    if not container.streams.audio:
        container.close()
        raise AudioError(path, "the file has no audio stream")
    return container


def _av_blocks(path: Path, sample_rate: int) -> Iterator[np.ndarray]:
    """Decode with PyAV, resampled to `sample_rate` mono float32 by FFmpeg's resampler."""
    import av

    container = _open_av(path)
    decoded = False
    try:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        for frame in container.decode(audio=0):
            decoded = True
            for out in resampler.resample(frame):
                yield out.to_ndarray().reshape(-1)
        for out in resampler.resample(None):
            yield out.to_ndarray().reshape(-1)
    except av.error.FFmpegError as e:
        raise AudioError(path, f"corrupt audio ({e})") from None
    finally:
        container.close()
    if not decoded:  # FFmpeg guessed a format from the bytes, but no frame of it decodes
        raise AudioError(path, "no audio frame could be decoded: not an audio file, or corrupt")


def _sf_blocks(f: sf.SoundFile, path: Path, sample_rate: int, block_seconds: float) -> Iterator[np.ndarray]:
    """Read `f` block by block, down-mix, resample with a streaming soxr resampler."""
    resampler = (
        soxr.ResampleStream(f.samplerate, sample_rate, 1, dtype="float32") if f.samplerate != sample_rate else None
    )
    block = max(1, int(block_seconds * f.samplerate))
    while True:
        try:
            data = f.read(block, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as e:
            raise AudioError(path, f"corrupt audio ({e})") from None
        last = len(data) < block
        mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
        if resampler is not None:
            mono = resampler.resample_chunk(mono, last=last)
        if len(mono):
            yield np.ascontiguousarray(mono, dtype=np.float32)
        if last:
            return


def stream_audio(
    path: str | Path, sample_rate: int = SAMPLE_RATE, block_seconds: float = BLOCK_SECONDS
) -> Iterator[np.ndarray]:
    """Yields consecutive blocks (S_i,) float32 of the file as 16 kHz mono; their concatenation is
    what `load_audio` returns. Raises AudioError for a missing, empty, corrupt or non-audio file."""
    path = Path(path)
    _check_file(path)
    try:
        f = sf.SoundFile(path)
    except (sf.LibsndfileError, RuntimeError, TypeError):
        yield from _av_blocks(path, sample_rate)
        return
    with f:
        yield from _sf_blocks(f, path, sample_rate, block_seconds)


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Any audio file -> (S,) float32 mono at `sample_rate`.

    Raises AudioError naming the file for a missing, empty, corrupt, non-audio or silent-length file.
    """
    blocks = list(stream_audio(path, sample_rate))
    audio = np.concatenate(blocks) if blocks else np.zeros(0, np.float32)
    check_waveform(audio, path)
    return audio


def check_waveform(audio: np.ndarray, path: str | Path) -> None:
    if audio.size == 0:
        raise AudioError(path, "contains no audio samples (zero length)")
    if not np.isfinite(audio).all():
        raise AudioError(path, "contains NaN or infinite samples")


def audio_duration(path: str | Path) -> float:
    """Duration in seconds from the file header, without decoding (AudioError if unreadable)."""
    path = Path(path)
    _check_file(path)
    try:
        info = sf.info(str(path))
        if info.frames > 0 and info.samplerate > 0:
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
