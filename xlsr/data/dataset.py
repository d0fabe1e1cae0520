"""Datasets and batching for training.

Dataset item (a dict): `audio` (S,) float32 normalised waveform, `index`, `epoch`, `utterance` (the
manifest row: `path`, `samples`, `lang`, `text`, other columns), `training`. An utterance whose audio
cannot be decoded gives an item with `error` (the one-line reason) instead of `audio`; `ReadableOnly`
leaves it out of its batch.

A collated batch is a dict. Its keys, by task (B utterances, S samples, T frames, D model dim, N masked
frames, K negatives, L target tokens of the whole batch):
    every task:
        audio: (B, S) float                  audio_lens: (B,) long samples (None in pretraining if unpadded)
        sample_size: int, the loss's units   audio_seconds: float
        unreadable: list of (path, reason), added by `ReadableOnly`
            (a batch none of whose audio could be read is only {unreadable, empty: True})
    pretraining:
        mask: (B, T) bool, True = masked     negatives: (N, K) long      noise_seed: int
    CTC:
        targets: (L,) long, concatenated     target_lens: (B,) long      texts: list[str]
        time_mask: (B, T) bool or None       channel_mask: (B, D) bool or None
        keys: list of B (split, index), the utterances whose whole audio the batch holds (the feature cache's)
    classification:
        labels: (B,) long                    time_mask, channel_mask: as for CTC

The sampler (`BatchSampler`) is separate from the dataset: it orders utterances by (cropped) length,
packs them into batches bounded by `max_tokens` (longest x count, as fairseq's batch_by_size),
reshuffles the batches every epoch, resamples languages as XLS-R does, and shards batches over
processes. Everything random derives from (seed, epoch, index), so a resumed run sees the same data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ..audio import audio_duration, load_audio, normalize
from ..config import Preprocessing
from ..errors import XlsrError
from .manifest import Utterance

log = logging.getLogger("xlsr")


def utterance_sizes(utterances: list[Utterance], sample_rate: int) -> np.ndarray:
    """Samples per utterance at `sample_rate`: from the manifest, else from the file header (-1 if unreadable)."""
    sizes = np.empty(len(utterances), dtype=np.int64)
    for i, u in enumerate(utterances):
        if u.samples is not None:
            sizes[i] = u.samples
        else:
            try:
                sizes[i] = int(round(audio_duration(u.path) * sample_rate))
            except XlsrError as e:
                log.warning("skipped: %s", e)  # one line per file, naming it and the cause
                sizes[i] = -1
    return sizes


class AudioDataset(torch.utils.data.Dataset):
    """Utterances of a manifest; items are addressed by (index, epoch) so crops can depend on the epoch."""

    def __init__(self, utterances: list[Utterance], preprocessing: Preprocessing, min_sample_size: int = 0):
        self.preprocessing = preprocessing
        sizes = utterance_sizes(utterances, preprocessing.sample_rate)
        keep = sizes >= max(min_sample_size, 1)
        self.dropped_short = int(((sizes >= 0) & ~keep).sum())
        self.dropped_unreadable = int((sizes < 0).sum())
        self.utterances = [u for u, k in zip(utterances, keep) if k]
        self.sizes = sizes[keep]
        self.training = True  # tasks draw masks and crops for training batches only

    def select(self, keep: np.ndarray) -> None:
        """Keeps the utterances where `keep` is True."""
        self.utterances = [u for u, k in zip(self.utterances, keep) if k]
        self.sizes = self.sizes[keep]

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, epoch = key
        u = self.utterances[index]
        item = {"index": index, "epoch": epoch, "utterance": u, "training": self.training}
        try:
            audio = load_audio(u.path, self.preprocessing.sample_rate)
        except XlsrError as e:  # a file that passed the up-front check (or skipped it) but does not decode
            return {**item, "error": str(e)}
        if self.preprocessing.do_normalize:  # over the whole utterance, then cropped (as fairseq)
            audio = normalize(torch.from_numpy(audio)[None], eps=self.preprocessing.normalize_eps)[0].numpy()
        return {"audio": audio, **item}


class ReadableOnly:
    """A task's `collate` over the items whose audio could be read; the others are listed in the batch's
    `unreadable` as (path, reason). A batch with no readable item is `{"unreadable": [...], "empty": True}`."""

    def __init__(self, collate: Callable[[list[dict]], dict]):
        self.collate = collate

    def __call__(self, items: list[dict]) -> dict:
        good = [it for it in items if "error" not in it]
        bad = [(str(it["utterance"].path), it["error"]) for it in items if "error" in it]
        if not good:
            return {"unreadable": bad, "empty": True}
        return {**self.collate(good), "unreadable": bad}


def dropped_counts(ds: AudioDataset) -> dict[str, int]:
    """Why utterances of a manifest were left out of a dataset, with counts (for the log)."""
    return {"shorter than min_sample_size": ds.dropped_short, "unreadable": ds.dropped_unreadable}


def evaluation_sampler(sizes: np.ndarray, max_tokens: int, max_sample_size: int, rank: int = 0, world_size: int = 1):
    """Validation batches: by length, not shuffled, sharded over processes."""
    return BatchSampler(sizes, max_tokens, max_sample_size, shuffle=False, rank=rank, world_size=world_size)


def crop_offset(seed: int, epoch: int, index: int, excess: int) -> int:
    """A random crop start in [0, excess], fixed by (seed, epoch, index)."""
    return int(np.random.default_rng([seed, epoch, index]).integers(0, excess + 1)) if excess > 0 else 0


def language_resample(
    langs: list[str | None], sizes: np.ndarray, alpha: float, rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, float]]:
    """XLS-R's language sampling (arXiv 2111.09296 section 3.1): language l, with n_l of the N hours, is drawn
    with probability p_l proportional to (n_l / N)^alpha. An epoch keeps the corpus size; each language gets
    round(count_l * p_l * N / n_l) utterances, drawn with replacement when upsampled.
    Returns the epoch's utterance indices and each language's realised share of the audio."""
    langs_arr = np.array([lang or "" for lang in langs])
    names = sorted(set(langs_arr))
    hours = np.array([sizes[langs_arr == name].sum() for name in names], dtype=np.float64)
    total = hours.sum()
    p = (hours / total) ** alpha
    p /= p.sum()
    chosen = []
    for name, n_l, p_l in zip(names, hours, p):
        members = np.flatnonzero(langs_arr == name)
        target = max(1, int(round(len(members) * p_l * total / n_l)))
        if target <= len(members):
            chosen.append(rng.choice(members, target, replace=False))
        else:
            extra = rng.choice(members, target - len(members), replace=True)
            chosen.append(np.concatenate([members, extra]))
    indices = np.concatenate(chosen)
    realised = {
        name or "?": float(sizes[indices][langs_arr[indices] == name].sum() / sizes[indices].sum()) for name in names
    }
    return indices, realised


@dataclass
class BatchSampler:
    """Length-bucketed batches of (index, epoch) keys, bounded by max_tokens; resumable and shardable."""

    sizes: np.ndarray  # samples per utterance
    max_tokens: int
    max_sample_size: int
    seed: int = 1
    langs: list[str | None] | None = None
    alpha: float = 1.0
    shuffle: bool = True
    rank: int = 0
    world_size: int = 1

    def epoch(self, epoch: int) -> tuple[list[list[tuple[int, int]]], dict[str, float]]:
        """This process's batches for `epoch`, and the languages' realised shares of the audio."""
        rng = np.random.default_rng([self.seed, epoch])
        if self.shuffle and self.langs is not None and self.alpha != 1.0 and len(set(self.langs)) > 1:
            indices, shares = language_resample(self.langs, self.sizes, self.alpha, rng)
        else:
            indices, shares = np.arange(len(self.sizes)), {}
        cropped = np.minimum(self.sizes[indices], self.max_sample_size)
        if self.shuffle:  # longest first, random among equal lengths (fairseq ordered_indices)
            order = np.lexsort((rng.permutation(len(indices)), cropped))[::-1]
        else:
            order = np.argsort(-cropped, kind="stable")
        batches: list[list[tuple[int, int]]] = []
        current: list[tuple[int, int]] = []
        longest = 0
        for i in order:
            size = int(cropped[i])
            if current and max(longest, size) * (len(current) + 1) > self.max_tokens:
                batches.append(current)
                current, longest = [], 0
            current.append((int(indices[i]), epoch))
            longest = max(longest, size)
        if current:
            batches.append(current)
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        if self.world_size > 1:  # every process gets the same number of batches
            batches = batches[: len(batches) - len(batches) % self.world_size][self.rank :: self.world_size]
        return batches, shares

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:  # one pass, for evaluation
        yield from self.epoch(0)[0]


def crop_and_pad(items: list[dict], max_sample_size: int, pad: bool, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Items -> audio (B, S) float, audio_lens (B,) long.

    pad=False (fairseq's default for pretraining): every utterance is randomly cropped to the batch's
    shortest (at most max_sample_size), so nothing is padded. pad=True: crops to max_sample_size only, and
    right-pads with zeros. Crop starts derive from (seed, epoch, index).
    """
    sizes = [len(it["audio"]) for it in items]
    target = min(max(sizes) if pad else min(sizes), max_sample_size)
    audio = torch.zeros(len(items), target)
    lengths = torch.zeros(len(items), dtype=torch.long)
    for i, it in enumerate(items):
        x = it["audio"]
        if len(x) > target:
            start = crop_offset(seed, it["epoch"], it["index"], len(x) - target)
            x = x[start : start + target]
        audio[i, : len(x)] = torch.from_numpy(np.ascontiguousarray(x))
        lengths[i] = len(x)
    return audio, lengths
