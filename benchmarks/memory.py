"""Peak memory of `xlsr transcribe` on a long recording against a short one, each in a fresh process.

Issue 13's target: a 10-hour recording peaks at no more than 1.1x the memory of a 1-minute one (windows are
decoded as they complete, so a file's frame outputs are never held). The recordings are speech-like noise at
16 kHz written as 16-bit WAV; the model is the bundled reference CTC model (or --model).

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


def write(path: Path, seconds: float) -> None:
    rng = np.random.default_rng(0)
    minute = (0.1 * rng.standard_normal(16000 * 60)).astype(np.float32)
    minute *= 0.5 + 0.5 * np.sin(np.arange(len(minute)) / 16000 * 2 * np.pi * 3) ** 2
    with sf.SoundFile(path, "w", 16000, 1, subtype="PCM_16") as f:
        left = seconds
        while left > 0:
            f.write(minute[: int(min(60.0, left) * 16000)])
            left -= 60.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hours", type=float, default=10.0, help="length of the long recording (default 10)")
    p.add_argument("--model", help="model (default: the bundled reference CTC model)")
    args = p.parse_args()
    model = repr(args.model) if args.model else "None"
    with tempfile.TemporaryDirectory() as tmp:
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
