"""xlsr.vad: silence, hiss, clicks and noise bursts are no speech; speech is, at any gain and over noise;
pauses split it, and long recordings are cut at pauses (fixed cuts where there are none), block by block."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest
import soundfile as sf
from conftest import speechlike

from xlsr.audio import stream_audio
from xlsr.errors import ConfigError
from xlsr.vad import SpeechDetector, pause_points, stream_pause_points

SR = 16000
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng (Debian package) not installed")


def noise(seconds: float, dbfs: float, colour: float = 0.0, seed: int = 0) -> np.ndarray:
    """Gaussian noise of RMS `dbfs`, power spectrum ~ 1/f**colour (0 white, 1 pink, 2 brown)."""
    n = int(seconds * SR)
    x = np.random.default_rng(seed).standard_normal(n)
    if colour:
        f = np.fft.rfftfreq(n, 1 / SR)
        f[0] = f[1]
        x = np.fft.irfft(np.fft.rfft(x) / f ** (colour / 2), n)
    return (x / x.std() * 10 ** (dbfs / 20)).astype(np.float32)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR), np.float32)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))


def espeak(tmp_path, text: str, voice: str = "en+m3", speed: int = 160, pitch: int = 50) -> np.ndarray:
    """A sentence as `xlsr synth` says it (16 kHz)."""
    from xlsr.synth import Clip, espeak_binary, speak

    path = tmp_path / f"{abs(hash((text, voice, speed, pitch)))}.flac"
    speak(espeak_binary(), Clip("xx", "test", text, voice, speed, pitch, path.name), path)
    return sf.read(path, dtype="float32")[0]


def test_five_minutes_without_speech_are_no_speech_and_take_well_under_a_second_a_minute():
    detector = SpeechDetector()
    cases = {
        "digital silence": silence(300),
        "-60 dBFS hiss": noise(300, -60),
        "a recorder's gate": np.concatenate([silence(60), noise(120, -60), silence(20), noise(100, -60)]),
    }
    for name, audio in cases.items():
        start = time.process_time()  # this process's CPU: the other tests' load does not count
        assert detector.regions(audio) == [], name
        per_minute = (time.process_time() - start) / (len(audio) / SR / 60)
        assert per_minute < 0.5, f"{name}: {per_minute:.2f} s of CPU per minute of audio"
    assert not detector.has_speech(cases["digital silence"]) and detector.speech_seconds(cases["-60 dBFS hiss"]) == 0


def test_stationary_noise_of_any_colour_and_noise_bursts_are_no_speech():
    detector = SpeechDetector()
    for colour in (0, 1, 2):
        for level in (-40, -20):
            assert detector.regions(noise(30, level, colour)) == [], (colour, level)
    burst = np.concatenate([silence(4), noise(1, -20), silence(5)])  # a door, a gust: loud but aperiodic
    assert detector.regions(burst) == []
    t = np.arange(10 * SR) / SR
    hum = sum(np.sin(2 * np.pi * f * t) / k for k, f in enumerate((50, 100, 150, 200), 1))  # mains hum
    assert detector.regions((0.1 * hum).astype(np.float32)) == []


def test_a_tenth_of_a_second_is_no_speech():
    """The issue's case: 0.1 s of audio was German with probability 0.98."""
    detector = SpeechDetector()
    t = np.arange(SR // 10) / SR
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    click = silence(3)
    click[SR] = 0.9
    clips = {
        "0.1 s tone": tone,
        "0.1 s of speechlike sound": speechlike(0.1),
        "a tone in silence": np.concatenate([silence(1), tone, silence(2)]),
        "a click in silence": click,
        "0.1 s noise in silence": np.concatenate([silence(1), noise(0.1, -10), silence(2)]),
    }
    for name, audio in clips.items():
        assert not detector.has_speech(audio), name
        assert detector.speech_seconds(audio) == 0.0, name


@pytest.mark.parametrize("gain", [0.01, 0.03, 0.1, 0.3, 1.0, 1 / 0.3])  # speechlike peaks at 0.3: up to full scale
def test_speechlike_sound_at_any_gain_is_speech(gain):
    detector = SpeechDetector()
    audio = speechlike(3) * gain
    regions = detector.regions(audio)
    assert detector.has_speech(audio)
    assert regions[0][0] == 0.0 and regions[-1][1] == 3.0  # it sounds from the first sample to the last
    alone = detector.regions(np.concatenate([silence(1), audio, silence(1)]))
    assert len(alone) == 1 and 0.9 <= alone[0][0] <= 1.0 and 4.0 <= alone[0][1] <= 4.15


def test_short_words_are_speech():
    detector = SpeechDetector()
    assert detector.has_speech(speechlike(0.3))  # a word cut out tightly: no pause to see the floor in
    assert detector.has_speech(np.concatenate([silence(1), speechlike(0.3), silence(1)]))


def test_speech_over_moderate_noise_is_found():
    speech = np.concatenate([silence(1), speechlike(3), silence(2), speechlike(3, seed=1), silence(1)])
    detector = SpeechDetector()
    for snr in (20, 10, 5):
        noisy = speech + noise(len(speech) / SR, 20 * np.log10(rms(speechlike(3))) - snr, seed=snr)
        regions = detector.regions(noisy)
        assert len(regions) == 2, (snr, regions)
        (a0, a1), (b0, b1) = regions
        assert 0.8 <= a0 <= 1.05 and 3.9 <= a1 <= 4.2 and 5.8 <= b0 <= 6.1 and 8.9 <= b1 <= 9.2, (snr, regions)


def test_a_pause_splits_speech_into_two_regions_and_pause_points_cut_inside_it():
    detector = SpeechDetector()
    for background in (silence(8), noise(8, -50)):  # digital silence, and a quiet room
        audio = np.concatenate([speechlike(3), silence(2), speechlike(3, seed=1)]) + background
        regions = detector.regions(audio)
        assert len(regions) == 2, regions
        assert 3.0 <= regions[0][1] <= 3.2 and 4.8 <= regions[1][0] <= 5.0, regions
        assert regions[1][1] == 8.0
        cuts = pause_points(audio, max_segment_seconds=6.0)
        assert len(cuts) == 1 and 3.2 < cuts[0] < 4.8, cuts
        assert pause_points(audio, max_segment_seconds=8.0) == []  # one piece is short enough


def test_without_a_pause_the_cuts_are_fixed_at_the_longest_piece():
    assert pause_points(speechlike(25), max_segment_seconds=10.0) == [10.0, 20.0]
    assert pause_points(speechlike(25), max_segment_seconds=25.0) == []
    # the 2 s pause at 10-12 s comes first; past it, speech runs on for 23 s
    audio = np.concatenate([speechlike(10), silence(2), speechlike(23, seed=2)])
    cuts = pause_points(audio, max_segment_seconds=15.0)
    assert len(cuts) == 2 and 10.2 < cuts[0] < 11.8 and cuts[1] == cuts[0] + 15.0, cuts


def test_the_cut_goes_to_the_longest_pause_in_the_last_half_of_the_piece():
    pauses = {3.0: 1.5, 8.0: 0.5, 11.0: 1.0}  # starts -> lengths, in a piece allowed 14 s
    parts, t = [], 0.0
    for start, length in pauses.items():
        parts += [speechlike(start - t, seed=int(start)), silence(length)]
        t = start + length
    parts.append(speechlike(20 - t, seed=99))
    audio = np.concatenate(parts)
    cuts = pause_points(audio, min_pause=0.3, max_segment_seconds=14.0)
    # 3-4.5 s is the longest pause but lies in the first half (before 7 s); of 8-8.5 and 11-12, 11-12 is longer
    assert len(cuts) == 1 and 11.2 < cuts[0] < 11.8, cuts
    assert pause_points(audio, min_pause=1.2, max_segment_seconds=14.0)[0] < 4.5  # only 3-4.5 s is long enough


def test_streams_give_the_cuts_and_regions_of_the_whole_recording(tmp_path):
    """Blocks of any size (here through xlsr.audio.stream_audio) give the same result, and what feed
    returns is final: no later region starts before `settled`."""
    rng = np.random.default_rng(0)
    parts = []
    for i in range(14):
        parts += [speechlike(float(rng.uniform(1.0, 6.0)), seed=i), silence(float(rng.choice([0.2, 0.6, 1.5])))]
    audio = np.concatenate(parts) + noise(sum(len(p) for p in parts) / SR, -55)
    sf.write(tmp_path / "long.flac", audio, SR)
    audio = sf.read(tmp_path / "long.flac", dtype="float32")[0]
    whole = SpeechDetector().regions(audio)
    cuts = pause_points(audio, max_segment_seconds=12.0)
    assert len(whole) >= 8 and len(cuts) >= 3
    edges = [0.0, *cuts, len(audio) / SR]
    assert all(0 < b - a <= 12.0 for a, b in zip(edges, edges[1:]))
    for block_seconds in (0.37, 3.0, 30.0):
        detector, streamed, settled = SpeechDetector(), [], 0.0
        for block in stream_audio(tmp_path / "long.flac", block_seconds=block_seconds):
            new = detector.feed(block)
            assert all(start >= settled for start, _ in new)
            streamed += new
            assert detector.settled >= settled
            settled = detector.settled
        streamed += detector.finish()
        assert streamed == whole, block_seconds
        blocks = stream_audio(tmp_path / "long.flac", block_seconds=block_seconds)
        assert list(stream_pause_points(blocks, max_segment_seconds=12.0)) == cuts, block_seconds


@needs_espeak
@pytest.mark.parametrize("voice,pitch", [("en+m3", 50), ("de+m1", 25), ("fr+f2", 75), ("sw+m7", 40)])
def test_espeak_speech_at_any_gain_and_over_noise_is_speech(tmp_path, voice, pitch):
    speech = espeak(tmp_path, "All human beings are born free and equal in dignity and rights.", voice, 160, pitch)
    detector = SpeechDetector()
    loud = detector.regions(speech)
    sounding = np.flatnonzero(np.abs(speech) > 0.01 * np.abs(speech).max()) / SR
    assert loud and loud[0][0] <= sounding[0] + 0.05 and loud[-1][1] >= sounding[-1] - 0.05
    for gain in (0.01, 0.1, 1.0 / np.abs(speech).max()):
        quiet = detector.regions(speech * gain)
        assert detector.has_speech(speech * gain)
        assert abs(sum(b - a for a, b in quiet) - sum(b - a for a, b in loud)) < 0.25, gain
    noisy = speech + noise(len(speech) / SR, 20 * np.log10(rms(speech)) - 10)  # 10 dB SNR
    assert detector.speech_seconds(noisy) > 0.8 * detector.speech_seconds(speech)


@needs_espeak
def test_espeak_sentences_with_a_pause_are_cut_there(tmp_path):
    first = espeak(tmp_path, "Everyone has the right to life, liberty and security of person.")
    second = espeak(tmp_path, "No one shall be held in slavery or servitude.", "en+f3", 150, 60)
    audio = np.concatenate([first, silence(2), second])
    regions = SpeechDetector().regions(audio)
    pause = (len(first) / SR, len(first) / SR + 2)
    assert not any(a < pause[1] - 0.1 and b > pause[0] + 0.1 for a, b in regions)  # nothing inside the pause
    (cut,) = pause_points(audio, max_segment_seconds=len(audio) / SR - 1)
    assert pause[0] < cut < pause[1]


def test_bad_settings_and_shapes_are_refused():
    with pytest.raises(ConfigError, match="pad"):
        SpeechDetector(pad=0.2, min_silence=0.3)
    with pytest.raises(ConfigError, match="max_segment_seconds"):
        pause_points(silence(1), max_segment_seconds=0)
    with pytest.raises(ValueError, match="mono"):
        SpeechDetector().regions(np.zeros((2, SR), np.float32))
    assert SpeechDetector().regions(np.zeros(0, np.float32)) == [] and pause_points(np.zeros(0, np.float32)) == []
