"""`xlsr finetune ctc`: speech recognition in a new language, the fairseq / XLS-R fine-tuning recipe.

A new linear CTC head over a character vocabulary built from the training transcripts (after
`TextNormalization`), blank = padding token (as transformers), `zero_infinity`, the pretrained network
frozen for `freeze_finetune_updates`, SpecAugment-style time and channel masking, layer drop, tri-stage
learning rate. Validation: greedy decoding, WER and CER (jiwer's definitions), best model by WER (or as
`best_checkpoint_metric` says), exported as a Hugging Face directory `OUT/best/` that `xlsr transcribe` and
transformers' ASR pipeline load.

Loss reduction: fairseq's `sentence_avg: true` (the XLS-R fine-tuning configs): the summed CTC loss of an
update is divided by its number of utterances; `sentence_avg=false` divides by target tokens instead.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jiwer
import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoints import load_model, save_hf_dir
from ..data.dataset import AudioDataset, BatchSampler, evaluation_sampler
from ..data.manifest import Columns
from ..errors import ConfigError, DataError
from ..models import Wav2Vec2Model
from ..text.ctc_tokenizer import CTCTokenizer
from ..text.normalize import TextNormalization, normalize_text
from ..training.config import build_config
from ..training.distributed import World
from ..training.logging import log
from ..training.masking import batch_generator
from ..training.trainer import StepOutput, Trainer
from .common import FinetuneConfig, FinetuneTask, build_finetune_model, encode_batch, spec_augment
from .feature_cache import FeatureCache, check_cache_size, whole_utterances

SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
DELIMITERS = ("|", "▁", "¦", "\u2423")  # the first that is not a character of the transcripts


@dataclass
class CTCConfig(FinetuneConfig):
    sentence_avg: bool = True  # loss per utterance (fairseq XLS-R configs); false: per target token
    lowercase: bool = True  # text normalisation before the vocabulary is built and WER is scored
    remove_punctuation: bool = True  # before the vocabulary is built and WER is scored
    blank_warning_updates: int = 2000  # warn when the output has been blanks only for this many updates
    best_checkpoint_metric: Literal["wer", "cer", "loss"] = "wer"  # fairseq's name: the figure that picks DIR/best
    new_vocab: bool = False  # a vocabulary from the training transcripts (and a new head) even if --init is CTC
    text_column: str | None = None  # the transcripts' column (default: text, else sentence or transcription)
    # a frozen feature encoder's output is computed once per utterance and kept, in CPU memory, up to this size
    # (the same result bit for bit: finetuning/feature_cache.py); 0: computed every time
    feature_cache_gb: float = 4.0

    def check(self) -> None:
        super().check()
        check_cache_size(self.feature_cache_gb)

    def normalization(self) -> TextNormalization:
        return TextNormalization(lowercase=self.lowercase, remove_punctuation=self.remove_punctuation)


def build_vocab(texts: list[str]) -> CTCTokenizer:
    """Characters of already normalised `texts` -> a tokenizer: <pad> (= blank), <s>, </s>, <unk>, the word
    delimiter (replaces spaces; chosen so that it is no character of the texts), then the characters sorted."""
    chars = sorted({c for t in texts for c in t} - {" "})
    delimiter = next((d for d in DELIMITERS if d not in chars), None)
    if delimiter is None:
        raise DataError(f"the transcripts use every candidate word delimiter {DELIMITERS}")
    return CTCTokenizer([*SPECIALS, delimiter, *chars], word_delimiter_token=delimiter)


def read_vocab(path: str | Path) -> CTCTokenizer:
    """A vocab.json (its tokenizer_config.json beside it is used too) or a directory holding one."""
    path = Path(path)
    return CTCTokenizer.from_hf_dir(path if path.is_dir() else path.parent)


def ctc_feasible(ids: list[int], frames: int) -> bool:
    """CTC needs a frame per label plus a blank between equal neighbours."""
    repeats = sum(1 for a, b in zip(ids, ids[1:]) if a == b)
    return len(ids) + repeats <= frames


class CTCTask(FinetuneTask):
    name = "ctc"

    def __init__(self, cfg: CTCConfig, train, valid, init: str, vocab: str | None = None):
        super().__init__(cfg, train, valid, init)
        self.feature_cache = FeatureCache(cfg.feature_cache_gb)
        if vocab and cfg.new_vocab:
            raise ConfigError("new_vocab=true builds the vocabulary from the training transcripts: drop --vocab")
        self.best_metric = cfg.best_checkpoint_metric
        self.vocab_path = vocab
        self.vocab_origin = "training"  # where the vocabulary comes from: "training", "vocab" or "init"
        self.norm = cfg.normalization()
        self.tokenizer: CTCTokenizer | None = None
        self.blank_since: int | None = None
        self.blank_warned = False

    def columns(self) -> Columns:
        return Columns(audio=self.cfg.audio_column, text=self.cfg.text_column, need_text=True)

    def text(self, u) -> str:
        return normalize_text(u.text or "", self.norm)

    def build_model(self) -> Wav2Vec2Model:
        cfg: CTCConfig = self.cfg
        start = load_model(self.init)
        keep_head = start.cfg.head == "ctc" and start.tokenizer is not None and not (self.vocab_path or cfg.new_vocab)
        if self.vocab_path:
            self.tokenizer, self.vocab_origin = read_vocab(self.vocab_path), "vocab"
        elif keep_head:
            self.tokenizer, self.vocab_origin = start.tokenizer, "init"
            log.info("%s is a CTC model: its vocabulary and head are fine-tuned further (new_vocab=true for a new "
                     "vocabulary from the training transcripts)", self.init)  # fmt: skip
        else:
            texts = [self.text(u) for u in self.utterances("train") if u.text]
            if not texts:
                raise DataError(f"{self.train_manifest}: no transcripts (a 'text' column is needed)")
            self.tokenizer = build_vocab(texts)
            log.info("vocabulary: %d tokens: %s", len(self.tokenizer), " ".join(self.tokenizer.tokens[4:]))
        model = build_finetune_model(start, cfg, keep_head=keep_head, head="ctc", vocab_size=len(self.tokenizer))
        model.tokenizer = self.tokenizer
        return model

    def _dataset(self, manifest, model: Wav2Vec2Model, training: bool) -> AudioDataset:
        cfg: CTCConfig = self.cfg
        ds = AudioDataset(self.utterances("train" if training else "valid"), model.preprocessing, cfg.min_sample_size)
        ds.training = training
        counts = {"no text": 0, "longer than max_sample_size": 0, "label longer than the frames": 0}
        frames = model.cfg.num_frames(torch.from_numpy(ds.sizes))
        keep = np.ones(len(ds), dtype=bool)
        unknown: Counter[str] = Counter()
        for i, (u, size, n) in enumerate(zip(ds.utterances, ds.sizes, frames.tolist())):
            text = self.text(u)
            if not text:
                counts["no text"] += 1
                keep[i] = False
            elif size > cfg.max_sample_size:
                counts["longer than max_sample_size"] += 1
                keep[i] = False
            else:
                ids = self.tokenizer.encode(text)
                unknown.update(self._unknown_characters(text))
                if not ctc_feasible(ids, n):
                    counts["label longer than the frames"] += 1
                    keep[i] = False
        ds.select(keep)
        name = "train" if training else "valid"
        self.dropped[name] = {
            **counts,
            "shorter than min_sample_size": ds.dropped_short,
            "unreadable": ds.dropped_unreadable,
        }
        if unknown:
            log.warning("%s", self._unknown_message(manifest, unknown, training))
        return ds

    def _unknown_characters(self, text: str) -> list[str]:
        """The characters of `text` that the tokenizer maps to its unknown token."""
        tok = self.tokenizer
        cased = (lambda c: c.upper()) if tok.do_lower_case else (lambda c: c)  # noqa: E731
        return [c for c in text if c != " " and any(t not in tok.index for t in cased(c))]

    def _unknown_message(self, manifest, unknown: Counter[str], training: bool, shown: int = 20) -> str:
        """One line: how many characters the vocabulary lacks, which (the most frequent first), and the fix."""
        chars = ", ".join(f"{c!r} x{n}" for c, n in unknown.most_common(shown))
        more = f" and {len(unknown) - shown} more kinds" if len(unknown) > shown else ""
        fix = {
            "vocab": "drop --vocab to build a vocabulary from the training transcripts",
            "init": "--set new_vocab=true builds a vocabulary from the training transcripts (and a new CTC head)",
            "training": "the training transcripts do not have them, so no vocabulary built from them can; "
            "check the validation text, or lowercase / remove_punctuation",
        }[self.vocab_origin]
        if self.vocab_origin != "training" and not training:
            fix += " (if the training transcripts have them)"
        return (
            f"{manifest}: {sum(unknown.values())} characters are not in the vocabulary and map to "
            f"{self.tokenizer.unk_token}: {chars}{more}; {fix}"
        )

    def datasets(self, model: Wav2Vec2Model, world: World):
        cfg: CTCConfig = self.cfg
        self.model_cfg, self.sample_rate = model.cfg, model.preprocessing.sample_rate
        train = self._dataset(self.train_manifest, model, True)
        sampler = BatchSampler(train.sizes, cfg.max_tokens, cfg.max_sample_size, cfg.seed, rank=world.rank,
                               world_size=world.size)  # fmt: skip
        valid = self._dataset(self.valid_manifest, model, False)
        valid_sampler = evaluation_sampler(valid.sizes, cfg.max_tokens, cfg.max_sample_size, world.rank, world.size)
        return train, sampler, valid, valid_sampler

    def collate(self, items: list[dict]) -> dict:
        cfg: CTCConfig = self.cfg
        lengths = torch.tensor([len(it["audio"]) for it in items])
        audio = torch.zeros(len(items), int(lengths.max()))
        for i, it in enumerate(items):
            audio[i, : len(it["audio"])] = torch.from_numpy(np.ascontiguousarray(it["audio"]))
        texts = [self.text(it["utterance"]) for it in items]
        ids = [self.tokenizer.encode(t) for t in texts]
        target_lens = torch.tensor([len(x) for x in ids])
        targets = torch.tensor([i for x in ids for i in x], dtype=torch.long)
        frames = self.model_cfg.num_frames(lengths)
        time_mask = channel_mask = None
        if items[0]["training"]:
            g = batch_generator(cfg.seed, items[0]["epoch"], [it["index"] for it in items])
            time_mask, channel_mask = spec_augment(cfg, frames, self.model_cfg.encoder_embed_dim, g)
        return {
            "audio": audio,
            "audio_lens": lengths,
            "targets": targets,
            "target_lens": target_lens,
            "texts": texts,
            "time_mask": time_mask,
            "channel_mask": channel_mask,
            "sample_size": len(items) if cfg.sentence_avg else int(target_lens.sum()),
            "audio_seconds": float(lengths.sum()) / self.sample_rate,
            "keys": whole_utterances(items),
        }

    def forward(self, model: Wav2Vec2Model, batch: dict, update: int) -> StepOutput:
        cfg: CTCConfig = self.cfg
        out = encode_batch(model, batch, cfg, update, self.feature_cache)
        device = out.x.device
        log_probs = model.head(out.x).float().log_softmax(-1)  # float32 even under autocast: no fp16 overflow
        B, T, _ = log_probs.shape
        frames = out.lengths if out.lengths is not None else torch.full((B,), T, device=device)
        loss = F.ctc_loss(
            log_probs.transpose(0, 1),
            batch["targets"].to(device),
            frames,
            batch["target_lens"].to(device),
            blank=self.tokenizer.blank_id,
            reduction="sum",
            zero_infinity=True,
        )
        best = log_probs.detach().argmax(-1)  # (B, T)
        valid = torch.arange(T, device=device)[None, :] < frames[:, None]
        stats = {
            "loss": float(loss.detach()),
            "sample_size": batch["sample_size"],
            "utterances": B,
            "tokens": float(batch["target_lens"].sum()),
            "frames": float(valid.sum()),
            "nonblank": float(((best != self.tokenizer.blank_id) & valid).sum()),
        }
        if update < 0:  # validation: greedy transcripts scored against the references
            hyps = [self.tokenizer.decode(best[b, : int(frames[b])].tolist()) for b in range(B)]
            refs = batch["texts"]
            words, chars = jiwer.process_words(refs, hyps), jiwer.process_characters(refs, hyps)
            stats.update(
                word_errors=float(words.substitutions + words.deletions + words.insertions),
                words=float(words.substitutions + words.deletions + words.hits),
                char_errors=float(chars.substitutions + chars.deletions + chars.insertions),
                chars=float(chars.substitutions + chars.deletions + chars.hits),
            )
        return StepOutput(loss, stats)

    def summarize(self, s: dict[str, float]) -> dict[str, float]:
        metrics = {
            "loss": s["loss"] / max(s["sample_size"], 1),
            "nll_per_token": s["loss"] / max(s["tokens"], 1),
            "nonblank_share": s["nonblank"] / max(s["frames"], 1),
        }
        if "words" in s:
            metrics["wer"] = s["word_errors"] / max(s["words"], 1)
            metrics["cer"] = s["char_errors"] / max(s["chars"], 1)
        return metrics

    def check(self, metrics: dict[str, float], update: int) -> None:
        cfg: CTCConfig = self.cfg
        if update <= cfg.freeze_finetune_updates or metrics["nonblank_share"] > 0:
            self.blank_since = None
            return
        self.blank_since = self.blank_since or update
        if not self.blank_warned and update - self.blank_since >= cfg.blank_warning_updates:
            self.blank_warned = True
            log.warning(
                "the model has output only blanks for %d updates (since update %d). Usual causes: a learning "
                "rate too high (try lr=%g) or too low, too few updates so far or freeze_finetune_updates too "
                "long, transcripts that do not match the audio, or audio at the wrong sample rate",
                update - self.blank_since,
                self.blank_since,
                cfg.lr / 3,
            )

    def on_best(self, model: Wav2Vec2Model, out_dir: Path) -> None:
        export_ctc(model, out_dir / "best", self.tokenizer, self.norm)


def export_ctc(model: Wav2Vec2Model, path: Path, tokenizer: CTCTokenizer, norm: TextNormalization) -> None:
    """A Hugging Face Wav2Vec2ForCTC directory; the text normalisation used in training goes into config.json."""
    save_hf_dir(model, path, tokenizer, model.preprocessing, xlsr_text_normalization=json.loads(json.dumps(vars(norm))))


def finetune_ctc(
    init: str,
    train: str | Path,
    valid: str | Path,
    out: str | Path,
    config: str | Path | None = None,
    vocab: str | Path | None = None,
    set: list[str] = (),  # noqa: A002 (the CLI's --set)
    quiet: bool = False,
    text_column: str | None = None,
    audio_column: str | None = None,
    device: str | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Fine-tunes `init` with a CTC head on the transcribed audio of `train`; the best model by validation
    WER is written to `out/best/` (a Hugging Face directory). `train` and `valid` are data sources of
    `data/sources.py` (a Common Voice folder gives its train.tsv and dev.tsv); `text_column` and `audio_column`
    name their columns (config keys of the same names)."""
    cfg = build_config(CTCConfig, config, set, text_column=text_column, audio_column=audio_column, device=device,
                       threads=threads)  # fmt: skip
    task = CTCTask(cfg, train, valid, init, vocab)
    return Trainer(task, out, quiet).run()
