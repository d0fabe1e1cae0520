"""Sequence generation (xlsr/decoding/generate.py) on a toy decoder that has the API of xlsr's decoder.

References, each named in its test: every output sequence enumerated and scored one by one (for beams wider than
the whole search space); a plain-Python transcription of fairseq's SequenceGenerator rules
(fairseq/sequence_generator.py `_generate`, search.py `BeamSearch.step`: 2k candidates, `</s>` among the first k
ranks finishes, the first k others go on, stop at k finished), run on one hypothesis at a time without a cache;
a plain argmax loop. fairseq's own outputs (tests/fixtures/fairseq_st/generate.json) need the real model and
are compared where the model is tested.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch

from xlsr.decoding.generate import DecoderInference, DecodingOptions, generate
from xlsr.errors import ConfigError

BOS, PAD, EOS, UNK = 0, 1, 2, 3


class ToyCache:
    """The decoder cache's API: `reorder(indices)`, `keep_utterances(keep)`; records both. Like the real one it
    holds the encoder side once per utterance (`context`, (B, D)) and the decoder side per row (`state`)."""

    def __init__(self, context: torch.Tensor, beams: int):
        self.context, self.beams = context, beams
        self.state = None  # (N, D) running sum of position-weighted embeddings
        self.length = 0
        self.reorders: list[torch.Tensor] = []
        self.keeps: list[torch.Tensor] = []

    def reorder(self, indices: torch.Tensor) -> None:
        self.reorders.append(indices.clone())
        self.state = self.state.index_select(0, indices)

    def keep_utterances(self, keep: torch.Tensor) -> None:
        self.keeps.append(keep.clone())
        self.context = self.context.index_select(0, keep)
        rows = (keep[:, None] * self.beams + torch.arange(self.beams)).flatten()
        self.state = self.state.index_select(0, rows)


class ToyDecoder:
    """Deterministic random decoder with xlsr's decoder API. Position p of a row gives
    logits = tanh(sum_{j<=p} w[j] * embed[token_j] + context) @ out[p] (+ eos_bias * p on `</s>`),
    where context is the mean of the utterance's unpadded encoder frames, projected. The output depends on the
    whole history, so a cache that is not reordered with the beams gives different results."""

    def __init__(self, vocab: int, seed: int = 0, dim: int = 8, enc_dim: int = 4, positions: int = 16, **kw):
        g = torch.Generator().manual_seed(seed)
        self.dim = dim
        self.embed = torch.randn(vocab, dim, generator=g)
        self.w = torch.randn(positions, generator=g)
        self.out = torch.randn(positions, dim, vocab, generator=g) * kw.get("scale", 2.0) / dim**0.5
        self.proj = torch.randn(enc_dim, dim, generator=g)
        self.eos_bias = kw.get("eos_bias", 0.0)
        self.calls: list[tuple[int, int]] = []  # (rows, new tokens) per call

    def context(self, encoder_out, encoder_padding):  # (B, T, E) -> (B, D)
        valid = torch.ones(encoder_out.shape[:2]) if encoder_padding is None else (~encoder_padding).float()
        mean = (encoder_out * valid[..., None]).sum(1) / valid.sum(1, keepdim=True)
        return mean @ self.proj

    def __call__(self, tokens, encoder_out, encoder_padding, cache=None):
        N, L = tokens.shape
        context = self.context(encoder_out, encoder_padding) if cache is None else cache.context  # (B, D)
        assert N % len(context) == 0
        context = context.repeat_interleave(N // len(context), 0)  # (N, D)
        start = 0 if cache is None else cache.length
        state = torch.zeros(N, self.dim) if cache is None or cache.state is None else cache.state
        logits = []
        for i in range(L):
            p = start + i
            state = state + self.w[p] * self.embed[tokens[:, i]]
            step = torch.tanh(state + context) @ self.out[p]  # (N, V)
            step[:, EOS] += self.eos_bias * p
            logits.append(step)
        if cache is not None:
            cache.state, cache.length = state, cache.length + L
        self.calls.append((N, L))
        return torch.stack(logits, 1)  # (N, L, V)

    def new_cache(self, encoder_out, encoder_padding, beams: int) -> ToyCache:
        self.cache = ToyCache(self.context(encoder_out, encoder_padding), beams)
        return self.cache


class NoCacheInference(DecoderInference):
    """The whole history every step, no cache: the reference for the cached path."""

    def start(self, beams):
        pass

    def log_probs(self, tokens):
        return torch.log_softmax(self.decoder(tokens, self.encoder_out, self.encoder_padding)[:, -1].float(), -1)

    def rearrange_kv_cache(self, source_indices):
        pass

    def keep_utterances(self, keep):
        self.encoder_out, self.encoder_padding = self.encoder_out[keep], self.encoder_padding[keep]


def encoder_batch(lengths: list[int], seed: int = 1, dim: int = 4):
    """(B, T, E) random frames, right-padded with garbage (which the toy must not see), and the padding mask."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    out = torch.randn(len(lengths), T, dim, generator=g)
    padding = torch.arange(T)[None, :] >= torch.tensor(lengths)[:, None]  # (B, T) True = padded
    out[padding] = 100.0
    return out, padding


