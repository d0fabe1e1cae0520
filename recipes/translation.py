"""Speech translation at toy scale: four languages -> English, from the reference pretrained encoder, on a CPU.

    python recipes/translation.py [--work DIR] [--encoder MODEL] [--install]

1. encoder   the reference recipe's synth and pretraining stages (recipes/reference_model.py; reused when done),
             or --encoder: recipes/results/reference_pretrained is that stage's model as the reference recipe
             shipped it (float32: the same start, bit for bit, without the stage's 34 minutes)
2. synth     a parallel corpus (`xlsr synth --parallel`): de, es, fr and it clips saying UDHR sentences, with
             their English translations; split by paragraph, so the test sentences are never trained on
3. voices    the training clips said by two of espeak-ng's twelve voice variants (VOICES_HELD_OUT) leave the
             training set: they are the training sentences spoken by held-out voices
4. asr       `xlsr finetune ctc` of the pretrained encoder on the training clips' own transcripts (the `text`
             column): ASR pre-training of the translation encoder (Bansal et al. 2019; fairseq's speech-to-text
             recipes start speech translation from an ASR encoder), so that its output carries what was said
5. st        `xlsr finetune st` from that ASR model, its encoder frozen (`finetune_w2v_params` empty): a new
             adapter and 2-layer decoder over a sentencepiece vocabulary trained on the training translations,
             3000 updates, validated once at the end (the held-out-sentence BLEU peaks before the model listens)
6. random    stages 4 and 5 from a randomly initialised encoder of the same shape, on the same budget
7. evaluate  BLEU and chrF per pair (sacrebleu), on the held-out sentences and on the training sentences by
             held-out voices, for both models and for a trivial baseline (the most frequent training translation
             for every clip), and the ASR stage's CER; with --install the pretrained run's model is stored in
             float16 in xlsr/assets/model/st (the bundled translation model), one example clip per language in
             examples/translation/, and the table in recipes/results/translation.md

Straight from the self-supervised encoder (no ASR stage, at this scale: about 50 training sentences, 400 clips),
or at a lower learning rate, the decoder learns the training translations as a language model and ignores the
audio (README, "Reference models and the toy corpus"). The pretrained and the random start run side by side,
one CPU thread each: about 50 minutes on 2 cores (48 measured).

Every stage is a plain xlsr command (the Python function of the same name); re-running the script skips
finished stages and resumes an interrupted one.
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference_model as ref  # noqa: E402

from xlsr.checkpoints import init  # noqa: E402
from xlsr.data.manifest import Utterance, read_manifest, write_manifest  # noqa: E402
from xlsr.evaluate import evaluate  # noqa: E402
from xlsr.finetuning.ctc import finetune_ctc  # noqa: E402
from xlsr.finetuning.st import finetune_st  # noqa: E402
from xlsr.synth import synth  # noqa: E402
from xlsr.translation_metrics import corpus_scores  # noqa: E402

ROOT = ref.ROOT
LANGS = ["de", "es", "fr", "it"]
PER_LANG = 150  # clips per language: 120 train (about 50 sentences, each said by 2-3 voices), 15 valid, 15 test
VOICES_HELD_OUT = ("m7", "f5")  # espeak-ng voice variants never heard in training
# the ASR stage picks its best model by CER: every WER here is 1 or more, and by WER the all-blank first one wins
ASR = ["max_update=2000", "lr=2e-3", "freeze_finetune_updates=100", "max_tokens=320000", "mask_prob=0.3",
       "mask_channel_prob=0.1", "mask_channel_length=16", "layerdrop=0.05", "max_sample_size=560000",
       "validate_interval_updates=500", "save_interval_updates=500", "log_interval=50", "num_workers=1",
       "best_checkpoint_metric=cer"]  # fmt: skip
# validated once, at the end: the held-out-sentence BLEU peaks before the decoder listens (README)
ST = ["finetune_w2v_params=",  # the encoder stays as the ASR stage left it; the adapter and the decoder train
      "decoder_layers=2", "decoder_embed_dim=192", "decoder_ffn_embed_dim=768", "decoder_attention_heads=4",
      "max_target_positions=256", "spm_vocab_size=500", "lr=2e-3", "warmup_updates=300", "max_update=3000",
      "label_smoothing=0.1", "mask_prob=0.1", "mask_channel_prob=0.1", "layerdrop=0.0", "max_tokens=1280000",
      "max_sample_size=560000", "validate_interval_updates=3000", "save_interval_updates=1000",
      "valid_beam_size=1", "log_interval=50", "num_workers=1"]  # fmt: skip
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
    """The asr and st stages from `start` into out/asr_{name} and out/st_{name} (each skipped when done;
    resumed when interrupted)."""
    corpus, asr, st = out / "corpus", out / f"asr_{name}", out / f"st_{name}"
    ref.stage(f"asr ({name} encoder)", asr / "done", lambda: (
        finetune_ctc(start, corpus / "train_voices.tsv", corpus / "valid.tsv", asr, set=ASR, quiet=True),
        (asr / "done").touch()))  # fmt: skip
    ref.stage(f"st ({name} encoder)", st / "done", lambda: (
        finetune_st(str(asr / "best"), corpus / "train_voices.tsv", corpus / "valid.tsv", st, set=ST, quiet=True),
        (st / "done").touch()))  # fmt: skip


def baseline(corpus: Path, manifest: Path) -> dict:
    """The most frequent training translation, said for every clip of `manifest`: {pair or "all": scores}."""
    top = Counter(u.translation for u in read_manifest(corpus / "train_voices.tsv")).most_common(1)[0][0]
    rows = read_manifest(manifest)
    groups = {"all": rows, **{f"{lang}-en": [u for u in rows if u.lang == lang] for lang in LANGS}}
    return {pair: corpus_scores([top] * len(us), [u.translation for u in us]) for pair, us in groups.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="work/reference", help="the reference recipe's work folder")
    p.add_argument("--encoder", help="the pretrained encoder to start from (default: the reference recipe's "
                   "pretraining in --work, run when missing; recipes/results/reference_pretrained is its shipped "
                   "output)")  # fmt: skip
    p.add_argument("--install", action="store_true", help="copy the model and example clips into the package")
    args = p.parse_args()
    work = Path(args.work)
    started = time.perf_counter()
    encoder = args.encoder or ref.pretrained_encoder(work)
    out = work / "translation"
    corpus = out / "corpus"
    ref.stage("synth (parallel)", corpus / "test.tsv",
              lambda: synth(corpus, LANGS, per_lang=PER_LANG, seed=0, parallel=True, quiet=True))  # fmt: skip
    ref.stage("voices", corpus / "train_voices.tsv", lambda: split_voices(corpus))
    if not (out / "random_init" / "config.json").exists():
        init(out / "random_init", preset="small", seed=0)
    starts = {"pretrained": encoder, "random": str(out / "random_init")}
    # the two starts side by side, one CPU thread each (independent runs: each its own process)
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(len(starts), mp_context=spawn, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        for run in [pool.submit(fine_tune, out, name, start) for name, start in starts.items()]:
            run.result()  # re-raises a run's error
    print("== evaluate (the pretrained run's model stored in float16; the random run's as trained)", flush=True)
    ref.half(out / "st_pretrained" / "best", out / "final" / "st")
    models = {"pretrained": out / "final" / "st", "random": out / "st_random" / "best"}
    asr = {m: evaluate(out / f"asr_{m}" / "best", corpus / "valid.tsv", quiet=True).overall for m in models}
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
    blocks.append("The ASR stage's CER on the held-out sentences (valid.tsv): "
                  + ", ".join(f"{m} {100 * r.cer:.1f}%" for m, r in asr.items()) + ".")  # fmt: skip
    signature = scored["pretrained", "test.tsv"].overall
    blocks.append(f"BLEU: sacrebleu {signature.bleu_signature}; chrF: sacrebleu {signature.chrf_signature}")
    table = "\n\n".join(blocks) + "\n"
    print(table)
    print(f"total: {(time.perf_counter() - started) / 60:.1f} min")
    if args.install:  # the shipped model's table (tests/test_recipes.py checks a new run against it)
        (ROOT / "recipes" / "results" / "translation.md").write_text(install(out, corpus, table), encoding="utf-8")


def install(out: Path, corpus: Path, table: str) -> str:
    """The model into xlsr/assets/model/st and one clip per language (the first training sentence said by a
    held-out voice) into examples/translation/ with its manifest; the table gains the figures on those clips."""
    import soundfile as sf

    assets = ROOT / "xlsr" / "assets" / "model" / "st"
    shutil.rmtree(assets, ignore_errors=True)
    shutil.copytree(out / "final" / "st", assets)
    examples = ROOT / "examples" / "translation"
    shutil.rmtree(examples, ignore_errors=True)
    examples.mkdir(parents=True)
    rows = read_manifest(corpus / "heldout_voices.tsv")
    chosen = []
    for lang in LANGS:
        u = next(u for u in rows if u.lang == lang)
        audio, rate = sf.read(u.path, dtype="int16")
        sf.write(examples / f"{lang}.wav", audio, rate, subtype="PCM_16")
        chosen.append(Utterance(examples / f"{lang}.wav", len(audio), lang, u.text, u.translation, u.speaker,
                                extra={"tgt_lang": "en"}))  # fmt: skip
    write_manifest(examples / "translation.tsv", chosen, ["path", "lang", "text", "translation", "tgt_lang"])
    report = evaluate(assets, examples / "translation.tsv", quiet=True)
    line = (f"On the bundled examples (examples/translation/translation.tsv, training sentences by held-out "
            f"voices): BLEU {report.overall.bleu:.1f}, chrF {report.overall.chrf:.1f}.")  # fmt: skip
    print(line)
    print(f"installed the model in {assets} and example clips in {examples}")
    return table + "\n" + line + "\n"


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    main()
