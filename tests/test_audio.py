"""Audio in: every format and rate the tests can write (soundfile; PyAV for m4a), stereo, integer
samples, streaming, normalisation, and each kind of bad file."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from xlsr.audio import audio_duration, load_audio, normalize, pad_batch, stream_audio
from xlsr.errors import AudioError


def tone(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(x: np.ndarray, rate: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[spectrum.argmax()])


FORMATS = [  # (suffix, soundfile format, subtype, rate, channels, length tolerance in samples at 16 kHz)
    (".wav", "WAV", "PCM_16", 16000, 1, 0),
    (".wav", "WAV", "PCM_24", 44100, 2, 1),
    (".wav", "WAV", "FLOAT", 8000, 1, 1),
    (".wav", "WAV", "PCM_U8", 22050, 1, 1),
    (".flac", "FLAC", "PCM_16", 48000, 2, 1),
    (".ogg", "OGG", "VORBIS", 32000, 1, 400),
    (".opus", "OGG", "OPUS", 48000, 2, 800),
    (".mp3", "MP3", "MPEG_LAYER_III", 44100, 1, 2400),
]


@pytest.mark.parametrize("suffix, fmt, subtype, rate, channels, tolerance", FORMATS)
def test_every_format_and_rate_becomes_16k_mono(tmp_path, suffix, fmt, subtype, rate, channels, tolerance):
    x = tone(440, 1.5, rate)
    data = np.stack([x] * channels, axis=1) if channels > 1 else x
    path = tmp_path / f"a{suffix}"
    sf.write(path, data, rate, format=fmt, subtype=subtype)
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - 24000) <= tolerance
    assert abs(peak_hz(audio) - 440) < 5
    assert 0.35 < np.abs(audio).max() < 0.65  # integer samples scaled to [-1, 1], not to their integer range
    assert abs(audio_duration(path) - 1.5) < 0.06


def test_m4a_through_pyav(tmp_path):
    av = pytest.importorskip("av")
    path = tmp_path / "a.m4a"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=44100)
        stream.layout = "stereo"
        x = tone(440, 1.0, 44100)
        frame = av.AudioFrame.from_ndarray(np.stack([x, x]).astype(np.float32), format="fltp", layout="stereo")
        frame.sample_rate = 44100
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    audio = load_audio(path)
    assert abs(len(audio) - 16000) < 1600 and abs(peak_hz(audio) - 440) < 5
    assert abs(audio_duration(path) - 1.0) < 0.1


def test_stereo_is_averaged(tmp_path):
    left, right = tone(300, 1.0, 16000, 0.4), tone(1200, 1.0, 16000, 0.4)
    sf.write(tmp_path / "s.wav", np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(tmp_path / "s.wav"), (left + right) / 2, atol=1e-6)


def test_streaming_concatenates_to_the_whole_file_and_resamples_like_soxr(tmp_path):
    x = tone(523, 7.3, 44100) + 0.01 * np.random.default_rng(0).standard_normal(int(7.3 * 44100)).astype(np.float32)
    sf.write(tmp_path / "long.wav", x, 44100, subtype="FLOAT")
    blocks = list(stream_audio(tmp_path / "long.wav", block_seconds=1.0))
    assert len(blocks) >= 7
    whole = soxr.resample(x, 44100, 16000)
    streamed = np.concatenate(blocks)
    assert len(streamed) == len(whole)
    np.testing.assert_allclose(streamed, whole, atol=1e-4)
    np.testing.assert_array_equal(load_audio(tmp_path / "long.wav"), streamed)


@pytest.mark.parametrize(
    "make, cause",
    [
        (lambda p: None, "no such file"),
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_text("this is a text file, not audio\n" * 20), "not a readable audio file"),
        (lambda p: sf.write(p, np.zeros(0, np.float32), 16000), "no audio samples"),
        (lambda p: p.write_bytes(np.random.default_rng(0).bytes(50_000)), "not a readable audio file"),
        (lambda p: sf.write(p, np.array([0.1, np.nan, 0.2] * 100, np.float32), 16000, subtype="FLOAT"), "NaN"),
        (lambda p: p.mkdir(), "is a directory"),
    ],
)
def test_bad_files_raise_one_line_errors_naming_the_file(tmp_path, make, cause):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(AudioError, match=cause) as e:
        load_audio(path)
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


def test_random_bytes_that_ffmpeg_opens_but_cannot_decode_are_named_as_such(tmp_path):
    path = tmp_path / "noise.flac"  # FFmpeg guesses a format for these bytes, then decodes no frame
    path.write_bytes(np.random.default_rng(0).bytes(50_000))
    with pytest.raises(AudioError, match="no audio frame could be decoded: not an audio file, or corrupt"):
        load_audio(path)


def test_truncated_file_is_an_error_or_its_readable_part(tmp_path):
    sf.write(tmp_path / "full.flac", tone(440, 2.0, 16000), 16000)
    data = (tmp_path / "full.flac").read_bytes()
    (tmp_path / "cut.flac").write_bytes(data[: len(data) // 3])
    try:
        audio = load_audio(tmp_path / "cut.flac")
    except AudioError as e:
        assert "cut.flac" in str(e)
    else:  # a decoder may return the frames before the cut
        assert 0 < len(audio) < 32000


def test_normalize_uses_only_the_valid_samples_and_keeps_padding_zero():
    a, b = np.random.default_rng(1).normal(3, 2, 800), np.random.default_rng(2).normal(-1, 0.5, 500)
    wave, lengths = pad_batch([a, b])
    out = normalize(wave, lengths)
    for i, x in enumerate((a, b)):
        expected = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
        np.testing.assert_allclose(out[i, : len(x)].numpy(), expected, atol=1e-5)
    assert torch.all(out[1, 500:] == 0)
    fairseq_style = (a - a.mean()) / np.sqrt(a.var() + 1e-5)
    np.testing.assert_allclose(normalize(wave[:1], eps=1e-5)[0].numpy(), fairseq_style, atol=1e-5)


# A script run in its own process, so that what native decoders write to file descriptor 2 is really seen:
# it reads a text file named .mp3 (libmpg123 inside libsndfile prints "Note: Illegal Audio-MPEG-Header ...")
# with PyAV and then as a base install without it, and prints xlsr's errors the way the CLI does.
_DECODE_TEXT_MP3 = """
import sys
from pathlib import Path
from xlsr.audio import audio_duration, load_audio, stream_audio
from xlsr.errors import XlsrError
path = Path(sys.argv[1])
for pyav in (True, False):
    if not pyav:
        sys.modules["av"] = None  # a base install, without the [formats] extra
    for read in (load_audio, audio_duration, lambda p: list(stream_audio(p))):
        try:
            read(path)
        except XlsrError as e:
            print(f"xlsr: error: {e}", file=sys.stderr)
