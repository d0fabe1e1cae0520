"""Peak memory of `xlsr transcribe` on a long recording against a short one, each in a fresh process.

Issue 13's target: a 10-hour recording peaks at no more than 1.1x the memory of a 1-minute one (windows are
decoded as they complete, so a file's frame outputs are never held). The recordings are a speech-like signal at
16 kHz written as 16-bit WAV; the model is a CTC model of the `tiny` preset with random weights and a
100-symbol vocabulary (the memory at stake is the frame outputs: V floats per 20 ms), or --model.

    python benchmarks/memory.py --hours 10            # about 1.2 GB of WAV in a temporary folder
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

PROBE = """
import resource, sys, time
import xlsr
started = time.perf_counter()
out = xlsr.transcribe({model}, [sys.argv[1]], quiet=True)
assert out[0].error is None, out[0].error
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter() - started, len(out[0].words))
"""


def speechlike_minute() -> np.ndarray:
    """A minute with pitch, harmonics, syllable-rate modulation and noise (the speech detector calls it speech)."""
    rng = np.random.default_rng(0)
    t = np.arange(16000 * 60) / 16000
    phase = 2 * np.pi * np.cumsum(110 + 30 * np.sin(2 * np.pi * 0.5 * t)) / 16000
    x = sum(np.sin(k * phase) / k for k in range(1, 12)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2)
    x += 0.05 * rng.standard_normal(len(t))
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


def write(path: Path, seconds: float) -> None:
    minute = speechlike_minute()
    with sf.SoundFile(path, "w", 16000, 1, subtype="PCM_16") as f:
        left = seconds
        while left > 0:
            f.write(minute[: int(min(60.0, left) * 16000)])
            left -= 60.0


def tiny_ctc(path: Path) -> str:
    """A tiny-preset CTC model with random weights whose output reads like speech on `speechlike_minute`: its
    biases are set so that about 75% of frames are blanks and a fifth of the rest word breaks (2-3 words a
    second, as in speech), so the words a long recording accumulates are what a real model would give."""
    import torch

    from xlsr.audio import normalize
    from xlsr.checkpoints import save_hf_dir
    from xlsr.config import preset
    from xlsr.models import Wav2Vec2Model
    from xlsr.text.ctc_tokenizer import CTCTokenizer

    torch.manual_seed(0)
    tokens = ["<pad>", "<s>", "</s>", "<unk>", "|", *[chr(0x61 + i % 26) + str(i // 26) for i in range(95)]]
    model = Wav2Vec2Model(preset("tiny", head="ctc", vocab_size=len(tokens))).eval()
    with torch.no_grad():
        logits = model(normalize(torch.from_numpy(speechlike_minute())[None]))[0]  # (T, V)
        bias = model.head.proj.bias
        bias -= torch.quantile(logits, 0.9, dim=0)  # every symbol wins some frames
        for _ in range(200):
            best = (logits + bias).argmax(-1)
            blank, breaks = (
                (best == 0).float().mean(),
                (best == 4).float().mean() / max((best != 0).float().mean(), 1e-6),
            )
            if abs(blank - 0.75) < 0.02 and abs(breaks - 0.2) < 0.03:
                break
            bias[0] += 0.05 * torch.sign(0.75 - blank)
            bias[4] += 0.05 * torch.sign(0.2 - breaks)
    save_hf_dir(model, path, CTCTokenizer(tokens))
    return str(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hours", type=float, default=10.0, help="length of the long recording (default 10)")
    p.add_argument("--model", help="a CTC model (default: the tiny preset, random weights, 100 symbols)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = repr(args.model or tiny_ctc(Path(tmp) / "model"))
        rows = {}
        for name, seconds in (("1 minute", 60.0), (f"{args.hours:g} hours", 3600 * args.hours)):
            path = Path(tmp) / "audio.wav"
            write(path, seconds)
            started = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", PROBE.format(model=model), str(path)], capture_output=True,
                                 text=True, check=True).stdout.split()  # fmt: skip
            rows[name] = (int(out[0]) / 1024, float(out[1]), int(out[2]), time.perf_counter() - started)
            path.unlink()
    short, long = rows.values()
    print("| audio | peak RSS | transcription time | words |")
    print("|---|---|---|---|")
    for name, (peak, secs, words, _) in rows.items():
        print(f"| {name} | {peak:.0f} MB | {secs:.0f} s | {words} |")
    print(f"peak ratio (long / short): {long[0] / short[0]:.3f} (target <= 1.1)")


if __name__ == "__main__":
    main()