def score_sequence(decoder, enc, seq: list[int], unk_penalty: float = 0.0) -> list[float]:
    """Log-prob of each id of `seq` (the output after `</s>`), teacher-forced, one row, pad banned."""
    logits = decoder(torch.tensor([[EOS, *seq[:-1]]]), enc, None)[0]  # (L, V)
    lp = torch.log_softmax(logits.float(), -1)
    return [float(lp[i, t]) - (unk_penalty if t == UNK else 0.0) for i, t in enumerate(seq)]


def enumerate_all(decoder, enc, V, max_len, prefix=(), min_len=1, length_penalty=1.0, unk_penalty=0.0, keep=None):
    """Every output the rules allow: prefix, then any non-`</s>` non-`<pad>` ids, then `</s>`, with at least
    min_len and at most max_len ids before `</s>` -> (tokens) -> length-normalised score."""
    free = [t for t in range(V) if t not in (PAD, EOS)]
    scores = {}
    for n in range(max(min_len, len(prefix)), max_len + 1):
        seqs = [[*prefix, *tail, EOS] for tail in itertools.product(free, repeat=n - len(prefix))]
        seqs = torch.tensor([s for s in seqs if keep is None or keep(s)])  # (S, n + 1)
        logits = decoder(torch.cat([torch.full((len(seqs), 1), EOS), seqs[:, :-1]], 1), enc, None)  # (S, n + 1, V)
        lp = torch.log_softmax(logits.float(), -1).gather(2, seqs[..., None])[..., 0]  # (S, n + 1)
        lp = lp - unk_penalty * (seqs == UNK)
        for seq, total in zip(seqs.tolist(), lp.sum(1).tolist()):
            scores[tuple(seq)] = total / len(seq) ** length_penalty
    return scores


def fairseq_rules(decoder, enc, V, k, max_len, prefix=(), min_len=1, length_penalty=1.0, unk_penalty=0.0, ngram=0):
    """fairseq's SequenceGenerator for one utterance, transcribed with lists: hypotheses one at a time, the
    whole history fed every step."""

    def lprobs(seq: list[int], step: int) -> list[float]:
        lp = torch.log_softmax(decoder(torch.tensor([seq]), enc, None)[0, -1].float(), -1).tolist()
        lp[PAD] = -math.inf
        lp[UNK] -= unk_penalty
        if step >= max_len:
            lp = [v if t == EOS else -math.inf for t, v in enumerate(lp)]
        elif step < len(prefix):
            lp = [v if t == prefix[step] else -math.inf for t, v in enumerate(lp)]
        elif step < min_len:
            lp[EOS] = -math.inf
        if ngram and len(seq) >= ngram:
            for i in range(len(seq) - ngram + 1):
                if seq[i : i + ngram - 1] == seq[len(seq) - ngram + 1 :] and seq[i + ngram - 1] != EOS:
                    lp[seq[i + ngram - 1]] = -math.inf
        return lp

    beams = [([EOS], 0.0, [])]  # (ids with the decoder start, cumulative score, positional scores)
    finished = []
    for step in range(max_len + 1):
        candidates = []
        for j, (seq, cum, _) in enumerate(beams):
            for t, v in enumerate(lprobs(seq, step)):
                if v > -math.inf:
                    candidates.append((cum + v, j, t))
        candidates = sorted(candidates, key=lambda c: -c[0])[: 2 * k]
        for s, j, t in candidates[:k]:
            if t == EOS and len(finished) < k:
                seq, cum, pos = beams[j]
                finished.append((seq[1:] + [EOS], s / (step + 1) ** length_penalty, pos + [s - cum]))
        if len(finished) == k or step == max_len:
            break
        beams = [(beams[j][0] + [t], s, beams[j][2] + [s - beams[j][1]]) for s, j, t in candidates if t != EOS][:k]
    return sorted(finished, key=lambda h: -h[1])


