"""`xlsr finetune st`: speech translation, with fairseq's `xm_transformer` recipe (XLS-R encoder + adapter + decoder).

The start (`--init`): an XLS-R encoder (any model xlsr reads; its head is dropped) gets a new adapter and a decoder,
or a whole speech-translation model is fine-tuned further. A new model's decoder is `--decoder` (a transformers mBART
directory, `MBartForConditionalGeneration` such as mBART-50 or `MBartForCausalLM`, with its MBart50 sentencepiece
tokenizer; or another speech-translation model's decoder and vocabulary), else a new random one (fairseq's
initialisation) over a sentencepiece vocabulary trained on the training targets (`spm_vocab_size`), in mBART-50's
layout so that the language tags exist and transformers' MBart50Tokenizer reads it.

Data: any data source (`data/sources.py`) with `translation` (the target text) and, for several targets, `tgt_lang`
(`de` or `de_DE`: a language of the vocabulary; rows without one get `tgt_lang`, by default the start model's own
target, else English). Target: [language tag] + pieces + `</s>`; the decoder reads `</s>` + the target shifted
(fairseq `prepend_tgt_lang_tag` and `</s>` as decoder start; transformers' `decoder_start_token_id` and
`forced_bos_token_id`). The tag is always prepended, as the published XLS-R models do even for one target, is forced
first in generation and, as fairseq's `ignore_prefix_size` 1, is no part of the loss. Pairs whose target does not fit
`max_target_positions` are dropped and counted.

Loss: fairseq's `label_smoothed_cross_entropy`, (1 - eps - eps/(V-1)) * nll + eps/(V-1) * sum over the vocabulary of
-log p, summed over target tokens (the trainer divides by the update's tokens: fairseq's `sentence_avg` false).
What trains: fairseq's `finetune_w2v_params` / `finetune_decoder_params` ("all", or parameters whose name contains one
of the comma-separated strings; xlsr's names are fairseq's, so "LNA", `layer_norm,self_attn` and
`encoder_attn,layer_norm,self_attn`, selects the same weights); the adapter always trains.
Validation: the label-smoothed loss, then beam search (`valid_beam_size`) and sacrebleu's corpus BLEU and chrF
(`translation_metrics.py`); the best model (`best_checkpoint_metric`: bleu, chrf or loss) goes to `DIR/best/`, a
transformers `SpeechEncoderDecoderModel` directory.

Defaults and where they come from are listed in README.md ("Fine-tuning", "Speech translation").
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..checkpoints import load_model
from ..checkpoints.hf import _read_json
from ..checkpoints.hf_st import GenerationDefaults, load_mbart_decoder_dir, save_hf_st_dir
from ..checkpoints.io import atomic_path
from ..config import SpeechTranslationConfig
from ..data.dataset import AudioDataset, BatchSampler, evaluation_sampler
from ..data.manifest import Columns, Utterance
from ..decoding.generate import DecoderInference, DecodingOptions, generate
from ..errors import CheckpointError, ConfigError, DataError
from ..models.decoder import POSITION_OFFSET, TransformerDecoder
from ..models.speech_translation import SpeechTranslationModel
from ..text.spm_tokenizer import SentencePieceTokenizer, train_sentencepiece
from ..training.config import Scheduler, build_config
from ..training.distributed import World
from ..training.initialize import init_from
from ..training.logging import log
from ..training.masking import batch_generator
from ..training.trainer import StepOutput, Trainer
from ..translation_metrics import scores, sentence_stats
from .common import FinetuneConfig, FinetuneTask, encode_batch, spec_augment
from .feature_cache import FeatureCache, check_cache_size, whole_utterances

SPM_FILE = "spm.model"  # a new vocabulary's sentencepiece model, kept in the output directory for resuming
ADAPTER_KEYS = ("adaptor_n_layers", "adaptor_kernel_size", "adaptor_stride")
DECODER_KEYS = ("decoder_layers", "decoder_embed_dim", "decoder_ffn_embed_dim", "decoder_attention_heads",
                "max_target_positions")  # fmt: skip


@dataclass
class STConfig(FinetuneConfig):
    # what trains (fairseq xm_transformer --finetune-w2v-params / --finetune-decoder-params): "all", or the
    # parameters whose name contains one of these comma-separated strings (LNA: layer_norm,self_attn for the
    # encoder, encoder_attn,layer_norm,self_attn for the decoder); the adapter always trains
    finetune_w2v_params: str = "all"  # the encoder's trained parameters
    finetune_decoder_params: str = "all"  # the decoder's trained parameters
    feature_grad_mult: float = 0.1  # gradient scale into the feature encoder (xm_transformer base_architecture)
    freeze_feature_encoder: bool = False  # true: no gradient into the feature encoder at all (feature_grad_mult 0)
    freeze_finetune_updates: int = 0  # the encoder takes no gradient for this many updates (fairseq's default 0)
    # a frozen feature encoder's output (freeze_feature_encoder, or a finetune_w2v_params that leaves it out) is
    # computed once per utterance and kept, in CPU memory, up to this size (finetuning/feature_cache.py); 0: off
    feature_cache_gb: float = 4.0
    # a new model's adapter (fairseq Conv1dAdaptor; xm_transformer base_architecture)
    adaptor_n_layers: int = 3  # conv layers, each halving the frame rate
    adaptor_kernel_size: int = 3  # 3 only: what transformers' Wav2Vec2Adapter can represent
    adaptor_stride: int = 2
    # a new decoder (no --decoder): mBART-50's shape, random weights, a vocabulary trained on the training targets
    decoder_layers: int = 12
    decoder_embed_dim: int = 1024  # the adapter projects a wider or narrower encoder to it
    decoder_ffn_embed_dim: int = 4096
    decoder_attention_heads: int = 16
    max_target_positions: int = 1024  # longer targets are dropped and counted
    spm_vocab_size: int = 8000  # sentencepiece pieces of a new vocabulary (at most: a small corpus gives fewer)
    spm_model_type: Literal["unigram", "bpe", "char", "word"] = "unigram"  # fairseq's speech_to_text preparation
    # decoder regularisation (xm_transformer base_architecture)
    decoder_dropout: float = 0.1
    decoder_attention_dropout: float = 0.0
    decoder_activation_dropout: float = 0.0
    decoder_layerdrop: float = 0.0  # probability of skipping a decoder layer in training
    # targets and loss (fairseq label_smoothed_cross_entropy)
    tgt_lang: str | None = None  # rows without a tgt_lang column (default: the start model's target, else en)
    label_smoothing: float = 0.2  # fairseq --label-smoothing (the xm_transformer recipes: 0.2)
    ignore_prefix_size: int = 1  # target tokens left out of the loss: the language tag (fairseq's option)
    sentence_avg: bool = False  # false: loss per target token (fairseq); true: per utterance
    # validation: beam search, sacrebleu's BLEU and chrF
    valid_beam_size: int = 5  # beams in validation (also the exported generation_config's num_beams)
    valid_max_len_a: float = 0.0  # validation output length <= a * decoder memory frames + b
    valid_max_len_b: int = 200
    bleu_tokenize: str = "13a"  # sacrebleu's tokenizer (13a; zh, ja-mecab, char, flores200, ... for other scripts)
    best_checkpoint_metric: Literal["bleu", "chrf", "loss"] = "bleu"  # the figure that picks DIR/best
    # the xm_transformer recipes' optimisation (see README "Speech translation")
    lr: float = 1e-4
    lr_scheduler: Scheduler = "inverse_sqrt"
    warmup_updates: int = 2000
    max_update: int = 30_000
    clip_norm: float = 10.0
    mask_prob: float = 0.3  # time masking of the encoder input
    mask_channel_prob: float = 0.25
    mask_channel_length: int = 10
    layerdrop: float = 0.1  # encoder layer drop
    activation_dropout: float = 0.0  # xm_transformer's encoder dropouts are all 0

    def check(self) -> None:
        super().check()
        if self.adaptor_kernel_size != 3:
            raise ConfigError(
                f"adaptor_kernel_size={self.adaptor_kernel_size}: only 3 can be exported as a transformers "
                "SpeechEncoderDecoderModel (its Wav2Vec2Adapter pads one frame)"
            )
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.ignore_prefix_size not in (0, 1):
            raise ConfigError(f"ignore_prefix_size must be 0 or 1 (the language tag), got {self.ignore_prefix_size}")
        if self.valid_beam_size < 1:
            raise ConfigError(f"valid_beam_size must be at least 1, got {self.valid_beam_size}")
        check_cache_size(self.feature_cache_gb)

    def decoder_changes(self) -> dict[str, Any]:
        """The decoder's regularisation, as SpeechTranslationConfig changes."""
        return {
            "decoder_dropout": self.decoder_dropout,
            "decoder_attention_dropout": self.decoder_attention_dropout,
            "decoder_activation_dropout": self.decoder_activation_dropout,
            "decoder_layerdrop": self.decoder_layerdrop,
        }


