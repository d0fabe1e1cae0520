"""Speech translation at toy scale: four languages -> English, from the reference pretrained encoder, on a CPU.

    python recipes/translation.py [--work DIR]

1. encoder   the reference recipe's synth and pretraining stages (recipes/reference_model.py; reused when done)
2. synth     a parallel corpus (`xlsr synth --parallel`): de, es, fr and it clips saying UDHR sentences, with
             their English translations; split by paragraph, so the test sentences are never trained on
3. voices    the training clips said by two of espeak-ng's twelve voice variants (VOICES_HELD_OUT) leave the
             training set: they are the training sentences spoken by held-out voices
4. st        `xlsr finetune st` from the pretrained encoder: a new 2-layer decoder over a sentencepiece
             vocabulary trained on the training translations
5. random    the same from a randomly initialised encoder of the same shape, on the same budget
6. evaluate  BLEU and chrF per pair (sacrebleu), on the held-out sentences and on the training sentences by
             held-out voices, for both models and for a trivial baseline (the most frequent training translation
             for every clip); the table is written to recipes/results/translation.md

At this scale (about 50 training sentences, 400 clips, 1500 updates) neither run learns to listen yet: the
decoder learns the training translations as a language model, and gives nearly the same translation whatever
the clip (README, "Reference models and the toy corpus"). No translation model is bundled until one does.

Every stage is a plain xlsr command (the Python function of the same name); re-running the script skips
finished stages and resumes an interrupted one.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference_model as ref  # noqa: E402

from xlsr.checkpoints import init  # noqa: E402
from xlsr.data.manifest import read_manifest, write_manifest  # noqa: E402
from xlsr.evaluate import evaluate  # noqa: E402
from xlsr.finetuning.st import finetune_st  # noqa: E402
from xlsr.synth import synth  # noqa: E402
from xlsr.translation_metrics import corpus_scores  # noqa: E402

ROOT = ref.ROOT
LANGS = ["de", "es", "fr", "it"]
PER_LANG = 150  # clips per language: 120 train (about 50 sentences, each said by 2-3 voices), 15 valid, 15 test
VOICES_HELD_OUT = ("m7", "f5")  # espeak-ng voice variants never heard in training
ST = ["decoder_layers=2", "decoder_embed_dim=192", "decoder_ffn_embed_dim=768", "decoder_attention_heads=4",
      "max_target_positions=256", "spm_vocab_size=500", "lr=5e-4", "warmup_updates=200", "max_update=1500",
      "finetune_w2v_params=layer_norm,self_attn",
      "label_smoothing=0.1", "max_tokens=640000", "max_sample_size=560000", "validate_interval_updates=250",
      "save_interval_updates=250", "valid_beam_size=1", "log_interval=50", "num_workers=1"]  # fmt: skip
SETS = {"test.tsv": "held-out sentences", "heldout_voices.tsv": "held-out voices"}  # the second: training sentences


def variant(speaker: str) -> str:
    return speaker.split("-")[0]


def split_voices(corpus: Path) -> None:
    """train.tsv -> train_voices.tsv (the clips of the other voices) and heldout_voices.tsv."""
    rows = read_manifest(corpus / "train.tsv")
    columns = ["path", "samples", "lang", "text", "translation", "tgt_lang", "speaker"]
    kept = [u for u in rows if variant(u.speaker) not in VOICES_HELD_OUT]
    held = [u for u in rows if variant(u.speaker) in VOICES_HELD_OUT]
    write_manifest(corpus / "heldout_voices.tsv", held, columns)
    write_manifest(corpus / "train_voices.tsv", kept, columns)  # last: it marks the stage done


def fine_tune(out: Path, name: str, start: str) -> None:
    """The st stage from `start` into out/name (skipped when done; resumed when interrupted)."""
    corpus = out / "corpus"
    ref.stage(f"st ({name} encoder)", out / name / "done", lambda: (
        finetune_st(start, corpus / "train_voices.tsv", corpus / "valid.tsv", out / name, set=ST, quiet=True),
        (out / name / "done").touch()))  # fmt: skip


def baseline(corpus: Path, manifest: Path) -> dict:
    """The most frequent training translation, said for every clip of `manifest`: {pair or "all": scores}."""
    top = Counter(u.translation for u in read_manifest(corpus / "train_voices.tsv")).most_common(1)[0][0]
    rows = read_manifest(manifest)
    groups = {"all": rows, **{f"{lang}-en": [u for u in rows if u.lang == lang] for lang in LANGS}}
    return {pair: corpus_scores([top] * len(us), [u.translation for u in us]) for pair, us in groups.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="work/reference", help="the reference recipe's work folder")
    args = p.parse_args()
    work = Path(args.work)
    started = time.perf_counter()
    encoder = ref.pretrained_encoder(work)
    out = work / "translation"
    corpus = out / "corpus"
    ref.stage("synth (parallel)", corpus / "test.tsv",
              lambda: synth(corpus, LANGS, per_lang=PER_LANG, seed=0, parallel=True, quiet=True))  # fmt: skip
    ref.stage("voices", corpus / "train_voices.tsv", lambda: split_voices(corpus))
    if not (out / "random_init" / "config.json").exists():
        init(out / "random_init", preset="small", seed=0)
    starts = {"pretrained": encoder, "random": str(out / "random_init")}
    for name, start in starts.items():
        fine_tune(out, name, start)
    print("== evaluate", flush=True)
    models = {"pretrained": out / "pretrained" / "best", "random": out / "random" / "best"}
    scored = {(m, s): evaluate(path, corpus / s, quiet=True) for m, path in models.items() for s in SETS}
    base = {s: baseline(corpus, corpus / s) for s in SETS}
    blocks = []
    for s, key in SETS.items():  # a table per set: "pair (held-out sentences)", ...
        rows = [f"| pair ({key}) | clips | BLEU pretrained | chrF pretrained | BLEU random | chrF random | "
                "BLEU baseline | chrF baseline |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for pair in [*(f"{lang}-en" for lang in LANGS), "all"]:
            pre, rnd = (scored[m, s].overall if pair == "all" else scored[m, s].per_pair[pair] for m in models)
            b = base[s][pair]
            rows.append(f"| {pair} | {pre.sentences} | {pre.bleu:.1f} | {pre.chrf:.1f} | {rnd.bleu:.1f} | "
                        f"{rnd.chrf:.1f} | {b.bleu:.1f} | {b.chrf:.1f} |")  # fmt: skip
        blocks.append("\n".join(rows))
    for s, key in SETS.items():  # does the model listen? a decoder that ignores the audio says the same for all
        said = ", ".join(f"{m} {len({u['hypothesis'] for u in scored[m, s].utterances})}" for m in models)
        blocks.append(f"Distinct translations of the {len(scored['pretrained', s].utterances)} clips ({key}): {said}.")
    signature = scored["pretrained", "test.tsv"].overall
    blocks.append(f"BLEU: sacrebleu {signature.bleu_signature}; chrF: sacrebleu {signature.chrf_signature}")
    table = "\n\n".join(blocks) + "\n"
    print(table)
    print(f"total: {(time.perf_counter() - started) / 60:.1f} min")
    results = ROOT / "recipes" / "results"
    results.mkdir(exist_ok=True)
    (results / "translation.md").write_text(table, encoding="utf-8")


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    main()