def run(decoder, enc, padding, cache=True, **options):
    inference = (DecoderInference if cache else NoCacheInference)(decoder, enc, padding)
    return generate(inference, DecodingOptions(**options))


def assert_same(hyps, reference):
    assert [h.tokens for h in hyps] == [r[0] for r in reference]
    for h, (_, score, positional) in zip(hyps, reference):
        assert h.score == pytest.approx(score, abs=1e-5)
        assert h.positional_scores == pytest.approx(positional, abs=1e-5)


# -- against exhaustive search ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rules",
    [
        dict(),
        dict(prefix_tokens=(5,), length_penalty=0.5, unk_penalty=0.7),
        dict(min_len=2, length_penalty=2.0),
    ],
    ids=["plain", "prefix-lenpen-unkpen", "min_len"],
)
def test_a_beam_wider_than_the_search_space_finds_every_sequence(rules):
    """Reference: every allowed sequence enumerated and scored alone. With beam 100 > 4^2 * 5 candidates per
    step, nothing is pruned: the hypotheses are all sequences, with their scores, best first."""
    V, max_len = 6, 3
    decoder = ToyDecoder(V, seed=3)
    enc, padding = encoder_batch([5, 3])
    hyps = run(decoder, enc, padding, beam_size=100, max_len_b=max_len, **rules)
    for b, length in enumerate([5, 3]):
        expected = enumerate_all(
            decoder,
            enc[b : b + 1, :length],
            V,
            max_len,
            prefix=rules.get("prefix_tokens", ()),
            min_len=rules.get("min_len", 1),
            length_penalty=rules.get("length_penalty", 1.0),
            unk_penalty=rules.get("unk_penalty", 0.0),
        )
        got = {tuple(h.tokens): h.score for h in hyps[b]}
        assert got.keys() == expected.keys()
        assert all(got[s] == pytest.approx(expected[s], abs=1e-5) for s in expected)
        assert [h.score for h in hyps[b]] == sorted((h.score for h in hyps[b]), reverse=True)
        best = max(expected, key=expected.get)
        assert tuple(hyps[b][0].tokens) == best


def test_no_repeat_ngram_removes_exactly_the_sequences_with_a_repeated_ngram():
    """Reference: exhaustive enumeration keeping the sequences whose bigrams (decoder start included, as in
    fairseq's CUDA kernel) are all distinct; banning does not renormalise, so their scores are unchanged."""
    V, max_len = 6, 4
    decoder = ToyDecoder(V, seed=4)
    enc, padding = encoder_batch([4])

    def distinct_bigrams(seq):
        ids = [EOS, *seq[:-1]]
        grams = list(zip(ids, ids[1:]))
        return len(grams) == len(set(grams))

    hyps = run(decoder, enc, padding, beam_size=400, max_len_b=max_len, no_repeat_ngram_size=2)[0]
    expected = enumerate_all(decoder, enc, V, max_len, keep=distinct_bigrams)
    assert len(expected) < len(enumerate_all(decoder, enc, V, max_len))
    got = {tuple(h.tokens): h.score for h in hyps}
    assert got.keys() == expected.keys()
    assert all(got[s] == pytest.approx(expected[s], abs=1e-5) for s in expected)


# -- against fairseq's rules ---------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3, 5])
@pytest.mark.parametrize(
    "rules",
    [dict(), dict(prefix_tokens=(7,), length_penalty=0.7, unk_penalty=0.5), dict(min_len=3, no_repeat_ngram_size=2)],
    ids=["plain", "prefix-lenpen-unkpen", "minlen-ngram"],
)
def test_beam_search_follows_fairseq_rules(k, rules):
    """Reference: `fairseq_rules`, the list transcription of fairseq's SequenceGenerator, per utterance."""
    V, max_len = 12, 6
    decoder = ToyDecoder(V, seed=12, eos_bias=0.1)
    lengths = [6, 2, 4, 3, 5]
    enc, padding = encoder_batch(lengths, seed=5)
    hyps = run(decoder, enc, padding, beam_size=k, max_len_b=max_len, **rules)
    kw = dict(
        prefix=rules.get("prefix_tokens", ()),
        min_len=rules.get("min_len", 1),
        length_penalty=rules.get("length_penalty", 1.0),
        unk_penalty=rules.get("unk_penalty", 0.0),
        ngram=rules.get("no_repeat_ngram_size", 0),
    )
    ends = set()
    for b, length in enumerate(lengths):
        reference = fairseq_rules(decoder, enc[b : b + 1, :length], V, k, max_len, **kw)
        assert len(reference) == k
        assert_same(hyps[b], reference)
        ends |= {len(h.tokens) == max_len + 1 for h in hyps[b]}
    assert ends == {True, False}  # some hypotheses end by themselves, some are cut at max_len


