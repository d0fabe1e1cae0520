"""Sequence generation for encoder-decoder models: greedy and beam search with fairseq's rules.

The pieces follow whisper's `decoding.py`: `DecodingOptions` (frozen), an `Inference` that owns the model call
and its key/value cache (the only thing generation sees, so this module knows no model class), `LogProbFilter`
(the per-step rules on the next-token log-probs), `BeamSearch` (candidates, finished hypotheses, the beams that
go on), `SequenceRanker` (the length-normalised score) and one loop, `generate`.

The rules are fairseq's `SequenceGenerator` (fairseq/sequence_generator.py, search.py `BeamSearch.step`):

- the decoder input starts with `</s>` (decoder_start = eos); prefix tokens (the target-language tag) are forced,
  and their log-probs count in the score;
- every step: NaN -> -inf, `<pad>` -> -inf, `<unk>` -= unk_penalty; at max_len only `</s>` is left; a forced
  prefix token is the only one left; before min_len `</s>` is banned (not on forced steps); no-repeat n-grams;
- 2 x beam candidates: top-(2k) cumulative scores over the k beams x V tokens of each utterance (at the first step
  the k beams are one, so only beam 0 counts);
- a candidate ending in `</s>` is finished when it ranks among the first k; its score is the sum of the log-probs
  of all its ids (prefix and `</s>` included) / len ** length_penalty; the first k candidates not ending in `</s>`
  are the next beams;
- an utterance stops with k finished hypotheses or at max_len (where every live beam ends) and leaves the batch
  (its rows and its cache entries are dropped, so the others go on at their own cost); hypotheses come out best
  first. Beam size 1 goes through the same loop: that is greedy search as fairseq's `--beam 1` does it.

Where xlsr departs from fairseq, on purpose:

- max_len = int(max_len_a * x + max_len_b) uses each utterance's own x (its encoder frames unless given), not the
  padded batch length, so a batch gives each utterance what it gets alone (with max_len_a = 0, as the XLS-R
  recipes use, the two agree). Rules that fairseq decides per batch (prefix forcing or the min_len ban, for
  prefixes of different lengths) are decided per utterance for the same reason.
- No-repeat n-grams are checked over the tokens so far, as fairseq's CUDA kernel and its pre-2022 CPU code do;
  its current CPU code compares the padded tail of its buffer and bans nothing (fairseq issue #5206). `</s>` is
  never banned by it (the decoder start is `</s>`, so a 1-gram ban would forbid ending).
- beam_size is not capped at V - 1, and prefixes may not contain `</s>` (fairseq then copies beam 0 to all).
  For 2k <= V - 1 (always, for a real vocabulary) the candidates are exactly fairseq's.

transformers' `generate(num_beams=k)` differs (k candidates per beam, its own finished-hypothesis bookkeeping and
early stopping) and can return a lower-scoring hypothesis than this search: fairseq is the reference here.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from ..errors import ConfigError


@dataclass(frozen=True)
class DecodingOptions:
    """How to generate. Change with `dataclasses.replace`; checked once, here.

    Lengths count output ids before the final `</s>`, prefix included (fairseq's convention):
    max_len = min(int(max_len_a * source_length + max_len_b), len(prefix) + max_new_tokens, max_positions - 1).
    """

    beam_size: int = 5  # fairseq --beam; transformers num_beams. 1 = greedy
    max_new_tokens: int | None = None  # at most this many ids after the prefix, `</s>` not counted
    max_len_a: float = 0.0  # fairseq --max-len-a
    max_len_b: int = 200  # fairseq --max-len-b
    min_len: int = 1  # fairseq --min-len: `</s>` is banned before this many output ids
    length_penalty: float = 1.0  # fairseq --lenpen: score = sum of log-probs / length ** length_penalty
    normalize_scores: bool = True  # fairseq --unnormalized inverts it (then score = sum of log-probs)
    no_repeat_ngram_size: int = 0  # fairseq --no-repeat-ngram-size; transformers no_repeat_ngram_size
    unk_penalty: float = 0.0  # fairseq --unkpen: subtracted from `<unk>`'s log-prob
    # Forced first ids (the target-language tag): one sequence for every utterance, or one per utterance.
    # fairseq --prefix-size with the tag; transformers forced_bos_token_id.
    prefix_tokens: tuple[int, ...] | tuple[tuple[int, ...], ...] = ()
    # Ids of the target dictionary (fairseq's and mBART's); transformers' generation_config names them
    # decoder_start_token_id, eos_token_id, pad_token_id.
    decoder_start_id: int = 2
    eos_id: int = 2
    pad_id: int = 1
    unk_id: int = 3

    def __post_init__(self):
        checks = [
            (self.beam_size >= 1, f"beam_size must be at least 1, got {self.beam_size}"),
            (self.max_new_tokens is None or self.max_new_tokens >= 0, "max_new_tokens must be >= 0"),
            (self.min_len >= 0, f"min_len must be >= 0, got {self.min_len}"),
            (self.no_repeat_ngram_size >= 0, "no_repeat_ngram_size must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        # ids for every utterance, or one sequence of ids per utterance; lists are stored as tuples
        is_id = [isinstance(p, numbers.Integral) for p in self.prefix_tokens]
        if all(is_id):
            prefix = tuple(int(t) for t in self.prefix_tokens)
            sequences = [prefix]
        elif not any(is_id):
            prefix = sequences = tuple(tuple(int(t) for t in p) for p in self.prefix_tokens)
        else:
            raise ConfigError("prefix_tokens: give ids, or one sequence of ids per utterance, not a mix")
        object.__setattr__(self, "prefix_tokens", prefix)
        if any(t in (self.eos_id, self.pad_id) for p in sequences for t in p):
            raise ConfigError(f"prefix_tokens may not contain </s> ({self.eos_id}) or <pad> ({self.pad_id})")

    @property
    def per_utterance_prefix(self) -> bool:
        return bool(self.prefix_tokens) and isinstance(self.prefix_tokens[0], tuple)

    def prefixes(self, batch: int) -> list[tuple[int, ...]]:
        """The forced ids of each of `batch` utterances."""
        if not self.per_utterance_prefix:
            return [tuple(self.prefix_tokens)] * batch
        if len(self.prefix_tokens) != batch:
            raise ConfigError(f"prefix_tokens has {len(self.prefix_tokens)} sequences for {batch} utterances")
        return [tuple(p) for p in self.prefix_tokens]

    def max_lengths(self, source_lengths: list[int], max_positions: int | None) -> list[int]:
        """Per utterance, the most output ids before the `</s>` forced after them (fairseq's max_len)."""
        out = []
        for x, prefix in zip(source_lengths, self.prefixes(len(source_lengths))):
            n = int(self.max_len_a * x + self.max_len_b)
            if self.max_new_tokens is not None:
                n = min(n, len(prefix) + self.max_new_tokens)
            if max_positions is not None:
                n = min(n, max_positions - 1)
            if n < self.min_len:
                raise ConfigError(f"min_len {self.min_len} is larger than the maximum length {n}")
            out.append(n)
        return out


@dataclass
class Hypothesis:
    """One finished sequence. tokens: the output ids after the decoder start, prefix and final `</s>`
    included (fairseq's `hypo["tokens"]`); positional_scores: the log-prob of each; score: their sum divided by
    len(tokens) ** length_penalty."""

    tokens: list[int]
    score: float
    positional_scores: list[float] = field(repr=False)


class Inference(Protocol):
    """What generation needs from a model: next-token log-probs and a cache that follows the beams.

    source_lengths: (B,) long, the encoder frames of each utterance (the x of max_len_a * x + max_len_b); its
    length is the batch size and its device is where generation puts its tensors.
    max_positions: the decoder's longest input (fairseq max_decoder_positions), or None.
    """

    source_lengths: Tensor
    max_positions: int | None

    def start(self, beams: int) -> None:
        """Begin a search with `beams` rows per utterance: N = B * beams rows, utterance-major."""

    def log_probs(self, tokens: Tensor) -> Tensor:
        """tokens: (N, L) long, every row's ids so far (decoder start first) -> (N, V) float32 log-probs of the
        next id. An implementation with a cache feeds the model only the ids it has not seen."""

    def rearrange_kv_cache(self, source_indices: Tensor) -> None:
        """source_indices: (N,) long: row n continues the hypothesis that row source_indices[n] held (always a row
        of the same utterance)."""

    def keep_utterances(self, keep: Tensor) -> None:
        """keep: (B',) long, the utterances (indices into the current batch) that go on; the others are done and
        their rows leave: afterwards N = B' * beams."""


class DecoderInference:
    """`Inference` for xlsr's decoder (models/decoder.py): `decoder(tokens, encoder_out, encoder_padding, cache)
    -> logits (N, L, V)`, `decoder.new_cache(encoder_out, encoder_padding, beams)`, `cache.reorder(indices)`,
    `cache.keep_utterances(keep)`.

    encoder_out: (B, T, D); encoder_padding: (B, T) bool, True = padded, or None. The encoder states (and the
    cross-attention keys/values the cache computes from them) are held once per utterance, not per beam.
    max_positions: by default the decoder's `max_target_positions`.
    """

    def __init__(self, decoder: Any, encoder_out: Tensor, encoder_padding: Tensor | None = None, max_positions=None):
        self.decoder = decoder
        self.encoder_out = encoder_out
        self.encoder_padding = encoder_padding
        # the decoder's learned positions bound the length (fairseq max_decoder_positions)
        self.max_positions = getattr(decoder, "max_target_positions", None) if max_positions is None else max_positions
        B, T = encoder_out.shape[:2]
        if encoder_padding is None:
            self.source_lengths = torch.full((B,), T, dtype=torch.long, device=encoder_out.device)
        else:
            self.source_lengths = (~encoder_padding).sum(1)
        self.cache = None
        self.seen = 0  # ids per row the cache holds

    def start(self, beams: int) -> None:
        self.cache = self.decoder.new_cache(self.encoder_out, self.encoder_padding, beams=beams)
        self.seen = 0

    def log_probs(self, tokens: Tensor) -> Tensor:
        new = tokens[:, self.seen :]  # (N, L - seen)
        logits = self.decoder(new, self.encoder_out, self.encoder_padding, cache=self.cache)  # (N, L - seen, V)
        self.seen = tokens.shape[1]
        return torch.log_softmax(logits[:, -1].float(), dim=-1)  # (N, V)

    def rearrange_kv_cache(self, source_indices: Tensor) -> None:
        self.cache.reorder(source_indices)

    def keep_utterances(self, keep: Tensor) -> None:
        self.cache.keep_utterances(keep)
        self.encoder_out = self.encoder_out.index_select(0, keep)
        if self.encoder_padding is not None:
            self.encoder_padding = self.encoder_padding.index_select(0, keep)


class SequenceRanker:
    """fairseq's length normalisation: score = sum of log-probs / len ** length_penalty (len counts `</s>`)."""

    def __init__(self, length_penalty: float = 1.0, normalize: bool = True):
        self.length_penalty = length_penalty
        self.normalize = normalize

    def score(self, sum_logprob: float, length: int) -> float:
        return sum_logprob / length**self.length_penalty if self.normalize else sum_logprob

    def rank(self, hypotheses: list[Hypothesis]) -> list[Hypothesis]:
        return sorted(hypotheses, key=lambda h: -h.score)


class LogProbFilter:
    """The per-step rules on the next-token log-probs, in fairseq's order (see the module docstring)."""

    def __init__(self, options: DecodingOptions):
        self.o = options

    def apply(self, step: int, lprobs: Tensor, tokens: Tensor, prefix: Tensor, max_len: Tensor) -> Tensor:
        """lprobs: (N, V) for output position `step`, changed in place; tokens: (N, step + 1) the ids so far;
        prefix: (N, P) long, each row's forced ids, `<pad>` after a row's prefix ends; max_len: (N,) long."""
        o = self.o
        torch.nan_to_num_(lprobs, nan=-math.inf, posinf=math.inf, neginf=-math.inf)  # one pass (isnan: three)
        lprobs[:, o.pad_id] = -math.inf
        lprobs[:, o.unk_id] -= o.unk_penalty
        at_max = step >= max_len  # (N,)
        if at_max.any():
            eos = lprobs[:, o.eos_id].clone()
            lprobs[at_max] = -math.inf
            lprobs[at_max, o.eos_id] = eos[at_max]
        forced = prefix[:, step] if step < prefix.shape[1] else torch.full_like(max_len, o.pad_id)  # (N,)
        is_forced = (forced != o.pad_id) & ~at_max  # (N,)
        if is_forced.any():
            kept = lprobs.gather(1, forced[:, None])  # (N, 1)
            lprobs[is_forced] = -math.inf
            lprobs[is_forced] = lprobs[is_forced].scatter(1, forced[is_forced, None], kept[is_forced])
        if step < o.min_len:
            lprobs[~is_forced & ~at_max, o.eos_id] = -math.inf
        if o.no_repeat_ngram_size > 0:
            self.ban_repeated_ngrams(lprobs, tokens)
        return lprobs

    def ban_repeated_ngrams(self, lprobs: Tensor, tokens: Tensor) -> None:
        """Ban every id that would complete an n-gram already in the row (n = no_repeat_ngram_size)."""
        n = self.o.no_repeat_ngram_size
        if tokens.shape[1] < n:
            return
        grams = tokens.unfold(1, n, 1)  # (N, W, n): every n-gram so far, W = L - n + 1
        tail = tokens[:, tokens.shape[1] - (n - 1) :]  # (N, n - 1): what the next id would complete
        match = (grams[:, :, : n - 1] == tail[:, None, :]).all(-1)  # (N, W)
        rows, cols = match.nonzero(as_tuple=True)
        banned = grams[rows, cols, n - 1]
        keep = banned != self.o.eos_id
        lprobs[rows[keep], banned[keep]] = -math.inf


class BeamSearch:
    """k beams per utterance: N = B * k rows, row b * k + j is beam j of utterance b, for the B utterances still
    searched (`alive` holds their indices in the input batch; finished ones leave).

    tokens: (N, max_len + 2) ids, decoder start first; scores: (N, max_len + 1) cumulative log-probs (fairseq
    keeps cumulative scores and takes differences for the positional ones; so do we, for the same rounding);
    prefix: (B, P) forced ids, `<pad>`-filled; max_len: (B,) long.
    """

    def __init__(self, options: DecodingOptions, prefix: Tensor, max_len: Tensor):
        B, k = prefix.shape[0], options.beam_size
        self.k, self.eos = k, options.eos_id
        self.ranker = SequenceRanker(options.length_penalty, options.normalize_scores)
        self.alive = torch.arange(B, device=prefix.device)
        self.prefix, self.max_len = prefix, max_len
        longest, device = int(max_len.max()), prefix.device
        self.tokens = torch.full((B * k, longest + 2), options.pad_id, dtype=torch.long, device=device)
        self.tokens[:, 0] = options.decoder_start_id
        self.scores = torch.zeros(B * k, longest + 1, device=device)
        self.finished: list[list[Hypothesis]] = [[] for _ in range(B)]

    def rows(self, per_utterance: Tensor) -> Tensor:
        """(B, ...) -> (N, ...): each utterance's entry for each of its k rows."""
        return per_utterance.repeat_interleave(self.k, 0)

    def step(self, step: int, lprobs: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """lprobs: (N, V) filtered log-probs for output position `step`. Returns (source, keep): the (N',) rows
        the next beams continue (None when every utterance is done), and the (B',) utterances that go on when
        some just finished (else None); source indexes the rows that remain after `keep`."""
        k, V = self.k, lprobs.shape[-1]
        B = len(self.alive)
        if step == 0:  # the k beams of an utterance are still one hypothesis: only beam 0 extends it
            prev = torch.full((B, k), -math.inf, device=lprobs.device)  # (B, k)
            prev[:, 0] = 0.0
        else:
            prev = self.scores[:, step - 1].view(B, k)  # (B, k)
        total = lprobs.view(B, k, V) + prev[:, :, None]  # (B, k, V) cumulative
        cand_scores, cand = total.view(B, k * V).topk(min(2 * k, k * V), dim=1)  # (B, 2k) best first
        cand_beams, cand_ids = cand // V, cand % V  # (B, 2k)
        is_eos = (cand_ids == self.eos) & (cand_scores > -math.inf)  # (B, 2k)
        self.finalize(step, is_eos[:, :k], cand_beams, cand_scores)

        counts = torch.tensor([len(self.finished[u]) for u in self.alive.tolist()], device=lprobs.device)
        done = (counts >= k) | (step >= self.max_len)  # (B,)
        if done.all():
            return None, None
        keep = None
        if done.any():
            keep = (~done).nonzero()[:, 0]  # (B',)
            rows = self.rows(keep * k) + torch.arange(k, device=keep.device).repeat(len(keep))  # (B' * k,)
            self.tokens, self.scores = self.tokens[rows], self.scores[rows]
            self.alive, self.prefix, self.max_len = self.alive[keep], self.prefix[keep], self.max_len[keep]
            cand_scores, cand_beams, cand_ids, is_eos = (x[keep] for x in (cand_scores, cand_beams, cand_ids, is_eos))
            B = len(keep)

        # The next beams: the first k candidates that do not end in </s> (eos ones rank after all others).
        n_cand = cand.shape[1]
        order = is_eos.long() * n_cand + torch.arange(n_cand, device=cand.device)  # (B, 2k)
        active = order.topk(k, dim=1, largest=False).indices  # (B, k) candidate ranks, ascending
        offsets = torch.arange(B, device=cand.device)[:, None] * k  # (B, 1) first row of each utterance
        source = (cand_beams.gather(1, active) + offsets).view(-1)  # (N,)
        self.tokens[:, : step + 1] = self.tokens[source, : step + 1]
        self.tokens[:, step + 1] = cand_ids.gather(1, active).view(-1)
        self.scores[:, :step] = self.scores[source, :step]
        self.scores[:, step] = cand_scores.gather(1, active).view(-1)
        return source, keep

    def finalize(self, step: int, mask: Tensor, cand_beams: Tensor, cand_scores: Tensor) -> None:
        """Set aside the candidates in `mask` ((B, k): ending in `</s>`, among the first k ranks), best first,
        until an utterance has k finished hypotheses."""
        if not mask.any():
            return
        for b, rank in mask.nonzero().tolist():
            finished = self.finished[int(self.alive[b])]
            if len(finished) == self.k:
                continue
            row = b * self.k + int(cand_beams[b, rank])
            cumulative = torch.cat([self.scores[row, :step], cand_scores[b, rank, None]])  # (step + 1,)
            positional = torch.cat([cumulative[:1], cumulative[1:] - cumulative[:-1]])
            tokens = self.tokens[row, 1 : step + 1].tolist() + [self.eos]
            score = self.ranker.score(float(cand_scores[b, rank]), step + 1)
            finished.append(Hypothesis(tokens, score, positional.tolist()))

    def results(self) -> list[list[Hypothesis]]:
        return [self.ranker.rank(f) for f in self.finished]


@torch.no_grad()
def generate(
    inference: Inference, options: DecodingOptions, source_lengths: Tensor | None = None
) -> list[list[Hypothesis]]:
    """Beam search (greedy for beam_size 1) over a batch; per utterance, up to beam_size hypotheses, best first.

    source_lengths: (B,) the x of max_len_a * x + max_len_b (fairseq: input samples or feature frames); by
    default `inference.source_lengths`, the encoder frames.
    """
    lengths = inference.source_lengths if source_lengths is None else source_lengths
    device = inference.source_lengths.device
    max_len = torch.tensor(options.max_lengths([int(x) for x in lengths], inference.max_positions), device=device)
    prefixes = options.prefixes(len(lengths))
    prefix = torch.full((len(lengths), max(map(len, prefixes))), options.pad_id, dtype=torch.long)  # (B, P)
    for b, p in enumerate(prefixes):
        prefix[b, : len(p)] = torch.tensor(p, dtype=torch.long)
    search = BeamSearch(options, prefix.to(device), max_len)
    rules = LogProbFilter(options)

    inference.start(options.beam_size)
    source = None
    for step in range(int(max_len.max()) + 1):  # the last step only ends hypotheses
        if source is not None:
            inference.rearrange_kv_cache(source)
        tokens = search.tokens[:, : step + 1]  # (N, step + 1)
        lprobs = inference.log_probs(tokens)  # (N, V)
        rules.apply(step, lprobs, tokens, search.rows(search.prefix), search.rows(search.max_len))
        source, keep = search.step(step, lprobs)
        if source is None:
            break
        if keep is not None:
            inference.keep_utterances(keep)
    return search.results()
