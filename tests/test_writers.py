"""Transcript formats: cue building from word times, SRT/VTT timestamps, TSV, JSON."""

import json

from xlsr.decoding.ctc import Word
from xlsr.writers import Transcript, cues, render


def words(*spec):
    return [Word(w, s, e, 0.9) for w, s, e in spec]


def test_cues_break_at_pauses_durations_and_length():
    ws = words(("a", 0.0, 0.2), ("b", 0.3, 0.5), ("c", 1.5, 1.7), ("d", 1.8, 2.0))
    assert cues(ws) == [(0.0, 0.5, "a b"), (1.5, 2.0, "c d")]  # 1 s pause
    long = words(*[(f"w{i}", i * 0.5, i * 0.5 + 0.4) for i in range(20)])
    assert all(e - s <= 6.0 for s, e, _ in cues(long)) and len(cues(long)) == 2
    wordy = words(*[("x" * 20, i * 0.3, i * 0.3 + 0.2) for i in range(8)])
    assert all(len(t) <= 84 for _, _, t in cues(wordy))
    assert cues([]) == []


def test_srt_vtt_tsv_json():
    t = Transcript(
        "a.wav",
        "hello world again",
        words(("hello", 3661.0, 3661.5), ("world", 3661.6, 3662.0), ("again", 3665.0, 3665.25)),
        3670.0,
        "m",
    )
    assert render(t, "srt") == (
        "1\n01:01:01,000 --> 01:01:02,000\nhello world\n\n2\n01:01:05,000 --> 01:01:05,250\nagain\n"
    )
    assert render(t, "vtt").startswith("WEBVTT\n\n01:01:01.000 --> 01:01:02.000\nhello world\n")
    assert render(t, "tsv") == "start\tend\ttext\n3661.000\t3662.000\thello world\n3665.000\t3665.250\tagain\n"
    data = json.loads(render(t, "json"))
    assert data["words"][1] == {"word": "world", "start": 3661.6, "end": 3662.0, "confidence": 0.9}
    assert data["error"] is None and data["duration"] == 3670.0
    assert render(t, "txt") == "hello world again\n"