def test_beam_one_is_the_argmax_loop_with_eos_forced_at_max_len():
    """Reference: a plain loop: start from [</s>, tag], append the argmax (pad excluded) of the last position,
    stop after </s>, or append </s> after max_len ids. Greedy = beam 1 of the same search (fairseq --beam 1)."""
    V, max_len, tag = 12, 7, 9
    decoder = ToyDecoder(V, seed=3, eos_bias=0.1)
    lengths = [3, 6, 5, 2]
    enc, padding = encoder_batch(lengths, seed=7)
    hyps = run(decoder, enc, padding, beam_size=1, max_len_b=max_len, prefix_tokens=(tag,))
    ends = set()
    for b, length in enumerate(lengths):
        seq = [EOS, tag]
        while seq[-1] != EOS and len(seq) <= max_len:
            logits = decoder(torch.tensor([seq]), enc[b : b + 1, :length], None)[0, -1]
            logits[PAD] = -math.inf
            seq.append(int(logits.argmax()))
        if seq[-1] != EOS:
            seq.append(EOS)
        logprobs = score_sequence(decoder, enc[b : b + 1, :length], seq[1:])
        assert len(hyps[b]) == 1
        assert hyps[b][0].tokens == seq[1:]
        assert hyps[b][0].score == pytest.approx(sum(logprobs) / len(logprobs), abs=1e-5)
        ends.add(len(seq) - 1 == max_len + 1)
    assert ends == {True, False}


# -- batching, cache, lengths ----------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 4])
def test_a_batch_gives_each_utterance_what_it_gets_alone(k):
    """Reference: the same search on each utterance alone (no padding). Different frames, different prefixes
    (of different lengths) and max_len_a: the utterances finish at different steps and leave the batch."""
    V = 12
    decoder = ToyDecoder(V, seed=8, eos_bias=0.3)
    lengths = [7, 3, 5]
    prefixes = ((4,), (5, 6), ())
    enc, padding = encoder_batch(lengths, seed=9)
    options = dict(beam_size=k, max_len_a=0.5, max_len_b=2, min_len=2)
    batch = run(decoder, enc, padding, prefix_tokens=prefixes, **options)
    assert decoder.cache.keeps  # finished utterances left the batch
    for b, length in enumerate(lengths):
        alone = run(decoder, enc[b : b + 1, :length], None, prefix_tokens=prefixes[b], **options)[0]
        assert [h.tokens for h in batch[b]] == [h.tokens for h in alone]
        assert [h.score for h in batch[b]] == pytest.approx([h.score for h in alone], abs=1e-5)
        assert all(len(h.tokens) <= int(0.5 * length + 2) + 1 for h in alone)
        assert all(h.tokens[: len(prefixes[b])] == list(prefixes[b]) for h in alone)


