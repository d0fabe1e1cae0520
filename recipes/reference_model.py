"""From nothing to xlsr's bundled reference models, on a CPU, in about an hour.

    python recipes/reference_model.py [--work DIR] [--install]

1. synth     a 10-language espeak-ng corpus (UDHR phrases, varied voices; `xlsr synth`)
2. pretrain  a `small` model (4 layers, 192 dim, 2.4M parameters) with the XLS-R objective on all of it
3. ctc       CTC fine-tuning on every language at once, one shared character vocabulary
4. lid       a language-ID head on the CTC model's encoder (fine-tuned further: it knows the languages' sounds)
5. evaluate  CER per language on the held-out test phrases, language-ID accuracy; with --install, the two
             models are stored in float16 in xlsr/assets/model/{asr,lid} with one example clip per language
             in examples/, the pretrained model in float32 in recipes/results/reference_pretrained/ (the
             translation recipe's start), and the table is written to recipes/results/reference_model.md

Every stage is a plain xlsr command (the Python function of the same name); re-running the script skips
finished stages and resumes an interrupted one. Figures vary a little with the machine's thread timing only
through floating-point summation order: the data, masks and sampling are all seeded.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from xlsr.checkpoints import convert, family_of, load_model  # noqa: E402
from xlsr.evaluate import evaluate  # noqa: E402
from xlsr.finetuning.classify import finetune_classify  # noqa: E402
from xlsr.finetuning.ctc import finetune_ctc  # noqa: E402
from xlsr.pretraining.task import pretrain  # noqa: E402
from xlsr.synth import synth  # noqa: E402

LANGS = ["de", "en", "es", "fr", "id", "it", "nl", "pl", "pt", "sw"]
# the pretraining stage's model as --install ships it (float32, so that a start from it is exactly a start from
# the stage's checkpoint): the translation recipe and its slow test start from it without the 34-minute stage
PRETRAINED = ROOT / "recipes" / "results" / "reference_pretrained"
PER_LANG = 300
PRETRAIN = ["max_update=2000", "lr=1.5e-3", "warmup_updates=200", "max_tokens=400000", "max_sample_size=80000",
            "min_sample_size=16000", "num_negatives=50", "latent_temp=[2.0,0.5,0.998]", "log_interval=50",
            "validate_interval_updates=500", "save_interval_updates=500", "num_workers=1"]  # fmt: skip
CTC = ["max_update=4000", "lr=2e-3", "freeze_finetune_updates=100", "max_tokens=320000", "mask_prob=0.3",
       "mask_channel_prob=0.1", "mask_channel_length=16", "layerdrop=0.05", "log_interval=100",
       "validate_interval_updates=500", "save_interval_updates=500", "num_workers=1"]  # fmt: skip
LID = ["max_update=2000", "lr=1.5e-3", "warmup_updates=100", "max_tokens=320000", "crop_seconds=3.0",
       "log_interval=50", "validate_interval_updates=200", "save_interval_updates=200", "num_workers=1"]  # fmt: skip


def stage(name: str, done: Path, run) -> None:
    if done.exists():
        print(f"== {name}: done already ({done})")
        return
    print(f"== {name}", flush=True)
    t = time.perf_counter()
    run()
    print(f"== {name}: {(time.perf_counter() - t) / 60:.1f} min", flush=True)


def pretrained_encoder(work: Path) -> str:
    """The synth and pretraining stages (skipped when done): the self-supervised checkpoint's path."""
    corpus = work / "corpus"
    stage("synth", corpus / "test.tsv", lambda: synth(corpus, LANGS, per_lang=PER_LANG, seed=0))
    stage("pretrain", work / "pretrain" / "done", lambda: (
        pretrain(corpus / "train.tsv", work / "pretrain", corpus / "valid.tsv", preset="small", set=PRETRAIN),
        (work / "pretrain" / "done").touch()))  # fmt: skip
    return str(work / "pretrain" / "checkpoints" / "checkpoint_last.pt")


