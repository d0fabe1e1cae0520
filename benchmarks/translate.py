"""Speech-translation throughput and peak memory: xlsr's `translate` against transformers'
`SpeechEncoderDecoderModel.generate`, with the same weights, clips and tokens, in the same run.

The model is an XLS-R 300M-shaped encoder + 3-layer adapter + mBART-50-shaped decoder (12 x 1024, vocabulary
250054: the `xlsr-300m-st` preset), random weights, written once as a Hugging Face directory. 8 speech-like clips
of 5-15 s, one batch, beam 5; every hypothesis is forced to 64 new tokens after the language tag (xlsr: min_len
and max_new_tokens; transformers: min_new_tokens = max_new_tokens = 65, the tag included) so that both do the same
work. Each side runs in a fresh process: time = the generation call (encoder + decoding, the model loaded
before), peak = the process's peak RSS (model included).

    python benchmarks/translate.py                  # about 10 minutes on 2 CPU cores, 6 GB of disk
    python benchmarks/translate.py --preset tiny-st --clips 4
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

NEW_TOKENS = 64
LANG = "en_XX"
MBART50_EN = 250004  # en_XX in mBART-50's vocabulary (250001 + its place among the 52 language codes)


def tag_of(vocab_size: int) -> int:
    return MBART50_EN if vocab_size > MBART50_EN else vocab_size - 2  # small presets: any non-special id


class Vocabulary:
    """A stand-in for the mBART-50 sentencepiece vocabulary (not available offline): ids are enough here."""

    kind = "sentencepiece"
    languages = [LANG]

    def __init__(self, size: int):
        self.tokens = [f"<{i}>" for i in range(size)]
        self.tag = tag_of(size)
        self.tokens[self.tag] = LANG

    def __len__(self) -> int:
        return len(self.tokens)

    def lang_id(self, code: str) -> int:
        return self.tag

    def decode(self, ids: list[int]) -> str:
        return " ".join(map(str, ids))


def speechlike(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    phase = 2 * np.pi * np.cumsum(110 + 30 * np.sin(2 * np.pi * 0.5 * t + seed)) / 16000
    x = sum(np.sin(k * phase) / k for k in range(1, 12)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t + seed) ** 2)
    x += 0.05 * rng.standard_normal(len(t))
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


def worker(args) -> dict:
    torch.set_num_threads(args.threads)
    clips = sorted(Path(args.clips_dir).glob("*.wav"))
    if args.impl == "xlsr":
        from xlsr import load_model
        from xlsr.translate import translate

        model = load_model(args.model_dir)
        model.tokenizer = Vocabulary(model.cfg.vocab_size)
        tag = model.tokenizer.tag
        start = time.perf_counter()
        forced = dict(max_new_tokens=NEW_TOKENS, min_len=NEW_TOKENS + 1)  # the tag, then exactly 64 tokens
        out = translate(model, clips, target_lang=LANG, beam_size=args.beam, batch_seconds=1000, segment_seconds=60,
                        device="cpu", quiet=True, **forced)  # fmt: skip
        seconds = time.perf_counter() - start
        tokens = [[tag, *t.tokens] for t in out]
    else:
        from transformers import SpeechEncoderDecoderModel

        model = SpeechEncoderDecoderModel.from_pretrained(args.model_dir).eval()
        tag = tag_of(model.config.decoder.vocab_size)
        start = time.perf_counter()
        waves = [sf.read(c, dtype="float32")[0] for c in clips]
        lengths = torch.tensor([len(w) for w in waves])
        x = torch.zeros(len(waves), int(lengths.max()))
        for i, w in enumerate(waves):  # zero mean, unit variance per clip, as the feature extractor does
            x[i, : len(w)] = torch.from_numpy((w - w.mean()) / np.sqrt(w.var() + 1e-7))
        mask = (torch.arange(x.shape[1])[None] < lengths[:, None]).long()
        with torch.inference_mode():
            ids = model.generate(x, attention_mask=mask, num_beams=args.beam, forced_bos_token_id=tag,
                                 decoder_start_token_id=2, min_new_tokens=NEW_TOKENS + 1,
                                 max_new_tokens=NEW_TOKENS + 1, early_stopping=True,
                                 bad_words_ids=[[1]])  # fmt: skip
        seconds = time.perf_counter() - start
        tokens = [row.tolist()[1:] for row in ids]  # <pad> is banned on both sides, as fairseq bans it
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"impl": args.impl, "seconds": seconds, "peak_mb": peak, "lengths": [len(t) for t in tokens]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="xlsr-300m-st")
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--impl", help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    p.add_argument("--clips-dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.impl:
        print(json.dumps(worker(args)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, clips_dir = Path(tmp) / "model", Path(tmp) / "clips"
        clips_dir.mkdir()
        for i, seconds in enumerate(np.linspace(5, 15, args.clips)):
            sf.write(clips_dir / f"{i}.wav", speechlike(float(seconds), i), 16000)
        build = (
            "import torch, sys\n"
            "from xlsr.config import preset\n"
            "from xlsr.models.speech_translation import SpeechTranslationModel\n"
            "from xlsr.checkpoints.hf_st import save_hf_st_dir\n"
            "torch.manual_seed(0)\n"
            f"model = SpeechTranslationModel(preset({args.preset!r}))\n"
            "save_hf_st_dir(model, sys.argv[1])\n"
        )
        subprocess.run([sys.executable, "-c", build, str(model_dir)], check=True)
        rows = []
        for impl in ("transformers", "xlsr"):
            cmd = [sys.executable, __file__, "--impl", impl, "--model-dir", str(model_dir), "--clips-dir",
                   str(clips_dir), "--beam", str(args.beam), "--threads", str(args.threads)]  # fmt: skip
            rows.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))
    ref, ours = rows
    assert ref["lengths"] == ours["lengths"] == [NEW_TOKENS + 1] * args.clips, rows  # the same work on both sides
    audio = sum(np.linspace(5, 15, args.clips))
    print(f"{args.preset}, {args.clips} clips ({audio:.0f} s), beam {args.beam}, {NEW_TOKENS} new tokens each")
    print("| | transformers | xlsr | ratio |")
    print("|---|---|---|---|")
    print(f"| seconds | {ref['seconds']:.1f} | {ours['seconds']:.1f} | **{ref['seconds'] / ours['seconds']:.2f}x** "
          "throughput |")  # fmt: skip
    print(
        f"| peak memory | {ref['peak_mb']:.0f} MB | {ours['peak_mb']:.0f} MB | {ours['peak_mb'] / ref['peak_mb']:.2f} |"
    )


if __name__ == "__main__":
    main()
