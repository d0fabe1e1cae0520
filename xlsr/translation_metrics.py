"""Translation quality: BLEU and chrF exactly as sacrebleu computes them, from sums of sentence statistics.

sacrebleu's corpus scores are functions of statistics summed over the sentences (BLEU: hypothesis and reference
lengths, then matching and total n-grams of each order; chrF: per n-gram order, the hypothesis, reference and
matching character n-grams). `sentence_stats` returns those sums for some sentences as plain numbers, so that the
validation batches of every process add up (the trainer sums stats) to the whole set's statistics, and `scores`
turns them into sacrebleu's corpus BLEU and chrF. Settings are sacrebleu's defaults (BLEU: 13a tokenizer,
exponential smoothing, up to 4-grams; chrF: character 6-grams, beta 2, no word n-grams), printed as sacrebleu's
signatures (`nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0`).

sacrebleu's public API scores a whole corpus at once; the two steps it takes inside (`_extract_corpus_statistics`,
`_compute_score_from_stats`) are used here so that a score can be assembled from parts; `tests/test_st.py` checks
the result against `sacrebleu.corpus_bleu` and `corpus_chrf` on the same sentences.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sacrebleu.metrics import BLEU, CHRF

METRICS = ("bleu", "chrf")  # the stats' key prefixes: bleu_0 ... bleu_9, chrf_0 ... chrf_17


def _metric(name: str, tokenize: str):
    return BLEU(tokenize=tokenize) if name == "bleu" else CHRF()


@dataclass(frozen=True)
class TranslationScores:
    bleu: float  # 0-100, sacrebleu's corpus BLEU
    chrf: float  # 0-100, sacrebleu's corpus chrF
    sentences: int
    bleu_signature: str
    chrf_signature: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "bleu": round(self.bleu, 4),
            "chrf": round(self.chrf, 4),
            "sentences": self.sentences,
            "bleu_signature": self.bleu_signature,
            "chrf_signature": self.chrf_signature,
        }


def sentence_stats(hypotheses: Sequence[str], references: Sequence[str], tokenize: str = "13a") -> dict[str, float]:
    """Summed BLEU and chrF statistics of aligned hypotheses and references (one reference each):
    {"bleu_0": ..., "chrf_17": ..., "sentences": n}; sums of these over parts of a corpus are the corpus's."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    out = {"sentences": float(len(hypotheses))}
    if not hypotheses:
        return out
    for name in METRICS:
        per_sentence = _metric(name, tokenize)._extract_corpus_statistics(list(hypotheses), [list(references)])
        out.update({f"{name}_{i}": float(sum(column)) for i, column in enumerate(zip(*per_sentence))})
    return out


def scores(stats: dict[str, float], tokenize: str = "13a") -> TranslationScores:
    """Summed `sentence_stats` -> corpus BLEU and chrF (sacrebleu's numbers for those sentences)."""
    values = {}
    for name in METRICS:
        metric = _metric(name, tokenize)
        keys = sorted((k for k in stats if k.startswith(f"{name}_")), key=lambda k: int(k.split("_")[1]))
        summed = [int(round(stats[k])) for k in keys]
        values[name] = float(metric._compute_score_from_stats(summed).score) if summed else 0.0
        metric.num_refs = 1  # what reading the references sets; the signature reports it
        values[f"{name}_signature"] = str(metric.get_signature())
    return TranslationScores(sentences=int(stats.get("sentences", 0)), **values)


def corpus_scores(hypotheses: Sequence[str], references: Sequence[str], tokenize: str = "13a") -> TranslationScores:
    """sacrebleu's corpus BLEU and chrF of aligned hypotheses and references."""
    return scores(sentence_stats(hypotheses, references, tokenize), tokenize)
