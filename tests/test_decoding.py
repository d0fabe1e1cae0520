"""CTC decoding: greedy paths, alignments and timestamps, KenLM beam search (flashlight) with an ARPA
model written here, hotwords."""

from __future__ import annotations

import numpy as np
import pytest

from xlsr.decoding.ctc import BeamSearchDecoder, BeamSearchOptions, align, greedy
from xlsr.errors import ConfigError
from xlsr.text.ctc_tokenizer import CTCTokenizer

TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "|", "A", "B", "C", "D"]
PAD, SEP, A, B, C, D = 0, 4, 5, 6, 7, 8

ARPA = """\\data\\
ngram 1=6
ngram 2=3

\\1-grams:
-1.0\t<unk>\t0
0\t<s>\t-0.3
-0.5\t</s>\t0
-0.5\tcab\t-0.3
-0.6\tbad\t-0.3
-0.6\tdab\t-0.3

\\2-grams:
-0.2\t<s> cab
-0.3\tcab bad
-0.3\tbad </s>

\\end\\
"""


def emissions(path: list[int], confusions: dict[int, dict[int, float]] | None = None) -> np.ndarray:
    """Log-probabilities that make `path` the greedy path, with optional close competitors per frame."""
    lp = np.full((len(path), len(TOKENS)), -8.0, np.float32)
    for t, token in enumerate(path):
        lp[t, token] = -0.05
    for t, alternatives in (confusions or {}).items():
        for token, value in alternatives.items():
            lp[t, token] = value
    return lp - np.log(np.exp(lp).sum(1, keepdims=True))


def test_alignment_gives_exact_character_and_word_times():
    tok = CTCTokenizer(TOKENS)
    path = np.array([PAD, C, C, PAD, A, B, B, SEP, SEP, PAD, D, PAD, A, A])
    hyp = align(path, np.full(len(path), 0.5), tok, frame_seconds=0.02)
    assert hyp.text == "CAB DA" == tok.decode(path.tolist())
    assert [(c.text, round(c.start, 2), round(c.end, 2)) for c in hyp.chars] == [
        ("C", 0.02, 0.06),
        ("A", 0.08, 0.10),
        ("B", 0.10, 0.14),
        (" ", 0.14, 0.18),
        ("D", 0.20, 0.22),
        ("A", 0.24, 0.28),
    ]
    assert [(w.word, round(w.start, 2), round(w.end, 2)) for w in hyp.words] == [
        ("CAB", 0.02, 0.14),
        ("DA", 0.20, 0.28),
    ]
    assert all(abs(w.confidence - 0.5) < 1e-9 for w in hyp.words)


def test_greedy_confidence_follows_the_frame_probabilities():
    tok = CTCTokenizer(TOKENS)
    sure = greedy(emissions([C, A, B, PAD]), tok, 0.02)
    unsure = greedy(emissions([C, A, B, PAD], {1: {D: -0.1}}), tok, 0.02)
    assert sure.text == unsure.text == "CAB"
    assert sure.words[0].confidence > 0.9 > unsure.words[0].confidence


@pytest.fixture
def arpa(tmp_path):
    path = tmp_path / "lm.arpa"
    path.write_text(ARPA)
    return path


def test_lm_beam_search_corrects_to_a_likely_word_and_hotwords_bring_it_back(arpa):
    tok = CTCTokenizer(TOKENS)
    # greedy reads "CAB BAC"; "bac" is not a word of the LM, "bad" is (and follows "cab")
    lp = emissions([PAD, C, C, PAD, A, PAD, B, B, SEP, PAD, B, A, A, C, PAD], {13: {D: -0.2, C: -0.1}})
    assert greedy(lp, tok, 0.02).text == "CAB BAC"
    hyp = BeamSearchDecoder(tok, BeamSearchOptions(str(arpa))).decode(lp, 0.02)
    assert hyp.text == "CAB BAD" and [w.word for w in hyp.words] == ["CAB", "BAD"]
    assert hyp.words[1].start == pytest.approx(0.2) and hyp.score is not None
    hot = BeamSearchDecoder(tok, BeamSearchOptions(str(arpa), hotwords=("BAC",), hotword_weight=3.0)).decode(lp, 0.02)
    assert hot.text == "CAB BAC"