def need_finetuning(ft_params: str, param_name: str) -> bool:
    """fairseq xm_transformer's rule: "all", or one of the comma-separated strings is part of the name."""
    return ft_params == "all" or any(p and p in param_name for p in ft_params.split(","))


def select_trained(model: SpeechTranslationModel, cfg: STConfig) -> None:
    """Sets `requires_grad` as `finetune_w2v_params` / `finetune_decoder_params` say (the adapter always trains),
    warns about a string that matches no parameter, and logs what trains."""
    for part, spec in ((model.encoder, cfg.finetune_w2v_params), (model.decoder, cfg.finetune_decoder_params)):
        names = [n for n, _ in part.named_parameters()]
        for p in (s for s in spec.split(",") if s and spec != "all"):
            if not any(p in n for n in names):
                log.warning("finetune params %r matches no parameter name (e.g. %s)", p, ", ".join(names[:3]))
        for name, param in part.named_parameters():
            param.requires_grad_(need_finetuning(spec, name))
    if cfg.freeze_feature_encoder:
        model.encoder.feature_encoder.requires_grad_(False)
    trained = {k: sum(p.numel() for p in m.parameters() if p.requires_grad) for k, m in model.named_children()}
    log.info("trained parameters: %s", ", ".join(f"{k} {v:,}" for k, v in trained.items()))


