"""Does self-supervised pretraining pay off? CTC fine-tuning on one language, from the pretrained `small`
encoder of recipes/reference_model.py and from random weights of the same shape, on the same budget.

    python recipes/ctc_pretrained_vs_random.py [--work DIR] [--lang fr] [--clips 1000] [--updates 3000]

Needs the reference recipe's pretraining stage in --work (it runs it, and the corpus, when missing). The
language gets its own corpus of --clips clips (80% for training, about 40 minutes of speech for 1000), made
with the reference corpus's seed, so its test phrases are the reference corpus's test phrases for that
language: never seen in pretraining nor in fine-tuning. Both runs use the reference recipe's CTC options and
the same number of updates; the script prints the CER and WER of each on the held-out test phrases.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference_model as ref  # noqa: E402

from xlsr.checkpoints import init  # noqa: E402
from xlsr.evaluate import evaluate  # noqa: E402
from xlsr.finetuning.ctc import finetune_ctc  # noqa: E402
from xlsr.synth import synth  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="work/reference", help="the reference recipe's work folder")
    p.add_argument("--lang", default="fr")
    p.add_argument("--clips", type=int, default=1000, help="clips of the language (80%% train, 10%% valid, 10%% test)")
    p.add_argument("--updates", type=int, default=3000)
    args = p.parse_args()
    work = Path(args.work)
    encoder = ref.pretrained_encoder(work)
    out = work / f"compare_{args.lang}_{args.clips}"
    ref.stage(f"synth {args.lang}", out / "corpus" / "test.tsv",
              lambda: synth(out / "corpus", [args.lang], per_lang=args.clips, seed=0))  # fmt: skip
    starts = {
        "pretrained": encoder,
        "random": str(out / "random_init"),
    }
    if not (out / "random_init" / "config.json").exists():
        init(out / "random_init", preset="small", seed=0)
    options = [*ref.CTC, f"max_update={args.updates}", "validate_interval_updates=500", "freeze_finetune_updates=100"]
    results = {}
    for name, start in starts.items():
        t = time.perf_counter()
        finetune_ctc(start, out / "corpus" / "train.tsv", out / "corpus" / "valid.tsv", out / name, set=options,
                     quiet=True)  # fmt: skip
        report = evaluate(out / name / "best", out / "corpus" / "test.tsv", quiet=True)
        results[name] = (report.overall, (time.perf_counter() - t) / 60)
    print(
        f"CTC fine-tuning on {args.lang} ({args.clips} clips, {args.updates} updates each), test phrases never "
        "seen in training:"
    )
    print(f"{'start':<12} {'CER %':>7} {'WER %':>7} {'minutes':>8}")
    for name, (r, minutes) in results.items():
        print(f"{name:<12} {100 * r.cer:>7.1f} {100 * r.wer:>7.1f} {minutes:>8.1f}")


if __name__ == "__main__":
    main()
