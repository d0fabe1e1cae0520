"""fairseq `xm_transformer` speech-translation checkpoints: XLS-R encoder + Conv1dAdaptor + mBART decoder.

The file is read through the safe loader in `io.py` (nothing in it runs). The released checkpoints
(`xls_r_300m_21_en.pt`, `xls_r_2b_22_16.pt`, ...) keep `w2v_path` and `load_pretrained_decoder_from`
pointing at files on the training cluster, and their `w2v_args` is empty (fairseq fills it in on a deep
copy of the options, so it is never saved). xlsr never follows those paths: the network's shape comes
from the state dict and the stored options (`encoder_config` and `adapter_decoder_options` say which
comes from where).

fairseq layout -> xlsr layout:
    encoder.w2v_encoder.w2v_model.*   -> encoder.*   (wav2vec2; `fairseq.map_key`)
    encoder.w2v_encoder.proj          -> adapter.proj          (1B/2B: encoder wider than the decoder)
    encoder.w2v_proj_ln               -> adapter.proj_layer_norm
    encoder.adaptor.layers.N          -> adapter.layers.N      (Conv1d(d, 2d, k, stride) + GLU)
    decoder.*                         -> decoder.*   (fairseq TransformerDecoder names; output projection tied)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
import yaml

from ..config import ModelConfig, Preprocessing, SpeechTranslationConfig
from ..errors import CheckpointError, ConfigError
from ..models.decoder import POSITION_OFFSET
from ..models.speech_translation import SpeechTranslationModel
from ..text.spm_tokenizer import SPM_FILE, SentencePieceTokenizer
from .fairseq import IGNORED_SUFFIXES, _as_dict, map_key, parse_config
from .io import safe_torch_load

W2V = "encoder.w2v_encoder.w2v_model."
# The strides of the only conv feature encoder wav2vec 2.0, XLS-R and HuBERT were ever released with,
# [(512,10,5)] + [(512,3,2)]*4 + [(512,2,2)]*2: a stride is not in the weights, so it is read off the kernel.
STRIDE_OF_KERNEL = {10: 5, 3: 2, 2: 2}
# Attention heads of the released wav2vec 2.0 / XLS-R encoders by width (base 768: 12; large, XLS-R 300M,
# 1B, 2B: 16): the head count is not in the weights either.
HEADS_OF_WIDTH = {768: 12, 1024: 16, 1280: 16, 1920: 16}
# Options the stored model config (cfg.model) may set that xlsr's network does not implement.
UNSUPPORTED_DECODER = {
    "decoder_normalize_before": (True,),
    "decoder_learned_pos": (True,),
    "no_token_positional_embeddings": (False, None),
    "adaptive_softmax_cutoff": (None,),
    "cross_self_attention": (False, None),
    "no_decoder_final_norm": (False, None),
    "adaptor_layernorm": (False, None),
    "adaptor_proj": (False, None),
}


def is_fairseq_st(ckpt: Any) -> bool:
    """True for a fairseq xm_transformer checkpoint: its arch name, or wav2vec2 weights under an encoder
    beside a `decoder.*` (so an `args`-less or renamed one is recognised too)."""
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        return False
    try:
        model = _model_options(ckpt)
    except CheckpointError:
        model = {}
    name = str(model.get("_name") or model.get("arch") or "")
    if name.startswith("xm_transformer"):
        return True
    keys = ckpt["model"].keys()
    return any(k.startswith(W2V) for k in keys) and any(k.startswith("decoder.") for k in keys)


def _model_options(ckpt: dict[str, Any]) -> dict[str, Any]:
    """cfg.model (new style, a dict or an argparse.Namespace) or `args` (old style) as a dict."""
    if ckpt.get("cfg") is not None:
        return dict(_as_dict(_as_dict(ckpt["cfg"]).get("model") or {}))
    if ckpt.get("args") is not None:
        return dict(_as_dict(ckpt["args"]))
    raise CheckpointError("neither `cfg` nor `args`: not a fairseq checkpoint")


def _pretraining_options(model: dict[str, Any]) -> dict[str, Any] | None:
    """The wav2vec2 options embedded as `w2v_args` (a dict or Namespace), when the checkpoint kept them."""
    w2v = model.get("w2v_args")
    if w2v is None or isinstance(w2v, str):  # `--w2v-args` on the command line is a string fairseq never parses
        return None
    w2v = _as_dict(w2v)
    return dict(_as_dict(w2v["model"])) if "model" in w2v else dict(w2v)


def _count(weights: dict[str, Any], pattern: str) -> int:
    found = {int(m.group(1)) for k in weights if (m := re.fullmatch(pattern, k))}
    if found != set(range(len(found))):
        raise CheckpointError(f"layers {sorted(found)} are not numbered 0..N-1 ({pattern})")
    return len(found)


def encoder_config(
    model: dict[str, Any], weights: dict[str, Any], encoder_attention_heads: int | None = None
) -> ModelConfig:
    """The wav2vec2 encoder's ModelConfig (head "none") from the weights and the stored options.

    From the weights: conv channels and kernels (`feature_extractor.conv_layers.N.0.weight`), conv bias,
    the feature-encoder norm (a layer norm in every conv layer: "layer_norm"; a group norm in the first:
    "group_norm"), the feature projection, width, FFN width, block count, positional conv width and groups.
    Not in the weights: when the checkpoint embeds the pretraining options (`w2v_args`, which the released
    ones leave empty), they are read with `fairseq.parse_config` and must agree with the weights. Otherwise:
      - conv strides: STRIDE_OF_KERNEL (kernel 10 -> 5, 3 -> 2, 2 -> 2, the only feature encoder wav2vec 2.0
        and XLS-R were released with); another kernel is an error;
      - pre-LN or post-LN: pre-LN exactly when the feature encoder is the layer-norm one (XLS-R and the
        "large lv60" models are both; wav2vec2 base and large are neither);
      - attention heads: the `encoder_attention_heads` argument (which also overrides `w2v_args`), else
        HEADS_OF_WIDTH for the released widths (768: 12; 1024, 1280, 1920: 16), else cfg.model's
        `decoder_attention_heads`, as in every released xm_transformer (XLS-R and mBART-50 both have 16
        heads); else an error. cfg.model's own `encoder_attention_heads`, where present, is not used:
        xm_transformer does not read it (its wav2vec2 options come from w2v_args or w2v_path only).
    Dropouts follow fairseq's `Wav2VecEncoder`, which overrides the pretraining ones with cfg.model's
    (dropout, attention_dropout, activation_dropout, dropout_input, layerdrop). The activation is gelu,
    as in every wav2vec2 encoder: cfg.model's `activation_fn` is the decoder's.
    """
    w2v = _pretraining_options(model)
    stored = None if w2v is None else parse_config(w2v).replace(head="none", quantize_targets=False)
    conv, n = [], 0
    while (w := weights.get(f"{W2V}feature_extractor.conv_layers.{n}.0.weight")) is not None:
        conv.append((int(w.shape[0]), int(w.shape[2])))
        n += 1
    if not conv:
        raise CheckpointError(f"no wav2vec2 feature encoder weights ({W2V}feature_extractor.conv_layers.0.0.weight)")
    if stored is not None:
        layers = list(stored.conv_feature_layers)
        if [(d, k) for d, k, _ in layers] != conv:
            raise CheckpointError(f"w2v_args.conv_feature_layers {layers} does not match the conv weights {conv}")
    else:
        unknown = [k for _, k in conv if k not in STRIDE_OF_KERNEL]
        if unknown:
            raise CheckpointError(f"cannot tell the conv strides of kernels {unknown} (w2v_args is empty)")
        layers = [(d, k, STRIDE_OF_KERNEL[k]) for d, k in conv]
    if f"{W2V}feature_extractor.conv_layers.0.2.1.weight" in weights:
        mode = "layer_norm"
    elif f"{W2V}feature_extractor.conv_layers.0.2.weight" in weights:
        mode = "group_norm"
    else:
        raise CheckpointError("the feature encoder has no norm layer; xlsr reads layer-norm and group-norm ones")
    fc1 = weights.get(f"{W2V}encoder.layers.0.fc1.weight")
    pos = weights.get(f"{W2V}encoder.pos_conv.0.weight_v")
    if fc1 is None or pos is None:
        raise CheckpointError(f"no wav2vec2 Transformer weights ({W2V}encoder.layers.0.fc1.weight, pos_conv)")
    width, ffn = int(fc1.shape[1]), int(fc1.shape[0])
    heads = encoder_attention_heads or (stored and stored.encoder_attention_heads) or HEADS_OF_WIDTH.get(width)
    if heads is None:
        heads = model.get("decoder_attention_heads")
        if not heads or width % heads:
            raise CheckpointError(
                f"cannot tell the encoder's attention heads (width {width}, w2v_args is empty): "
                "pass encoder_attention_heads"
            )
    layer_norm_first = mode == "layer_norm" if stored is None else stored.layer_norm_first

    def opt(key: str, default: float) -> float:
        value = model.get(key)
        return float(default if value is None else value)

    cfg = ModelConfig(
        conv_feature_layers=tuple(layers),
        extractor_mode=mode,
        conv_bias=f"{W2V}feature_extractor.conv_layers.0.0.bias" in weights,
        encoder_layers=_count(weights, re.escape(W2V) + r"encoder\.layers\.(\d+)\.fc1\.weight"),
        encoder_embed_dim=width,
        encoder_ffn_embed_dim=ffn,
        encoder_attention_heads=int(heads),
        layer_norm_first=bool(layer_norm_first),
        conv_pos=int(pos.shape[2]),
        conv_pos_groups=width // int(pos.shape[1]),
        post_extract_proj=f"{W2V}post_extract_proj.weight" in weights,
        activation_fn="gelu",
        dropout=opt("dropout", 0.0),
        attention_dropout=opt("attention_dropout", 0.0),
        activation_dropout=opt("activation_dropout", 0.0),
        dropout_input=opt("dropout_input", 0.0),
        encoder_layerdrop=opt("layerdrop", 0.0),
        quantize_targets=False,
        head="none",
    )
    if stored is not None:
        for field in ("extractor_mode", "conv_bias", "encoder_layers", "encoder_embed_dim", "encoder_ffn_embed_dim"):
            said, found = getattr(stored, field), getattr(cfg, field)
            if said != found:
                raise CheckpointError(f"w2v_args.{field} = {said!r} does not match the weights ({found!r})")
    return cfg


def adapter_decoder_options(model: dict[str, Any], weights: dict[str, Any]) -> dict[str, Any]:
    """SpeechTranslationConfig's adapter and decoder fields from the weights and cfg.model.

    From the weights: the adapter's layer count and kernel, its projection width (`w2v_encoder.proj`), the
    decoder's layers, width, FFN width, vocabulary, positions (rows - 2: fairseq's learned positions start
    after padding_idx 1, as xlsr's after POSITION_OFFSET) and `layernorm_embedding`. From cfg.model, with
    xm_transformer's defaults: adaptor_stride (2), decoder_attention_heads (16), activation_fn (relu),
    no_scale_embedding (False), the decoder dropouts and the pad/eos ids (1, 2).
    """
    for key, allowed in UNSUPPORTED_DECODER.items():
        if key in model and model[key] not in allowed:
            raise CheckpointError(f"xm_transformer option {key}={model[key]!r} is not supported")
    activation = model.get("activation_fn") or "relu"
    if activation not in ("relu", "gelu"):
        raise CheckpointError(f"decoder activation_fn={activation!r} is not supported (relu or gelu)")
    if model.get("pad", 1) != 1:
        raise CheckpointError(f"pad={model['pad']}: xlsr reads dictionaries with fairseq's <pad> = 1")
    layers = _count(weights, r"encoder\.adaptor\.layers\.(\d+)\.weight")
    kernel = int(weights["encoder.adaptor.layers.0.weight"].shape[2]) if layers else model.get("adaptor_kernel_size", 3)
    proj, proj_ln = weights.get("encoder.w2v_encoder.proj.weight"), "encoder.w2v_proj_ln.weight" in weights
    if (proj is not None) != proj_ln:
        raise CheckpointError(
            "encoder.w2v_encoder.proj without encoder.w2v_proj_ln (or the reverse): xlsr's adapter projects "
            "the encoder with a linear layer followed by a layer norm"
        )
    embed = weights.get("decoder.embed_tokens.weight")
    positions = weights.get("decoder.embed_positions.weight")
    fc1 = weights.get("decoder.layers.0.fc1.weight")
    if embed is None or positions is None or fc1 is None:
        raise CheckpointError("no decoder weights (decoder.embed_tokens, decoder.embed_positions, decoder.layers.0)")

    def opt(key: str, default: float) -> float:
        value = model.get(key)
        return float(default if value is None else value)

    return dict(
        adaptor_n_layers=layers,
        adaptor_kernel_size=int(kernel),
        adaptor_stride=int(model.get("adaptor_stride") or 2),
        adaptor_proj_dim=0 if proj is None else int(proj.shape[0]),
        decoder_layers=_count(weights, r"decoder\.layers\.(\d+)\.fc1\.weight"),
        decoder_embed_dim=int(embed.shape[1]),
        decoder_ffn_embed_dim=int(fc1.shape[0]),
        decoder_attention_heads=int(model.get("decoder_attention_heads") or 16),
        vocab_size=int(embed.shape[0]),
        max_target_positions=int(positions.shape[0]) - POSITION_OFFSET,
        activation_fn=activation,
        scale_embedding=not model.get("no_scale_embedding", False),
        layernorm_embedding="decoder.layernorm_embedding.weight" in weights,
        decoder_dropout=opt("decoder_dropout", 0.1),
        decoder_attention_dropout=opt("decoder_attention_dropout", 0.0),
        decoder_activation_dropout=opt("decoder_activation_dropout", 0.0),
        decoder_layerdrop=opt("decoder_layerdrop", 0.0),
        eos_token_id=int(model.get("eos", 2)),
        decoder_start_token_id=int(model.get("eos", 2)),  # fairseq's decoder input starts with </s>
    )


ADAPTER_KEYS = [
    (r"encoder\.w2v_encoder\.proj\.(weight|bias)", "adapter.proj.{}"),
    (r"encoder\.w2v_proj_ln\.(weight|bias)", "adapter.proj_layer_norm.{}"),
    (r"encoder\.adaptor\.layers\.(\d+)\.(weight|bias)", "adapter.layers.{}.{}"),
]
# decoder.output_projection.weight: the same tensor as decoder.embed_tokens.weight (tied), dropped.
TIED = "decoder.output_projection.weight"


def map_st_key(key: str) -> str:
    """A fairseq xm_transformer weight name -> the xlsr SpeechTranslationModel name (see the module docstring)."""
    if key.startswith(W2V):
        mapped = map_key(key[len(W2V) :])
        if mapped.startswith("head."):
            raise CheckpointError(f"unknown weight {key!r}: a pretraining module inside a speech-translation model")
        return "encoder." + mapped
    for pattern, template in ADAPTER_KEYS:
        if m := re.fullmatch(pattern, key):
            return template.format(*m.groups())
    if key.startswith("decoder."):  # fairseq TransformerDecoder names are kept as they are
        return key
    raise CheckpointError(f"unknown weight {key!r}: not part of an xm_transformer model xlsr knows")


def _data_config(path: Path, options: dict[str, Any]) -> dict[str, Any]:
    """The S2T data config (config.yaml) beside the checkpoint, or {} when there is none."""
    name = Path(str(options.get("config_yaml") or "config.yaml")).name
    file = path.parent / name
    if not file.is_file():
        return {}
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise CheckpointError(f"{file}: not a readable data config ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{file}: not a fairseq data config (a YAML mapping)")
    return data


def _beside(path: Path, name: str) -> Path:
    """A file a data config names, looked for beside the checkpoint: an absolute name was a path on the
    training machine, so only its last part is used."""
    named = Path(name)
    return path.parent / (named.name if named.is_absolute() else named)


def _tokenizer(
    path: Path, data: dict[str, Any], dict_path: str | Path | None, spm_path: str | Path | None, vocab_size: int
) -> SentencePieceTokenizer:
    dict_file = Path(dict_path) if dict_path else _beside(path, str(data.get("vocab_filename") or "dict.txt"))
    if not dict_file.is_file():
        raise CheckpointError(f"{path}: the target dictionary {dict_file} does not exist (pass --dict PATH)")
    bpe = data.get("bpe_tokenizer") if isinstance(data.get("bpe_tokenizer"), dict) else {}
    if bpe.get("bpe", "sentencepiece") != "sentencepiece":
        raise CheckpointError(f"{path}: bpe {bpe['bpe']!r} in its data config; xlsr reads sentencepiece targets")
    spm_file = Path(spm_path) if spm_path else _beside(path, str(bpe.get("sentencepiece_model") or SPM_FILE))
    if not spm_file.is_file():
        raise CheckpointError(f"{path}: the sentencepiece model {spm_file} does not exist (pass --spm PATH)")
    tokenizer = SentencePieceTokenizer.from_fairseq(spm_file, dict_file)
    if len(tokenizer) != vocab_size:
        raise CheckpointError(
            f"{dict_file} has {len(tokenizer)} symbols with fairseq's 4 specials, but the decoder's embedding has "
            f"{vocab_size}: wrong dictionary for this checkpoint"
        )
    return tokenizer


def load_fairseq_st(
    path: str | Path,
    ckpt: dict[str, Any] | None = None,
    dict_path: str | Path | None = None,
    spm_path: str | Path | None = None,
    encoder_attention_heads: int | None = None,
) -> tuple[SpeechTranslationModel, SentencePieceTokenizer, Preprocessing]:
    """A fairseq xm_transformer checkpoint -> (model, target tokenizer, preprocessing).

    path: the `.pt` file (read with the safe loader unless `ckpt`, its loaded dict, is given). The target
    dictionary and sentencepiece model are `dict_path` / `spm_path`, else the files the data config beside
    the checkpoint names (cfg.task.config_yaml, default config.yaml: `vocab_filename`,
    `bpe_tokenizer.sentencepiece_model`), else `dict.txt` / `sentencepiece.bpe.model` beside it.
    encoder_attention_heads: the encoder's heads, for a checkpoint whose width is none of the released ones
    and whose options do not say (see `encoder_config`).
    Preprocessing: each waveform layer-normalised with fairseq's eps 1e-5 when the data config sets
    `standardize_audio` (fairseq's S2T dataset does `F.layer_norm(w, w.shape)`); without a data config,
    cfg.model's `normalize`, which fairseq requires to equal the pretraining task's.
    """
    path = Path(path)
    ckpt = safe_torch_load(path) if ckpt is None else ckpt
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise CheckpointError(f"{path}: no `model` weights: not a fairseq checkpoint")
    try:
        model = _model_options(ckpt)
        task = dict(_as_dict(_as_dict(ckpt["cfg"]).get("task") or {})) if ckpt.get("cfg") is not None else model
        weights = {k: v for k, v in ckpt["model"].items() if not k.endswith(IGNORED_SUFFIXES)}
        tied = weights.pop(TIED, None)
        if tied is not None and not torch.equal(tied, weights.get("decoder.embed_tokens.weight", tied[:0])):
            raise CheckpointError(f"{TIED} differs from decoder.embed_tokens.weight: xlsr ties them")
        encoder = encoder_config(model, weights, encoder_attention_heads)
        cfg = SpeechTranslationConfig(encoder=encoder, **adapter_decoder_options(model, weights))
        state = {map_st_key(k): v for k, v in weights.items()}
    except (CheckpointError, ConfigError) as e:
        raise CheckpointError(f"{path}: {e}") from None
    try:
        net = SpeechTranslationModel.from_state_dict(cfg, state)
    except ValueError as e:
        raise CheckpointError(f"{path}: weights do not match the options: {' '.join(str(e).split())}") from None
    data = _data_config(path, task)
    tokenizer = _tokenizer(path, data, dict_path, spm_path, cfg.vocab_size)
    normalize = data.get("standardize_audio", False) if data else model.get("normalize", False)
    pre = Preprocessing(do_normalize=bool(normalize), normalize_eps=1e-5)  # F.layer_norm's eps
    return net, tokenizer, pre