def init_new_decoder(decoder: TransformerDecoder, pad: int) -> None:
    """fairseq's initialisation of a new TransformerDecoder: token and learned position embeddings N(0, D^-1/2)
    with the padding rows zero (fairseq `Embedding`, `LearnedPositionalEmbedding`), attention projections
    Xavier-uniform (q, k, v with gain 1/sqrt(2), as `MultiheadAttention.reset_parameters`) with a zero output
    bias; the feed-forward layers keep PyTorch's Linear initialisation, as fairseq's."""
    dim = decoder.embed_tokens.embedding_dim
    with torch.no_grad():
        for table, unused in ((decoder.embed_tokens, [pad]), (decoder.embed_positions, range(POSITION_OFFSET))):
            nn.init.normal_(table.weight, std=dim**-0.5)
            table.weight[list(unused)] = 0.0
        for layer in decoder.layers:
            for attn in (layer.self_attn, layer.encoder_attn):
                for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
                    nn.init.xavier_uniform_(proj.weight, gain=2**-0.5)
                nn.init.xavier_uniform_(attn.out_proj.weight)
                nn.init.zeros_(attn.out_proj.bias)


@dataclass
class DecoderSource:
    """What `--decoder` gives: the SpeechTranslationConfig decoder fields, the weights (`decoder.*`), the vocabulary."""

    fields: dict[str, Any]
    state: dict[str, torch.Tensor]
    tokenizer: SentencePieceTokenizer
    source: str


def read_decoder(path: str | Path) -> DecoderSource:
    """An mBART directory (its MBart50 tokenizer beside it) or any speech-translation model xlsr reads."""
    path = Path(path)
    config = path / "config.json"
    if path.is_dir() and config.exists() and _read_json(config).get("model_type") == "mbart":
        fields, state = load_mbart_decoder_dir(path)
        tokenizer = SentencePieceTokenizer.from_hf_dir(path)
        source = f"mBART directory {path}"
    else:
        net = load_model(path)
        if not isinstance(net, SpeechTranslationModel):
            raise ConfigError(f"--decoder {path}: neither an mBART directory nor a speech-translation model")
        if net.tokenizer is None:
            raise ConfigError(f"--decoder {path}: no target vocabulary (sentencepiece.bpe.model / dict.txt)")
        keys = (*DECODER_KEYS, "vocab_size", "activation_fn", "scale_embedding", "layernorm_embedding",
                "pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id")  # fmt: skip
        fields = {k: getattr(net.cfg, k) for k in keys}
        state = {k: v for k, v in net.state_dict().items() if k.startswith("decoder.")}
        tokenizer, source = net.tokenizer, net.source
    if len(tokenizer) != fields["vocab_size"]:
        raise CheckpointError(f"{path}: {len(tokenizer)} vocabulary entries for a decoder of {fields['vocab_size']}")
    return DecoderSource(fields, state, tokenizer, source)