def half(src: Path, dst: Path) -> None:
    """The model (any family) stored in float16 as a Hugging Face directory (computed in float32 when loaded)."""
    model = load_model(src)
    family_of(model).save_hf(model.half(), dst)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="work/reference", help="where the corpus, runs and reports go")
    p.add_argument("--install", action="store_true", help="copy the models and example clips into the package")
    args = p.parse_args()
    work = Path(args.work)
    corpus = work / "corpus"
    started = time.perf_counter()
    encoder = pretrained_encoder(work)
    stage("ctc", work / "ctc" / "done", lambda: (
        finetune_ctc(encoder, corpus / "train.tsv", corpus / "valid.tsv", work / "ctc", set=CTC),
        (work / "ctc" / "done").touch()))  # fmt: skip
    stage("lid", work / "lid" / "done", lambda: (
        finetune_classify(str(work / "ctc" / "best"), corpus / "train.tsv", corpus / "valid.tsv", work / "lid",
                          label_column="lang", set=LID),
        (work / "lid" / "done").touch()))  # fmt: skip
    print("== evaluate (the float16-stored models)", flush=True)
    half(work / "ctc" / "best", work / "final" / "asr")
    half(work / "lid" / "best", work / "final" / "lid")
    asr = evaluate(work / "final" / "asr", corpus / "test.tsv", json_path=work / "asr_test.json", quiet=True)
    lid = evaluate(work / "final" / "lid", corpus / "test.tsv", json_path=work / "lid_test.json", quiet=True)
    pre = [json.loads(line) for line in (work / "pretrain" / "log.jsonl").read_text().splitlines()]
    valid = [r for r in pre if r["split"] == "valid"][-1]
    rows = ["| language | test clips | CER % | WER % | language ID accuracy % |", "|---|---|---|---|---|"]
    for lang in LANGS:
        r, a = asr.per_language[lang], lid.per_class[lang]
        rows.append(f"| {lang} | {r.utterances} | {100 * r.cer:.1f} | {100 * r.wer:.1f} | {100 * a.value:.1f} |")
    o = asr.overall
    rows.append(f"| all | {o.utterances} | {100 * o.cer:.1f} | {100 * o.wer:.1f} | {100 * lid.overall.value:.1f} |")
    summary = (
        f"Pretraining (held-out audio): contrastive accuracy {100 * valid['accuracy']:.1f}% "
        f"(chance {100 / 51:.1f}% among 1 + 50 candidates), code perplexity {valid['code_perplexity']:.0f} "
        f"of {2 * 64} entries.\n"
    )
    table = "\n".join(rows) + "\n\n" + summary
    print(table)
    print(f"total: {(time.perf_counter() - started) / 60:.1f} min")
    if args.install:
        assets = ROOT / "xlsr" / "assets" / "model"
        for kind in ("asr", "lid"):
            shutil.rmtree(assets / kind, ignore_errors=True)
            shutil.copytree(work / "final" / kind, assets / kind)
        shutil.rmtree(PRETRAINED, ignore_errors=True)
        convert(encoder, PRETRAINED)
        examples = ROOT / "examples"
        examples.mkdir(exist_ok=True)
        lines = ["path\tlang\ttext"]
        import soundfile as sf

        from xlsr.data.manifest import read_manifest

        for lang in LANGS:
            u = next(u for u in read_manifest(corpus / "test.tsv") if u.lang == lang)
            audio, rate = sf.read(u.path, dtype="int16")
            sf.write(examples / f"{lang}.wav", audio, rate, subtype="PCM_16")
            lines.append(f"{lang}.wav\t{lang}\t{u.text}")
        (examples / "examples.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        on_examples = evaluate(assets / "asr", examples / "examples.tsv", quiet=True)
        lid_examples = evaluate(assets / "lid", examples / "examples.tsv", quiet=True)
        table += (
            f"On the bundled examples (examples/examples.tsv): CER {100 * on_examples.overall.cer:.1f}%, "
            f"WER {100 * on_examples.overall.wer:.1f}%, language ID {lid_examples.overall.correct} of "
            f"{lid_examples.overall.total} right.\n"
        )
        print(table.splitlines()[-1])
        results = ROOT / "recipes" / "results"
        results.mkdir(exist_ok=True)
        (results / "reference_model.md").write_text(table, encoding="utf-8")
        print(f"installed the models in {assets} and example clips in {examples}")


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    main()
