"""BLEU and chrF (xlsr/translation_metrics.py) against sacrebleu's own numbers (sacrebleu 2.6 `corpus_bleu`,
`corpus_chrf`), whole and assembled from parts, as validation assembles them over batches and processes."""

from __future__ import annotations

import pytest
import sacrebleu

from xlsr.translation_metrics import corpus_scores, scores, sentence_stats

HYPOTHESES = [
    "The cat sat on the mat.",
    "A dog barked at the postman all day long",
    "Hello there, my friend!",
    "",
    "Everyone has the right to life, liberty and security of person.",
    "ganz anders als erwartet",
]
REFERENCES = [
    "The cat is on the mat.",
    "The dog barked at the postman the whole day.",
    "Hello, my friend!",
    "An empty hypothesis still counts its reference.",
    "Everyone has the right to life, liberty and the security of person.",
    "völlig anders als erwartet",
]


def test_corpus_scores_equal_sacrebleu():
    ours = corpus_scores(HYPOTHESES, REFERENCES)
    assert ours.bleu == pytest.approx(sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCES]).score, abs=1e-9)
    assert ours.chrf == pytest.approx(sacrebleu.corpus_chrf(HYPOTHESES, [REFERENCES]).score, abs=1e-9)
    assert ours.sentences == len(HYPOTHESES) and 0 < ours.bleu < 100
    bleu = sacrebleu.BLEU()
    bleu.corpus_score(HYPOTHESES, [REFERENCES])
    assert ours.bleu_signature == str(bleu.get_signature())  # nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version
    assert f"version:{sacrebleu.__version__}" in ours.chrf_signature
    zh = corpus_scores(["我爱你们"], ["我爱你"], tokenize="zh")
    assert zh.bleu == pytest.approx(sacrebleu.corpus_bleu(["我爱你们"], [["我爱你"]], tokenize="zh").score)


def test_statistics_of_parts_add_up_to_the_corpus_score():
    """Validation sums each batch's statistics (over processes too): the parts give the whole corpus's score."""
    parts = [sentence_stats(HYPOTHESES[a:b], REFERENCES[a:b]) for a, b in ((0, 2), (2, 3), (3, 6))]
    summed = {k: sum(p.get(k, 0.0) for p in parts) for k in parts[0]}
    whole = corpus_scores(HYPOTHESES, REFERENCES)
    assert scores(summed).bleu == pytest.approx(whole.bleu, abs=1e-9)
    assert scores(summed).chrf == pytest.approx(whole.chrf, abs=1e-9) and scores(summed).sentences == 6
    assert sentence_stats([], []) == {"sentences": 0.0} and scores({}).bleu == 0.0
    perfect = corpus_scores(REFERENCES[:3], REFERENCES[:3])
    assert perfect.bleu == pytest.approx(100.0) and perfect.chrf == pytest.approx(100.0)
    with pytest.raises(ValueError, match="2 hypotheses for 1 references"):
        sentence_stats(HYPOTHESES[:2], REFERENCES[:1])