def refuse_shape_changes(cfg: STConfig, given: dict[str, Any], keys: tuple[str, ...], source: str) -> None:
    """A shape key (or spm_vocab_size) set to a value that the weights taken from `source` (`given`: their values)
    do not have is the user's mistake, said in one line."""
    defaults = STConfig()
    for key in keys:
        value = getattr(cfg, key)
        if value != getattr(defaults, key) and value != given.get(key):
            has = f", which has {key}={given[key]}" if given.get(key) is not None else ""
            raise ConfigError(f"{key}={value}: the weights and vocabulary come from {source}{has}; drop the setting")


@contextlib.contextmanager
def gathered(units: list[nn.Module]):
    """Under FSDP (`fully_shard`) every call of a unit gathers its weights, a collective every process must join;
    beam search calls the decoder layers a number of times that differs between processes, so the layers are
    gathered once, before it, and kept until it is done. Plain modules pass through."""
    sharded = [u for u in units if hasattr(u, "unshard") and hasattr(u, "set_reshard_after_forward")]
    for unit in sharded:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        yield
    finally:
        for unit in sharded:
            unit.reshard()
            unit.set_reshard_after_forward(True, recurse=False)


def label_smoothed_nll_loss(
    lprobs: torch.Tensor, target: torch.Tensor, epsilon: float, pad: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """fairseq's `label_smoothed_nll_loss`: lprobs (B, L, V) float log-probs, target (B, L) long (`pad` ignored)
    -> (loss, nll_loss), each summed over the tokens."""
    nll = -lprobs.gather(-1, target[..., None])[..., 0]  # (B, L)
    smooth = -lprobs.sum(-1)  # (B, L)
    keep = target != pad
    nll, smooth = nll[keep].sum(), smooth[keep].sum()
    eps_i = epsilon / (lprobs.shape[-1] - 1)
    return (1.0 - epsilon - eps_i) * nll + eps_i * smooth, nll


class STTask(FinetuneTask):
    name = "st"

    def __init__(self, cfg: STConfig, train, valid, init: str, decoder: str | Path | None = None, out=None):
        super().__init__(cfg, train, valid, init)
        self.feature_cache = FeatureCache(cfg.feature_cache_gb)
        self.decoder_path, self.out = decoder, None if out is None else Path(out)
        self.best_metric = cfg.best_checkpoint_metric
        self.maximize = cfg.best_checkpoint_metric != "loss"
        self.tokenizer: SentencePieceTokenizer | None = None
        self.default_tag: int | None = None  # the tag of rows without tgt_lang
        self.tags: set[int] = set()  # the target languages of the training data
        # the start model's recorded targets, kept after fine-tuning; None: it records none (a published model)
        self.start_targets: tuple[str, ...] | None = ()
        self.targets: dict[str, list[list[int]]] = {}  # split -> per dataset item: tag, pieces, </s>
        self.signature_logged = False

    def columns(self) -> Columns:
        return Columns(audio=self.cfg.audio_column, label="translation")  # a row without a translation is bad

    def utterances(self, split: str) -> list[Utterance]:
        try:
            return super().utterances(split)
        except DataError as e:  # the translations have no flag of their own: say what the column is for
            raise DataError(str(e).replace("(--label-column)", "(the target text, which translation needs)")) from None

    # -- the model --------------------------------------------------------------------------------
    def build_model(self) -> SpeechTranslationModel:
        cfg: STConfig = self.cfg
        start = load_model(self.init)
        model = self._continue(start) if isinstance(start, SpeechTranslationModel) else self._new(start)
        self.tokenizer.hf_files()  # DIR/best needs an MBart50-layout vocabulary: refuse now, not at the first best
        self._default_target(start)
        if isinstance(start, SpeechTranslationModel):
            self.start_targets = getattr(getattr(start, "generation", None), "target_languages", ()) or None
        select_trained(model, cfg)
        model.tokenizer = self.tokenizer
        return model

    def _continue(self, start: SpeechTranslationModel) -> SpeechTranslationModel:
        cfg: STConfig = self.cfg
        if self.decoder_path:
            raise ConfigError(
                f"--decoder {self.decoder_path}: {self.init} is a whole speech-translation model, whose decoder is "
                "fine-tuned further; drop --decoder, or give an encoder as --init"
            )
        if start.tokenizer is None:
            raise ConfigError(f"{start.source}: no target vocabulary (sentencepiece.bpe.model / dict.txt)")
        own = {k: getattr(start.cfg, k) for k in ADAPTER_KEYS + DECODER_KEYS}
        refuse_shape_changes(cfg, own, ADAPTER_KEYS + DECODER_KEYS, start.source)
        refuse_shape_changes(cfg, {}, ("spm_vocab_size",), start.source)
        st_cfg = start.cfg.replace(encoder=start.cfg.encoder.replace(**cfg.model_changes()), **cfg.decoder_changes())
        try:
            model = SpeechTranslationModel.from_state_dict(st_cfg, start.state_dict())
        except ValueError as e:
            raise ConfigError(f"{start.source}: its weights do not fit the model as changed ({e})") from None
        model.preprocessing, model.source = start.preprocessing, start.source
        self.tokenizer = start.tokenizer
        log.info("%s is a speech-translation model: encoder, adapter and decoder are fine-tuned further", self.init)
        return model

    def _new(self, start: nn.Module) -> SpeechTranslationModel:
        cfg: STConfig = self.cfg
        encoder = init_from(start, {"head": "none", "vocab_size": 0, "labels": (), **cfg.model_changes()}, False)
        if self.decoder_path:
            decoder = read_decoder(self.decoder_path)
            refuse_shape_changes(cfg, decoder.fields, DECODER_KEYS, decoder.source)
            refuse_shape_changes(cfg, {}, ("spm_vocab_size",), decoder.source)
            fields, self.tokenizer = decoder.fields, decoder.tokenizer
        else:
            decoder, self.tokenizer = None, self._new_vocabulary()
            fields = {k: getattr(cfg, k) for k in DECODER_KEYS} | {"vocab_size": len(self.tokenizer)}
        width = encoder.cfg.encoder_embed_dim
        st_cfg = SpeechTranslationConfig(
            encoder=encoder.cfg,
            **{k: getattr(cfg, k) for k in ADAPTER_KEYS},
            adaptor_proj_dim=0 if width == fields["decoder_embed_dim"] else fields["decoder_embed_dim"],
            **{**fields, **cfg.decoder_changes()},
        )
        model = SpeechTranslationModel(st_cfg)
        model.encoder.load_state_dict(encoder.state_dict())
        if decoder is None:
            init_new_decoder(model.decoder, st_cfg.pad_token_id)
            log.info("a new decoder (%d layers, dim %d, random weights) over %d target tokens", st_cfg.decoder_layers,
                     st_cfg.decoder_embed_dim, st_cfg.vocab_size)  # fmt: skip
        else:
            model.decoder.load_state_dict({k.removeprefix("decoder."): v for k, v in decoder.state.items()})
            log.info("the decoder and its %d-token vocabulary come from %s", st_cfg.vocab_size, decoder.source)
        if cfg.finetune_decoder_params != "all" and decoder is None:
            log.warning("finetune_decoder_params=%s on a new, random decoder: the rest of it stays random",
                        cfg.finetune_decoder_params)  # fmt: skip
        model.preprocessing, model.source = start.preprocessing, start.source
        return model

    def _new_vocabulary(self) -> SentencePieceTokenizer:
        """A sentencepiece model trained on the training targets (by the first process; the others receive it),
        kept as DIR/spm.model so that a resumed run reads the same one."""
        cfg: STConfig = self.cfg
        path = self.out / SPM_FILE if self.out is not None else None
        distributed = dist.is_available() and dist.is_initialized()
        model: list[bytes | None] = [None]
        if not distributed or dist.get_rank() == 0:  # only the first process looks: the others may be later
            if path is not None and path.exists():
                log.info("target vocabulary: %s (from an earlier start of this run)", path)
                model[0] = path.read_bytes()
            else:
                texts = [u.translation.strip() for u in self.utterances("train") if (u.translation or "").strip()]
                source = f"{self.train_manifest}: the translations"
                model[0] = train_sentencepiece(texts, cfg.spm_vocab_size, cfg.spm_model_type, source).spm_model
                log.info("target vocabulary: a new sentencepiece model (%s)", cfg.spm_model_type)
                if path is not None:
                    with atomic_path(path) as tmp:
                        tmp.write_bytes(model[0])
        if distributed:
            dist.broadcast_object_list(model, src=0)
        return SentencePieceTokenizer.from_spm_model(model[0], str(path or "new vocabulary"))

    def _default_target(self, start: nn.Module) -> None:
        """The tag of rows without tgt_lang: `tgt_lang`, else the start model's forced target, else English."""
        cfg: STConfig = self.cfg
        forced = getattr(getattr(start, "generation", None), "forced_bos_token_id", None)
        if cfg.tgt_lang is None and forced is not None and isinstance(start, SpeechTranslationModel):
            self.default_tag = forced
            return
        try:
            self.default_tag = self.tokenizer.lang_id(cfg.tgt_lang or "en")
        except ConfigError as e:
            raise ConfigError(f"tgt_lang={cfg.tgt_lang or 'en'}: {e}") from None

    # -- data -------------------------------------------------------------------------------------
    def _tags(self, split: str, utterances) -> list[int]:
        """Each utterance's language tag; a DataError naming the data and every unknown tgt_lang."""
        cache: dict[str, int | None] = {}
        unknown: dict[str, int] = {}
        out = []
        for u in utterances:
            lang = (u.get("tgt_lang") or "").strip()
            if not lang:
                out.append(self.default_tag)
                continue
            if lang not in cache:
                try:
                    cache[lang] = self.tokenizer.lang_id(lang)
                except ConfigError:
                    cache[lang] = None
            if cache[lang] is None:
                unknown[lang] = unknown.get(lang, 0) + 1
            out.append(cache[lang])
        if unknown:
            where = self.train_manifest if split == "train" else self.valid_manifest
            listed = ", ".join(f"{k!r} ({n} rows)" for k, n in sorted(unknown.items()))
            raise DataError(f"{where}: tgt_lang {listed} is not a language of the target vocabulary; its languages: "
                            f"{' '.join(self.tokenizer.languages)}")  # fmt: skip
        return out

    def _dataset(self, model: SpeechTranslationModel, training: bool) -> AudioDataset:
        cfg: STConfig = self.cfg
        split = "train" if training else "valid"
        ds = AudioDataset(self.utterances(split), model.preprocessing, cfg.min_sample_size)
        ds.training = training
        frames = model.frame_lengths(torch.from_numpy(ds.sizes)).tolist()
        counts = {"empty translation": 0, "longer than max_sample_size": 0, "too short for one decoder memory frame": 0,
                  "target longer than max_target_positions": 0}  # fmt: skip
        keep, targets = np.ones(len(ds), dtype=bool), []
        for i, (u, size, n, tag) in enumerate(zip(ds.utterances, ds.sizes, frames, self._tags(split, ds.utterances))):
            text = (u.translation or "").strip()
            ids = [tag, *self.tokenizer.encode(text), self.tokenizer.eos_id] if text else []
            reason = (
                "empty translation" if not ids
                else "longer than max_sample_size" if size > cfg.max_sample_size
                else "too short for one decoder memory frame" if n < 1
                else "target longer than max_target_positions" if len(ids) > model.cfg.max_target_positions
                else None
            )  # fmt: skip
            if reason is None:
                targets.append(ids)
                if training:
                    self.tags.add(tag)
            else:
                counts[reason] += 1
                keep[i] = False
        ds.select(keep)
        self.targets[split] = targets
        self.dropped[split] = {**counts, "shorter than min_sample_size": ds.dropped_short,
                               "unreadable": ds.dropped_unreadable}  # fmt: skip
        return ds

    def datasets(self, model: SpeechTranslationModel, world: World):
        cfg: STConfig = self.cfg
        self.model_cfg, self.sample_rate = model.cfg, model.preprocessing.sample_rate
        train = self._dataset(model, True)
        sampler = BatchSampler(train.sizes, cfg.max_tokens, cfg.max_sample_size, cfg.seed, rank=world.rank,
                               world_size=world.size)  # fmt: skip
        valid = self._dataset(model, False)
        valid_sampler = evaluation_sampler(valid.sizes, cfg.max_tokens, cfg.max_sample_size, world.rank, world.size)
        return train, sampler, valid, valid_sampler

    def collate(self, items: list[dict]) -> dict:
        """Items -> audio (B, S), audio_lens (B,), prev_tokens and target (B, L) long (`<pad>` after each end),
        tags (B,) long, texts (the reference translations), time_mask (B, T) and channel_mask (B, D_enc) bool or
        None, layerdrop_seed (training batches: from seed, epoch and the batch's utterances, as the masks), keys
        (the utterances, whole: finetuning/feature_cache.py)."""
        cfg: STConfig = self.cfg
        mcfg = self.model_cfg
        split = "train" if items[0]["training"] else "valid"
        lengths = torch.tensor([len(it["audio"]) for it in items])
        audio = torch.zeros(len(items), int(lengths.max()))
        for i, it in enumerate(items):
            audio[i, : len(it["audio"])] = torch.from_numpy(np.ascontiguousarray(it["audio"]))
        ids = [self.targets[split][it["index"]] for it in items]
        target = torch.full((len(items), max(map(len, ids))), mcfg.pad_token_id, dtype=torch.long)
        prev = target.clone()
        for b, x in enumerate(ids):
            target[b, : len(x)] = torch.tensor(x)
            prev[b, 0], prev[b, 1 : len(x)] = mcfg.decoder_start_token_id, torch.tensor(x[:-1])
        time_mask = channel_mask = layerdrop_seed = None
        if items[0]["training"]:
            g = batch_generator(cfg.seed, items[0]["epoch"], [it["index"] for it in items])
            frames = mcfg.encoder.num_frames(lengths)
            time_mask, channel_mask = spec_augment(cfg, frames, mcfg.encoder.encoder_embed_dim, g)
            layerdrop_seed = int(torch.randint(0, 2**62, (), generator=g))
        tokens = sum(len(x) - cfg.ignore_prefix_size for x in ids)
        return {
            "audio": audio,
            "audio_lens": lengths,
            "prev_tokens": prev,
            "target": target,
            "tags": torch.tensor([x[0] for x in ids]),
            "texts": [(it["utterance"].translation or "").strip() for it in items],
            "time_mask": time_mask,
            "channel_mask": channel_mask,
            "layerdrop_seed": layerdrop_seed,
            "sample_size": len(items) if cfg.sentence_avg else tokens,
            "audio_seconds": float(lengths.sum()) / self.sample_rate,
            "keys": whole_utterances(items),
        }

    # -- the loss and validation ------------------------------------------------------------------
    def before_update(self, model: SpeechTranslationModel, update: int) -> None:
        """Nothing: layer drop follows each batch's own seed (`forward`)."""

    def forward(self, model: SpeechTranslationModel, batch: dict, update: int) -> StepOutput:
        cfg: STConfig = self.cfg
        device = next(model.parameters()).device
        if batch["layerdrop_seed"] is not None:  # the blocks layer drop skips follow (seed, epoch, the batch's
            # utterances), like the masks: the same after a resume, and for a batch whichever process and
            # micro-batch of an update it falls to (N processes train what one does with update_freq N)
            seed = batch["layerdrop_seed"]
            model.encoder.encoder.layerdrop_generator = torch.Generator().manual_seed(seed)
            model.decoder.layerdrop_generator = torch.Generator().manual_seed(seed + 1)
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        grad_mult = 0.0 if cfg.freeze_feature_encoder else cfg.feature_grad_mult
        out = encode_batch(model.encoder, batch, cfg, update, self.feature_cache, grad_mult)
        memory, padding = model.adapt(out.x, out.lengths)
        logits = model.decoder(move(batch["prev_tokens"]), memory, padding)  # (B, L, V)
        p = cfg.ignore_prefix_size
        lprobs = logits[:, p:].float().log_softmax(-1)  # float32 even under autocast
        target = move(batch["target"])[:, p:]
        pad = model.cfg.pad_token_id
        loss, nll = label_smoothed_nll_loss(lprobs, target, cfg.label_smoothing, pad)
        tokens = target != pad
        stats = {
            "loss": float(loss.detach()),
            "nll_loss": float(nll.detach()),
            "sample_size": batch["sample_size"],
            "tokens": float(tokens.sum()),
            "correct": float(((lprobs.detach().argmax(-1) == target) & tokens).sum()),
        }
        if update < 0:  # validation: beam search, scored against the references
            stats.update(sentence_stats(self.translate(model, memory, padding, batch["tags"]), batch["texts"],
                                        cfg.bleu_tokenize))  # fmt: skip
        return StepOutput(loss, stats)

    def translate(self, model: SpeechTranslationModel, memory, padding, tags: torch.Tensor) -> list[str]:
        """Beam search over the decoder memory (B, T', D) with each utterance's tag forced first -> texts."""
        cfg: STConfig = self.cfg
        mcfg = model.cfg
        options = DecodingOptions(
            beam_size=cfg.valid_beam_size, max_len_a=cfg.valid_max_len_a, max_len_b=cfg.valid_max_len_b,
            prefix_tokens=tuple((int(t),) for t in tags), decoder_start_id=mcfg.decoder_start_token_id,
            eos_id=mcfg.eos_token_id, pad_id=mcfg.pad_token_id, unk_id=self.tokenizer.unk_id,
        )  # fmt: skip
        with gathered(list(model.decoder.layers)):
            hypotheses = generate(DecoderInference(model.decoder, memory, padding), options)
        eos = mcfg.eos_token_id
        return [self.tokenizer.decode([t for t in h[0].tokens[1:] if t != eos]) if h else "" for h in hypotheses]

    def summarize(self, s: dict[str, float]) -> dict[str, float]:
        tokens = max(s["tokens"], 1)
        metrics = {
            "loss": s["loss"] / max(s["sample_size"], 1),
            "nll_loss": s["nll_loss"] / tokens,  # nats per target token
            "accuracy": s["correct"] / tokens,
        }
        if "sentences" in s:
            scored = scores(s, self.cfg.bleu_tokenize)
            metrics.update(bleu=scored.bleu, chrf=scored.chrf)
            if not self.signature_logged:
                self.signature_logged = True
                log.info("BLEU: sacrebleu %s; chrF: sacrebleu %s", scored.bleu_signature, scored.chrf_signature)
        return metrics

    def on_best(self, model: SpeechTranslationModel, out_dir: Path) -> None:
        save_hf_st_dir(model, out_dir / "best", self.generation(model))

    def generation(self, model: SpeechTranslationModel) -> GenerationDefaults:
        """`xlsr translate` and transformers' generate: `</s>` first, then the tag of a single target language."""
        forced = next(iter(self.tags)) if len(self.tags) == 1 else None
        # what translate accepts as --target-lang: the training targets (and the start model's), or, continuing a
        # model that records none, every language of the vocabulary as before
        tok, kept = self.tokenizer, set(self.start_targets or ())
        trained = tuple(c for c in tok.languages if c in kept or tok.lang_id(c) in self.tags)
        if self.start_targets is None:
            trained = ()
        return GenerationDefaults(decoder_start_token_id=model.cfg.decoder_start_token_id, forced_bos_token_id=forced,
                                  num_beams=self.cfg.valid_beam_size, target_languages=trained)  # fmt: skip


def finetune_st(
    init: str,
    train: str | Path,
    valid: str | Path,
    out: str | Path,
    decoder: str | Path | None = None,
    config: str | Path | None = None,
    set: list[str] = (),  # noqa: A002 (the CLI's --set)
    quiet: bool = False,
    audio_column: str | None = None,
    device: str | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Fine-tunes a speech-translation model on the `translation` (and `tgt_lang`) of `train`: `init` is an XLS-R
    encoder (a new adapter, and the decoder of `decoder`, else a new one with a vocabulary trained on the targets) or
    a whole speech-translation model. The best model by validation BLEU (or as `best_checkpoint_metric` says) is
    written to `out/best/`, a transformers SpeechEncoderDecoderModel directory that `xlsr translate` reads."""
    cfg = build_config(STConfig, config, set, audio_column=audio_column, device=device, threads=threads)
    return Trainer(STTask(cfg, train, valid, init, decoder, out), out, quiet).run()
