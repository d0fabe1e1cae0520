"""Speaker identification (the XLS-R paper's fourth task, VoxCeleb1 there) at toy scale, on a CPU in minutes.

    python recipes/speaker_id.py [--work DIR]

1. synth     a 3-language espeak-ng corpus said by 8 fixed toy speakers (`xlsr synth --speakers 8`): each
             speaker says phrases of every language and split; the test phrases are never trained on
2. classify  a speaker-ID head (`xlsr finetune classify --label-column speaker`) on the encoder of the bundled
             reference model (xlsr/assets/model/asr: pretrained with the XLS-R objective, then CTC)
3. evaluate  accuracy per speaker on the held-out phrases (`xlsr evaluate --label-column speaker`), against
             chance (1 in 8); the table is written to recipes/results/speaker_id.md

Every stage is a plain xlsr command (the Python function of the same name); re-running skips finished stages.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from recipes.reference_model import stage  # noqa: E402  (the same skip-when-done stages)
from xlsr.checkpoints import bundled_model  # noqa: E402
from xlsr.evaluate import evaluate  # noqa: E402
from xlsr.finetuning.classify import finetune_classify  # noqa: E402
from xlsr.synth import synth  # noqa: E402

LANGS = ["de", "en", "sw"]
PER_LANG = 200
SPEAKERS = 8
SID = ["max_update=600", "lr=1.5e-3", "warmup_updates=60", "max_tokens=320000", "crop_seconds=3.0",
       "log_interval=50", "validate_interval_updates=150", "save_interval_updates=150", "num_workers=1"]  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="work/speaker_id", help="where the corpus, run and report go")
    p.add_argument("--write-results", action="store_true", help="write the table to recipes/results/speaker_id.md")
    args = p.parse_args()
    work = Path(args.work)
    corpus = work / "corpus"
    started = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    stage("synth", corpus / "test.tsv", lambda: synth(corpus, LANGS, per_lang=PER_LANG, seed=7, speakers=SPEAKERS))
    stage("classify", work / "sid" / "done", lambda: (
        finetune_classify(str(bundled_model("asr")), corpus / "train.tsv", corpus / "valid.tsv", work / "sid",
                          label_column="speaker", set=SID),
        (work / "sid" / "done").touch()))  # fmt: skip
    report = evaluate(work / "sid" / "best", corpus / "test.tsv", label_column="speaker",
                      output_dir=work / "eval", quiet=True)  # fmt: skip
    rows = ["| speaker | test clips | accuracy % |", "|---|---|---|"]
    for name, acc in sorted(report.per_class.items()):
        rows.append(f"| {name} | {acc.total} | {100 * acc.value:.1f} |")
    rows.append(f"| all | {report.overall.total} | {100 * report.overall.value:.1f} |")
    table = "\n".join(rows) + (
        f"\n\nHeld-out phrases ({', '.join(LANGS)}) from the {SPEAKERS} training speakers; chance "
        f"{100 / SPEAKERS:.1f}%.\n"
    )
    print(table)
    print(f"total: {(time.perf_counter() - started) / 60:.1f} min")
    if args.write_results:
        (ROOT / "recipes" / "results" / "speaker_id.md").write_text(table, encoding="utf-8")


if __name__ == "__main__":
    main()
