"""Speech or no speech: a voice-activity detector, and the pause points that cut long recordings.

`identify` and `transcribe` ask `has_speech` before trusting a label or a transcript (five minutes of
silence must not come out as Dutch); `translate` cuts long recordings at `pause_points`.

The detector is a gate on two measurements per 10 ms frame (48 ms Hann windows), in NumPy alone:

1. **Energy** over 100 Hz (dB re full scale; hum and rumble left out, fricatives kept), against a **noise
   floor** estimated from the recording itself: the 10th percentile of the frame energies within 2 s of
   each half second. A frame is *loud* when it is 3 dB over that floor and over an absolute floor
   (-80 dBFS). Stationary noise of any colour and level (hum, fan, -60 dBFS hiss) never is; speech at any
   gain is, as syllables rise over the pauses and troughs around them. The floor is local, so it follows a
   room that gets noisier, and a stretch of digital silence lowers it for 2 s around it only.
2. **Periodicity**: the peak, over voice pitches 62.5-500 Hz, of the autocorrelation of the frame's
   compressed spectrum between 100 Hz and 4 kHz (|X|^0.5, "generalised autocorrelation", which takes a
   spectral tilt out: brown noise is as aperiodic as white), corrected for the window's own fading as
   Praat does. A stretch of loud frames counts as speech only when enough of them are voiced (0.05 s and
   5% of them): noise that rises over the floor (a door, wind, hiss after digital silence) is not speech.
   Voiced frames need only 1 dB over the floor, so that a word cut out tightly, with no pause around it
   to show the floor's level, is still speech.

Loud frames closer than `min_silence` join into a region; a region needs `min_speech` of sound (a 0.1 s
click or tone never has it) and gets `pad` either side.

Why a gate and not a learned model: silero-vad 6.2.3 (MIT, weights inside its 11 MB wheel, needs only
torch>=1.12, not torchaudio, so it would leave torch alone) was tried here. On the same minute of audio,
in the same run, it took 8 s of CPU where this gate takes 0.2 s: an LSTM over 32 ms chunks is sequential
by nature, and transcribing a long file would pay that again per pass. It also calls
`torch.set_num_threads(1)` when imported, which would slow every xlsr model in the process, and loads a
TorchScript program through `torch.jit.load`, which torch 2.13 warns is deprecated. webrtcvad (GMMs in C,
no weights; the original package unreleased since 2017, continued as webrtcvad-wheels) takes 16-bit PCM
in 10-30 ms frames with four fixed aggressiveness modes, and tells nothing about noise bursts or music
that this gate does not. The gate costs about 0.1-0.2 s of one CPU core per minute of audio (two FFTs per
frame; frames under the absolute floor skip the second), and a stream holds constant memory: the block
at hand and 4 s of frame measurements.

Its limits, by design: it finds *voiced sound that rises over its surroundings*, not language. Loud music
(harmonic and rhythmic) counts as speech, where a learned detector would reject most of it: a music clip
then gets a model's label as before, never a wrong "no speech" on real speech, which is the costlier
mistake. Whispered speech (no voicing) is missed. Speech is found down to about 0 dB SNR in white noise,
with regions shrinking as the noise grows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import numpy as np

from .errors import ConfigError

SAMPLE_RATE = 16000
HOP_SECONDS = 0.01  # one decision per 10 ms frame (160 samples at 16 kHz)
WINDOW_SECONDS = 0.048  # 768 samples at 16 kHz: three periods of a 62.5 Hz voice (as Praat frames pitch)
FLOOR_CHUNK = 50  # frames (0.5 s) that share one noise-floor estimate ...
FLOOR_CONTEXT = 200  # ... made from them and the 2 s either side
FLOOR_PERCENTILE = 10.0  # of those frames' energies: speech pauses more than 10% of the time
BLOCK_FRAMES = 1000  # frames measured at once (10 s; 6 MB of windows)
ENERGY_BAND = 100.0  # Hz and up: the energy leaves out hum and rumble, not the fricatives (s, f) over 4 kHz
VOICING_BAND = (100.0, 4000.0)  # Hz, where harmonics are searched for
PITCH_RANGE = (62.5, 500.0)  # Hz, the voice pitches the periodicity is searched over (lags 32-256 at 16 kHz)
COMPRESSION = 0.25  # power spectrum ** 0.25 = |X| ** 0.5 before the autocorrelation (two square roots)
MIN_VOICED_SECONDS = 0.05  # a region needs this much voiced sound ...
MIN_VOICED_SHARE = 0.05  # ... and this share of its loud frames voiced
VOICED_MARGIN_DB = 1.0  # over the floor, for a voiced frame to be loud
SILENCE_DB = -120.0  # the energy of digital silence (instead of -inf)


class SpeechDetector:
    """Finds the speech in a recording, whole or block by block (constant memory).

    Arguments (seconds unless said; silero-vad's `get_speech_timestamps` names in brackets):
        sample_rate: of the audio given (16 kHz throughout xlsr).
        margin_db: how far over the recording's noise floor a frame must be to be loud.
        floor_dbfs: the absolute floor: quieter frames are silence whatever the recording (-80 dBFS is
            60 dB under speech at -20 dBFS and 20 dB over 16-bit quantisation noise).
        voicing: the periodicity a frame needs to be voiced (0-1; white, pink and brown noise stay under
            0.12 in 999 frames of 1000).
        min_speech: the length of sound a region needs (`min_speech_duration_ms`).
        min_silence: shorter gaps between loud frames are joined (`min_silence_duration_ms`).
        pad: added before and after each region (`speech_pad_ms`); at most half of `min_silence`.

    Whole recordings: `regions(audio)`, `speech_seconds(audio)`, `has_speech(audio)`. Streams:

        detector = SpeechDetector()
        for block in stream_audio(path):
            for start, end in detector.feed(block): ...
        for start, end in detector.finish(): ...

    `feed` returns the regions that are final (about 3 s after they end: the floor looks 2 s ahead);
    `finish` returns the rest and makes the detector ready for the next recording. The result is the same
    for any split into blocks.
    """

    def __init__(
        self,
        sample_rate: int = SAMPLE_RATE,
        *,
        margin_db: float = 3.0,
        floor_dbfs: float = -80.0,
        voicing: float = 0.12,
        min_speech: float = 0.15,
        min_silence: float = 0.3,
        pad: float = 0.05,
    ):
        if sample_rate < 8000:
            raise ConfigError(f"the speech detector needs audio sampled at 8 kHz or more, got {sample_rate} Hz")
        if min(min_speech, min_silence, pad) < 0 or 2 * pad > min_silence:
            raise ConfigError(
                f"speech detector: need 0 <= 2 x pad <= min_silence and min_speech >= 0 "
                f"(got pad={pad}, min_silence={min_silence}, min_speech={min_speech})"
            )
        self.sample_rate = sample_rate
        self.margin_db, self.floor_dbfs, self.voicing = margin_db, floor_dbfs, voicing
        self.min_speech, self.min_silence, self.pad = min_speech, min_silence, pad
        self.hop = round(HOP_SECONDS * sample_rate)  # 160
        self.window = round(WINDOW_SECONDS * sample_rate)  # 768
        self._taper = np.hanning(self.window + 2)[1:-1]  # Hann without its zero end points
        freqs = np.fft.rfftfreq(self.window, 1 / sample_rate)
        self._low = int(np.searchsorted(freqs, ENERGY_BAND))
        lo, hi = VOICING_BAND
        self._bins = (int(np.searchsorted(freqs, lo)), int(np.searchsorted(freqs, hi, "right")))
        self._scale = 2.0 / (self.window * np.sum(self._taper**2))  # band power -> mean square of the signal
        self._lags = (math.ceil(sample_rate / PITCH_RANGE[1]), int(sample_rate / PITCH_RANGE[0]))  # 32, 256
        taper = np.fft.irfft(np.abs(np.fft.rfft(self._taper)) ** 2)
        # the taper's own autocorrelation fades long lags: undone, as Praat does (Boersma 1993)
        self._lag_gain = taper[0] / np.maximum(taper[self._lags[0] : self._lags[1] + 1], 0.1 * taper[0])
        self._gap = round(min_silence / HOP_SECONDS)  # frames: a shorter run of quiet frames is no gap
        # a sound of length d makes d + one window of loud frames: a 0.1 s click is 15 of them, under 20
        self._min_loud = round((min_speech + WINDOW_SECONDS) / HOP_SECONDS)
        self._min_voiced = round(MIN_VOICED_SECONDS / HOP_SECONDS)
        self._pad = round(pad * sample_rate)  # samples
        self.reset()

    def reset(self) -> None:
        """Forget the recording fed so far."""
        self._buffer = np.zeros((self.window - self.hop) // 2)  # frame t is centred on samples [t*hop, (t+1)*hop)
        self._samples = 0  # fed since the reset
        self._measured = 0  # frames measured
        self._decided = 0  # frames whose loud/voiced labels are final
        self._first = 0  # the frame that _energy[0] and _voicing[0] are of
        self._energy = np.zeros(0)  # (F,) dB, the measured frames still needed: from _decided - FLOOR_CONTEXT on
        self._voicing = np.zeros(0)  # (F,) periodicity
        self._run: list[int] | None = None  # open region: [first loud frame, last loud frame, loud, voiced]

    @property
    def duration(self) -> float:
        """Seconds of audio fed since the reset."""
        return self._samples / self.sample_rate

    @property
    def settled(self) -> float:
        """Seconds: every region that `feed` or `finish` returns from now on starts at or after this time."""
        frame = self._run[0] if self._run is not None else self._decided
        return max(0, frame * self.hop - self._pad) / self.sample_rate

    # --- whole recordings

    def regions(self, audio: np.ndarray) -> list[tuple[float, float]]:
        """audio: (S,) float in [-1, 1] -> the speech regions, (start, end) in seconds, in order."""
        self.reset()
        step = BLOCK_FRAMES * self.hop
        out = [r for i in range(0, len(audio), step) for r in self.feed(audio[i : i + step])]
        return out + self.finish()

    def speech_seconds(self, audio: np.ndarray) -> float:
        """audio: (S,) float -> the total length of its speech regions, in seconds."""
        return sum(end - start for start, end in self.regions(audio))

    def has_speech(self, audio: np.ndarray, min_seconds: float = 0.25) -> bool:
        """audio: (S,) float -> whether it holds at least `min_seconds` of speech."""
        return self.speech_seconds(audio) >= min_seconds

    # --- streams

    def feed(self, block: np.ndarray) -> list[tuple[float, float]]:
        """block: (S_i,) float, the next samples of the recording -> the regions that are now final."""
        block = np.asarray(block, dtype=np.float64)
        if block.ndim != 1:
            raise ValueError(f"SpeechDetector takes mono audio (S,), got shape {block.shape}")
        self._samples += len(block)
        self._buffer = np.concatenate([self._buffer, block])
        self._measure_buffer(len(self._buffer))
        # whole chunks whose context is all measured: the chunks fall at the same frames whatever the blocks
        return self._decide((self._measured - FLOOR_CONTEXT) // FLOOR_CHUNK * FLOOR_CHUNK)

    def finish(self) -> list[tuple[float, float]]:
        """The regions still open at the end of the recording; then resets the detector."""
        total = -(-self._samples // self.hop)  # frames that cover every sample
        if total > self._measured:  # zeros after the end complete the last frames
            need = (total - self._measured - 1) * self.hop + self.window
            self._buffer = np.concatenate([self._buffer, np.zeros(max(0, need - len(self._buffer)))])
            self._measure_buffer(need)
        out = self._decide(total) + self._close(self._samples)
        self.reset()
        return out

    # --- inside

    def _measure_buffer(self, usable: int) -> None:
        """Measures the complete frames in the first `usable` samples of the buffer, BLOCK_FRAMES at a time."""
        n = max(0, (usable - self.window) // self.hop + 1)
        if n == 0:
            return
        frames = np.lib.stride_tricks.sliding_window_view(self._buffer, self.window)[:: self.hop][:n]  # (n, W)
        parts = [self._measure(frames[i : i + BLOCK_FRAMES]) for i in range(0, n, BLOCK_FRAMES)]
        self._energy = np.concatenate([self._energy, *(e for e, _ in parts)])
        self._voicing = np.concatenate([self._voicing, *(v for _, v in parts)])
        self._measured += n
        self._buffer = self._buffer[n * self.hop :].copy()

    def _measure(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """frames: (F, W) -> energy (F,) in dB re full scale, periodicity (F,) in [0, 1]."""
        spectrum = np.fft.rfft(frames * self._taper, axis=1)[:, self._low :]  # (F, K): no DC offset, no hum
        power = spectrum.real**2 + spectrum.imag**2
        energy = np.maximum(10 * np.log10(power.sum(axis=1) * self._scale + 1e-30), SILENCE_DB)
        voicing = np.zeros(len(frames))
        live = energy > self.floor_dbfs  # silence is never voiced: skip its second FFT
        if live.any():
            lo, hi = self._bins
            compressed = np.zeros((int(live.sum()), self.window // 2 + 1))
            compressed[:, lo:hi] = np.sqrt(np.sqrt(power[live, lo - self._low : hi - self._low]))  # power ** 0.25
            ac = np.fft.irfft(compressed, n=self.window, axis=1)  # (F', W) autocorrelation
            first, last = self._lags
            voicing[live] = (ac[:, first : last + 1] * self._lag_gain).max(axis=1) / np.maximum(ac[:, 0], 1e-30)
        return energy, voicing

    def _decide(self, until: int) -> list[tuple[float, float]]:
        """Labels the frames before `until` (a chunk of FLOOR_CHUNK at a time, each against the floor of the
        frames around it) and grows the regions with them."""
        out = []
        while self._decided < until:
            start, end = self._decided, min(self._decided + FLOOR_CHUNK, until)
            context = self._energy[max(0, start - FLOOR_CONTEXT - self._first) : end + FLOOR_CONTEXT - self._first]
            floor = np.percentile(context, FLOOR_PERCENTILE)
            energy = self._energy[start - self._first : end - self._first]
            periodic = self._voicing[start - self._first : end - self._first] > self.voicing
            loud = energy > max(floor + self.margin_db, self.floor_dbfs)
            # voiced frames need less: a short clip of speech alone has no pause to show the floor's true level
            loud |= periodic & (energy > max(floor + VOICED_MARGIN_DB, self.floor_dbfs))
            out += self._grow(loud, loud & periodic, start)
            self._decided = end
            if self._run is not None and self._decided - 1 - self._run[1] >= self._gap:
                out += self._close()
        drop = max(0, self._decided - FLOOR_CONTEXT - self._first)  # what no floor needs any more
        self._energy, self._voicing, self._first = self._energy[drop:], self._voicing[drop:], self._first + drop
        return out

    def _grow(self, loud: np.ndarray, voiced: np.ndarray, offset: int) -> list[tuple[float, float]]:
        """Joins the loud frames (gaps under `min_silence`) into runs; closes the runs a gap ends."""
        out = []
        idx = np.flatnonzero(loud)
        if not len(idx):
            return out
        voiced_before = np.concatenate([[0], np.cumsum(voiced)])  # voiced frames before index i
        breaks = np.flatnonzero(np.diff(idx) > self._gap) + 1
        for a, b in zip(np.r_[0, breaks], np.r_[breaks, len(idx)]):
            first, last = int(idx[a]) + offset, int(idx[b - 1]) + offset
            n_voiced = int(voiced_before[idx[b - 1] + 1] - voiced_before[idx[a]])
            if self._run is not None and first - self._run[1] - 1 < self._gap:
                self._run[1] = last
                self._run[2] += b - a
                self._run[3] += n_voiced
            else:
                out += self._close()
                self._run = [first, last, b - a, n_voiced]
        return out

    def _close(self, end_sample: int | None = None) -> list[tuple[float, float]]:
        """Ends the open run: a region if it has the loud and voiced frames speech needs."""
        run, self._run = self._run, None
        if run is None:
            return []
        first, last, n_loud, n_voiced = run
        if n_loud < self._min_loud or n_voiced < max(self._min_voiced, MIN_VOICED_SHARE * n_loud):
            return []
        start = max(0, first * self.hop - self._pad)
        end = (last + 1) * self.hop + self._pad
        end = end if end_sample is None else min(end, end_sample)
        return [(start / self.sample_rate, end / self.sample_rate)]


def stream_pause_points(
    blocks: Iterable[np.ndarray],
    min_pause: float = 0.3,
    max_segment_seconds: float = 30.0,
    *,
    sample_rate: int = SAMPLE_RATE,
    detector: SpeechDetector | None = None,
) -> Iterator[float]:
    """Where to cut a long recording, from its blocks (e.g. `xlsr.audio.stream_audio(path)`), as they come.

    Yields cut points in seconds, increasing, so that no piece between two of them (or the recording's
    ends) is longer than `max_segment_seconds`. Each cut lies in the middle of a pause between speech
    regions of at least `min_pause` seconds: the longest pause in the last half of the allowed length if
    there is one there, else the longest before it. Where speech runs on with no such pause, the cut is
    made at exactly `max_segment_seconds` (a caller that needs context across it can overlap there). A
    pause running past the allowed length counts up to it only, so the result does not depend on the
    blocks. Memory: the detector's, and the regions of one segment.
    """
    if max_segment_seconds <= 0 or min_pause < 0:
        raise ConfigError(
            f"pause points: max_segment_seconds must be > 0 and min_pause >= 0 "
            f"(got {max_segment_seconds} and {min_pause})"
        )
    detector = detector or SpeechDetector(sample_rate)
    detector.reset()
    regions: list[tuple[float, float]] = []
    start = 0.0

    def cuts(settled: float) -> Iterator[float]:
        nonlocal start, regions
        while settled > start + max_segment_seconds:  # everything up to the limit is known
            limit = start + max_segment_seconds
            pauses = []  # (cut, length)
            for i, (_, a) in enumerate(regions):
                if not start < a < limit:
                    continue
                b = min(regions[i + 1][0] if i + 1 < len(regions) else math.inf, limit)
                if b - a >= min_pause:
                    pauses.append(((a + b) / 2, b - a))
            late = [p for p in pauses if p[0] > start + max_segment_seconds / 2] or pauses
            start = max(late, key=lambda p: (p[1], p[0]))[0] if late else limit
            regions = [r for r in regions if r[1] > start]
            yield start

    for block in blocks:
        regions += detector.feed(block)
        yield from cuts(detector.settled)
    duration = detector.duration
    regions += detector.finish()
    yield from cuts(duration)


def pause_points(
    audio: np.ndarray,
    min_pause: float = 0.3,
    max_segment_seconds: float = 30.0,
    *,
    sample_rate: int = SAMPLE_RATE,
    detector: SpeechDetector | None = None,
) -> list[float]:
    """audio: (S,) float -> cut points in seconds for pieces of at most `max_segment_seconds`, at pauses
    where the audio has them (see `stream_pause_points`, which gives the same cuts block by block)."""
    step = BLOCK_FRAMES * round(HOP_SECONDS * sample_rate)
    blocks = (audio[i : i + step] for i in range(0, len(audio), step))
    return list(stream_pause_points(blocks, min_pause, max_segment_seconds, sample_rate=sample_rate, detector=detector))