print("stderr works after decoding", file=sys.stderr)
"""


def test_native_decoders_print_nothing_only_xlsr_speaks(tmp_path):
    """A text file named .mp3: exactly xlsr's one line per call on stderr, no decoder chatter, no install hint."""
    path = tmp_path / "notes.mp3"
    path.write_text("this is a text file, not audio\n" * 50)
    run = subprocess.run([sys.executable, "-c", _DECODE_TEXT_MP3, str(path)], capture_output=True, text=True)
    lines = run.stderr.splitlines()
    assert run.returncode == 0 and len(lines) == 7, run.stderr
    assert all(line.startswith(f"xlsr: error: {path}: not a readable audio file") for line in lines[:6]), lines
    assert lines[6] == "stderr works after decoding"
    assert "Illegal" not in run.stderr and "Note:" not in run.stderr and "pip install" not in run.stderr


def test_decoding_in_threads_keeps_the_process_stderr(tmp_path, capfd):
    """fd 2 is shared by all threads: concurrent decodes of bad and good files print nothing, and stderr
    works afterwards."""
    (tmp_path / "bad.mp3").write_text("this is a text file, not audio\n" * 50)
    sf.write(tmp_path / "good.mp3", tone(440, 0.5, 16000), 16000, format="MP3")
    errors = []

    def work(i: int) -> None:
        for _ in range(10):
            try:
                load_audio(tmp_path / ("bad.mp3" if i % 2 else "good.mp3"))
            except AudioError as e:
                errors.append(str(e))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    os.write(2, b"still here\n")
    assert capfd.readouterr().err == "still here\n"
    assert len(errors) == 30 and all("bad.mp3: not a readable audio file" in e for e in errors)


def _m4a_bytes() -> bytes:
    """The start of an MP4/M4A file (an `ftyp` box), then junk: a format only PyAV reads."""
    return b"\x00\x00\x00\x20ftypM4A \x00\x00\x02\x00M4A mp42isom" + bytes(200)


@pytest.mark.parametrize(
    "name, content, hint",
    [
        ("clip.m4a", b"text named m4a\n" * 20, True),  # a PyAV format by its name...
        ("clip.webm", b"text named webm\n" * 20, True),
        ("clip.audio", _m4a_bytes(), True),  # ...or by its bytes
        ("notes.mp3", b"text named mp3\n" * 20, False),  # formats libsndfile reads: corrupt, not missing PyAV
        ("notes.wav", b"text named wav\n" * 20, False),
        ("notes.flac", b"text named flac\n" * 20, False),
        ("notes.ogg", b"text named ogg\n" * 20, False),
        ("cut.wav", None, False),  # a wav whose data was cut off inside its header
    ],
)
def test_the_pyav_hint_only_when_the_format_needs_it_and_pyav_is_missing(tmp_path, monkeypatch, name, content, hint):
    path = tmp_path / name
    if content is None:
        sf.write(tmp_path / "full.wav", tone(440, 0.5, 16000), 16000)
        content = (tmp_path / "full.wav").read_bytes()[:30]
    path.write_bytes(content)
    monkeypatch.setitem(sys.modules, "av", None)  # a base install, without the [formats] extra
    for read in (load_audio, audio_duration, lambda p: list(stream_audio(p))):
        with pytest.raises(AudioError) as e:
            read(path)
        message = str(e.value)
        assert message.startswith(f"{path}: ") and "\n" not in message
        assert ("pip install av" in message and "xlsr[formats]" in message) is hint, message
        if not hint:
            assert "not a readable audio file" in message and "pip install" not in message


def test_no_pyav_hint_for_files_pyav_could_not_read(tmp_path):
    pytest.importorskip("av")
    for name in ("clip.m4a", "notes.mp3"):
        (tmp_path / name).write_bytes(b"not audio\n" * 30)
        with pytest.raises(AudioError, match="not a readable audio file") as e:
            load_audio(tmp_path / name)
        assert "pip install" not in str(e.value)


def test_an_implausible_sample_rate_in_the_header_is_an_error(tmp_path):
    """A corrupt header that says 10 Hz would turn 2000 frames into 200 s of audio (3.2 M samples)."""
    sf.write(tmp_path / "slow.wav", np.zeros(2000, np.float32), 10)
    for read in (load_audio, audio_duration, lambda p: list(stream_audio(p))):
        with pytest.raises(AudioError, match="slow.wav: implausible sample rate 10 Hz"):
            read(tmp_path / "slow.wav")