def test_lm_weight_zero_lets_the_acoustics_decide_among_lexicon_words(arpa):
    tok = CTCTokenizer(TOKENS)
    lp = emissions([D, A, B, SEP, C, A, B])  # "DAB CAB": both words exist; the LM prefers "cab bad"
    assert BeamSearchDecoder(tok, BeamSearchOptions(str(arpa), lm_weight=0.0)).decode(lp, 0.02).text == "DAB CAB"


def test_lm_errors_are_clear(arpa, tmp_path):
    tok = CTCTokenizer(TOKENS)
    with pytest.raises(ConfigError, match="no such language model"):
        BeamSearchDecoder(tok, BeamSearchOptions(str(tmp_path / "missing.arpa")))
    binary = tmp_path / "lm.bin"
    binary.write_bytes(b"mmap lm http://kheafield.com/code format version 5\x00" + bytes(200))
    with pytest.raises(ConfigError, match="binary KenLM needs --lexicon"):
        BeamSearchDecoder(tok, BeamSearchOptions(str(binary)))
    with pytest.raises(ConfigError, match="KenLM cannot read it"):
        (tmp_path / "words.txt").write_text("cab\n")
        BeamSearchDecoder(tok, BeamSearchOptions(str(binary), lexicon=str(tmp_path / "words.txt")))
    other = CTCTokenizer(["<pad>", "<unk>", "|", "x", "y"], bos_token=None, eos_token=None)
    with pytest.raises(ConfigError, match="none of the LM's words can be spelled"):
        BeamSearchDecoder(other, BeamSearchOptions(str(arpa)))


def _random_emissions(T: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    path = rng.choice([PAD, PAD, SEP, A, B, C, D], size=T)
    return emissions(path.tolist(), {t: {int(rng.integers(4, 9)): -0.4} for t in range(0, T, 4)})


@pytest.mark.parametrize("seed", range(5))
def test_streaming_greedy_equals_whole_file_decoding(seed):
    """Windows decoded as they come (GreedyStream) give the whole file's text, words, times and confidences."""
    from xlsr.decoding.ctc import GreedyStream

    tok = CTCTokenizer(TOKENS)
    lp = _random_emissions(300, seed)
    whole = greedy(lp, tok, 0.02)
    stream = GreedyStream(tok, 0.02)
    cuts = sorted(np.random.default_rng(seed).integers(0, 300, size=6).tolist())
    for a, b in zip([0, *cuts], [*cuts, 300]):
        stream.add(lp[a:b])
    hyp = stream.finish()
    assert hyp.text == whole.text and len(hyp.words) > 10
    assert [(w.word, w.start, w.end) for w in hyp.words] == [(w.word, w.start, w.end) for w in whole.words]
    np.testing.assert_allclose([w.confidence for w in hyp.words], [w.confidence for w in whole.words], rtol=1e-9)


def test_streaming_beam_search_equals_whole_file_decoding(arpa):
    """The KenLM beam search through flashlight's incremental API, window by window, equals one decode call."""
    tok = CTCTokenizer(TOKENS)
    decoder = BeamSearchDecoder(tok, BeamSearchOptions(str(arpa), beam_size=8))
    cab, bad = [C, C, PAD, A, B, SEP], [B, A, A, D, SEP]
    lp = emissions((cab + bad) * 6, {3: {D: -0.3}, 9: {C: -0.2}, 20: {A: -0.1}})
    whole = decoder.decode(lp, 0.02)
    for step in (1, 7, 25):
        stream = decoder.stream(0.02)
        for a in range(0, len(lp), step):
            stream.add(lp[a : a + step])
        hyp = stream.finish()
        assert hyp.text == whole.text and hyp.score == pytest.approx(whole.score)
        assert [(w.word, w.start, w.end, w.confidence) for w in hyp.words] == [
            (w.word, w.start, w.end, w.confidence) for w in whole.words
        ]