def test_the_cache_follows_the_beams():
    """Reference: the same search feeding the whole history every step without a cache. The cached run feeds
    one new id per step, and reorders the cache within each utterance's rows only."""
    V, k = 12, 3
    decoder = ToyDecoder(V, seed=12, eos_bias=0.2)
    enc, padding = encoder_batch([4, 6], seed=3)
    options = dict(beam_size=k, max_len_b=6, prefix_tokens=(8,))
    cached = run(decoder, enc, padding, **options)
    reorders, calls = decoder.cache.reorders, list(decoder.calls)
    assert calls[0] == (2 * k, 1) and all(new == 1 for _, new in calls[1:])
    assert len(reorders) == len(calls) - 1
    uncached = run(decoder, enc, padding, cache=False, **options)
    assert [[h.tokens for h in u] for u in cached] == [[h.tokens for h in u] for u in uncached]
    assert [h.score for u in cached for h in u] == pytest.approx([h.score for u in uncached for h in u], abs=1e-6)
    rows = [torch.arange(len(r)) for r in reorders]
    assert all(torch.equal(r // k, i // k) for r, i in zip(reorders, rows))  # never across utterances
    assert any(not torch.equal(r, i) for r, i in zip(reorders, rows))  # the beams did change places


def test_eos_is_forced_at_max_len_from_a_and_b_and_max_new_tokens_caps_it():
    """A decoder that never ends by itself: every hypothesis has exactly max_len ids before </s>, with
    max_len = int(max_len_a * frames + max_len_b), capped by len(prefix) + max_new_tokens and max_positions - 1."""
    decoder = ToyDecoder(10, seed=5, eos_bias=-100.0)
    lengths = [4, 9, 6]  # the first to end is not the last of the batch
    enc, padding = encoder_batch(lengths)
    hyps = run(decoder, enc, padding, beam_size=2, max_len_a=0.5, max_len_b=1)
    assert [{len(h.tokens) for h in u} for u in hyps] == [{int(0.5 * x + 1) + 1} for x in lengths] == [{4}, {6}, {5}]
    assert all(h.tokens[-1] == EOS and EOS not in h.tokens[:-1] for u in hyps for h in u)
    hyps = run(decoder, enc, padding, beam_size=2, max_len_a=0.5, max_len_b=1, max_new_tokens=2, prefix_tokens=(5,))
    assert [{len(h.tokens) for h in u} for u in hyps] == [{4}, {1 + 2 + 1}, {1 + 2 + 1}]
    prefixes = ((), (5, 6, 7), (8,))  # the second is still forced after the first has left the batch
    hyps = run(decoder, enc, padding, beam_size=2, max_len_a=0.5, max_len_b=-1, prefix_tokens=prefixes)
    assert [{len(h.tokens) for h in u} for u in hyps] == [{2}, {4}, {3}]
    assert all(h.tokens[: len(p)] == list(p) for u, p in zip(hyps, prefixes) for h in u)
    inference = DecoderInference(decoder, enc, padding, max_positions=3)
    hyps = generate(inference, DecodingOptions(beam_size=2, max_len_b=10))
    assert [{len(h.tokens) for h in u} for u in hyps] == [{3}, {3}, {3}]


def test_an_utterance_stops_once_it_has_beam_size_finished_hypotheses():
    """fairseq's stopping rule: a decoder that always prefers </s> (banned at step 0 by min_len 1) gives k
    finished hypotheses at step 1, and the search stops there instead of running to max_len."""
    decoder = ToyDecoder(10, seed=6, eos_bias=100.0)
    enc, padding = encoder_batch([5])
    hyps = run(decoder, enc, padding, beam_size=2, max_len_b=50)[0]
    assert len(decoder.calls) == 2
    assert [len(h.tokens) for h in hyps] == [2, 2] and hyps[0].tokens != hyps[1].tokens


def test_options_are_checked_once_with_one_line_errors():
    with pytest.raises(ConfigError, match="beam_size"):
        DecodingOptions(beam_size=0)
    with pytest.raises(ConfigError, match="may not contain"):
        DecodingOptions(prefix_tokens=(5, EOS))
    with pytest.raises(ConfigError, match="not a mix"):
        DecodingOptions(prefix_tokens=(5, (6,)))
    options = DecodingOptions(prefix_tokens=[[5], [6, 7]])
    assert options.prefix_tokens == ((5,), (6, 7)) and hash(options)
    assert dataclasses.replace(options, beam_size=1).prefixes(2) == [(5,), (6, 7)]
    with pytest.raises(ConfigError, match="3 utterances"):
        options.prefixes(3)
    enc, padding = encoder_batch([3])
    with pytest.raises(ConfigError, match="min_len 5 is larger than the maximum length 3"):
        run(ToyDecoder(6), enc, padding, min_len=5, max_len_b=3)


def test_the_filter_turns_nan_into_minus_infinity_and_keeps_the_infinities():
    """fairseq's first rule (NaN -> -inf), done in one in-place pass: infinities and finite values stay."""
    from xlsr.decoding.generate import LogProbFilter

    lprobs = torch.tensor([[0.5, math.nan, -1.0, math.inf, -math.inf, -2.0], [math.nan] * 3 + [-0.1, -0.2, -0.3]])
    tokens = torch.full((2, 3), 4)
    prefix = torch.full((2, 1), 1)  # <pad>: nothing forced
    out = LogProbFilter(DecodingOptions(min_len=0, pad_id=1, unk_id=3, eos_id=2)).apply(
        2, lprobs.clone(), tokens, prefix, torch.tensor([9, 9])
    )
    assert not torch.isnan(out).any()
    expected = torch.tensor([[0.5, -math.inf, -1.0, math.inf, -math.inf, -2.0], [-math.inf] * 4 + [-0.2, -0.3]])
    expected[1, 3] = -0.1
    expected[:, 1] = -math.inf  # <pad>, banned
    assert torch.equal(out, expected)
