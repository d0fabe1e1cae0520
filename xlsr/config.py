"""Model shape and preprocessing as frozen dataclasses, and the named presets.

`ModelConfig` is stored inside every checkpoint xlsr writes and rebuilt from it. Field names follow
fairseq's `Wav2Vec2Config` where fairseq has the option; each comment gives the transformers
`Wav2Vec2Config` name where it differs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from .errors import ConfigError

SAMPLE_RATE = 16000
# (dim, kernel, stride) per conv layer: total stride 5 * 2**6 = 320 samples = 20 ms per frame,
# receptive field 400 samples = 25 ms.
CONV_LAYERS: tuple[tuple[int, int, int], ...] = ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2

HEADS = ("none", "pretraining", "ctc", "classification")
CLASSIFIER_ACTIVATIONS = ("linear", "gelu")  # what follows the pooled mean (fairseq MeanPoolingFast activation_fn)


@dataclass(frozen=True)
class ModelConfig:
    # feature encoder (fairseq ConvFeatureExtractionModel; transformers Wav2Vec2FeatureEncoder)
    conv_feature_layers: tuple[tuple[int, int, int], ...] = CONV_LAYERS  # HF conv_dim, conv_kernel, conv_stride
    extractor_mode: str = "layer_norm"  # "layer_norm" | "group_norm" (fairseq "default"); HF feat_extract_norm
    conv_bias: bool = True
    # transformer (fairseq TransformerEncoder; transformers Wav2Vec2Encoder[StableLayerNorm])
    encoder_layers: int = 24  # HF num_hidden_layers
    encoder_embed_dim: int = 1024  # HF hidden_size
    encoder_ffn_embed_dim: int = 4096  # HF intermediate_size
    encoder_attention_heads: int = 16  # HF num_attention_heads
    layer_norm_first: bool = True  # pre-LN "stable" layout; HF do_stable_layer_norm
    conv_pos: int = 128  # HF num_conv_pos_embeddings
    conv_pos_groups: int = 16  # HF num_conv_pos_embedding_groups
    post_extract_proj: bool = True  # fairseq has no projection when the conv dim equals the embed dim
    activation_fn: str = "gelu"  # HF hidden_act
    layer_norm_eps: float = 1e-5
    # regularisation
    dropout: float = 0.1  # HF hidden_dropout
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    dropout_input: float = 0.0  # after the feature projection; HF feat_proj_dropout
    dropout_features: float = 0.0  # on the quantizer input; HF feat_quantizer_dropout
    encoder_layerdrop: float = 0.0  # HF layerdrop
    final_dropout: float = 0.0  # before the CTC head (fairseq wav2vec_ctc final_dropout)
    # quantizer and contrastive projections (fairseq Wav2Vec2Model; transformers Wav2Vec2ForPreTraining)
    quantize_targets: bool = True
    latent_vars: int = 320  # entries per group V; HF num_codevectors_per_group
    latent_groups: int = 2  # groups G; HF num_codevector_groups
    latent_dim: int = 0  # codebook vector size (0: final_dim); HF codevector_dim
    final_dim: int = 768  # contrastive space; HF proj_codevector_dim
    logit_temp: float = 0.1  # HF contrastive_logits_temperature
    # head on top of the encoder
    head: str = "pretraining"  # one of HEADS
    vocab_size: int = 0  # CTC head output size
    labels: tuple[str, ...] = ()  # classification labels, index = class id (HF id2label)
    classifier_proj_size: int = 256
    use_weighted_layer_sum: bool = False
    # after the mean over frames: "linear" (none: transformers Wav2Vec2ForSequenceClassification) or "gelu"
    # (fairseq wav2vec_classification's MeanPoolingFast with its default activation_fn)
    classifier_activation: str = "linear"

    def __post_init__(self):
        if self.head not in HEADS:
            raise ConfigError(f"head must be one of {', '.join(HEADS)}, not {self.head!r}")
        if self.extractor_mode not in ("layer_norm", "group_norm"):
            raise ConfigError(f"extractor_mode must be 'layer_norm' or 'group_norm', not {self.extractor_mode!r}")
        if self.encoder_embed_dim % self.encoder_attention_heads:
            raise ConfigError(
                f"encoder_embed_dim {self.encoder_embed_dim} is not divisible by "
                f"encoder_attention_heads {self.encoder_attention_heads}"
            )
        if self.encoder_embed_dim % self.conv_pos_groups:
            raise ConfigError(f"encoder_embed_dim {self.encoder_embed_dim} is not divisible by conv_pos_groups")
        if self.quantize_targets and self.codevector_dim % self.latent_groups:
            raise ConfigError(f"codebook dim {self.codevector_dim} is not divisible by latent_groups")
        if self.head == "ctc" and self.vocab_size <= 0:
            raise ConfigError("a CTC model needs vocab_size > 0")
        if self.head == "classification" and len(self.labels) < 2:
            raise ConfigError("a classification model needs at least two labels")
        if self.classifier_activation not in CLASSIFIER_ACTIVATIONS:
            raise ConfigError(
                f"classifier_activation must be one of {', '.join(CLASSIFIER_ACTIVATIONS)}, "
                f"not {self.classifier_activation!r}"
            )
        if not self.post_extract_proj and self.conv_dim != self.encoder_embed_dim:
            raise ConfigError("post_extract_proj=False needs the last conv dim to equal encoder_embed_dim")

    @property
    def conv_dim(self) -> int:
        """Channels of the feature encoder's output (fairseq `embed`)."""
        return self.conv_feature_layers[-1][0]

    @property
    def codevector_dim(self) -> int:
        return self.latent_dim or self.final_dim

    @property
    def frame_stride(self) -> int:
        """Samples per output frame (320 = 20 ms at 16 kHz for the standard encoder)."""
        stride = 1
        for _, _, s in self.conv_feature_layers:
            stride *= s
        return stride

    @property
    def receptive_field(self) -> int:
        """Samples seen by one output frame (400 = 25 ms for the standard encoder)."""
        field_, jump = 1, 1
        for _, k, s in self.conv_feature_layers:
            field_ += (k - 1) * jump
            jump *= s
        return field_

    def num_frames(self, samples):
        """The one frame-count formula: frames the feature encoder makes of `samples` samples (an int, or a
        (B,) long tensor -> (B,) long): floor((samples - receptive_field) / frame_stride) + 1, at least 0.
        Exactly each conv layer's floor((L - kernel) / stride) + 1 in turn (floors of integer floors compose)."""
        frames = (samples - self.receptive_field) // self.frame_stride + 1
        return frames.clamp(min=0) if hasattr(frames, "clamp") else max(frames, 0)

    @property
    def layout(self) -> str:
        return "pre-LN (layer norm, XLS-R)" if self.layer_norm_first else "post-LN (group norm, wav2vec2-base)"

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["conv_feature_layers"] = [list(c) for c in self.conv_feature_layers]
        d["labels"] = list(self.labels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown model config keys: {', '.join(unknown)}")
        d = dict(d)
        if "conv_feature_layers" in d:
            d["conv_feature_layers"] = tuple(tuple(int(v) for v in c) for c in d["conv_feature_layers"])
        if "labels" in d:
            d["labels"] = tuple(d["labels"])
        return cls(**d)


@dataclass(frozen=True)
class Preprocessing:
    """How a waveform is prepared for the model (transformers' Wav2Vec2FeatureExtractor; fairseq task.normalize)."""

    sample_rate: int = SAMPLE_RATE
    do_normalize: bool = True  # zero mean, unit variance over each utterance's valid samples
    normalize_eps: float = 1e-7  # transformers adds 1e-7 to the variance; fairseq's layer_norm adds 1e-5
    # Group-norm models were trained on zero-padded batches without an attention mask (transformers'
    # return_attention_mask=False); xlsr still passes lengths, which only matters for the padded frames.
    return_attention_mask: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def _base(**changes: Any) -> ModelConfig:
    """wav2vec 2.0 base layout: group norm in the first conv layer only, no conv bias, post-LN."""
    return ModelConfig(
        extractor_mode="group_norm",
        conv_bias=False,
        layer_norm_first=False,
        encoder_layers=12,
        encoder_embed_dim=768,
        encoder_ffn_embed_dim=3072,
        encoder_attention_heads=12,
        final_dim=256,
        dropout_input=0.1,
        dropout_features=0.1,
        encoder_layerdrop=0.05,
    ).replace(**changes)


def _xlsr(**changes: Any) -> ModelConfig:
    """XLS-R / XLSR-53 "stable" layout: layer norm in every conv layer, conv bias, pre-LN transformer."""
    return ModelConfig(dropout_input=0.1, dropout_features=0.1, encoder_layerdrop=0.1).replace(**changes)


# Published sizes (arXiv 2111.09296 table 1; wav2vec 2.0 base from arXiv 2006.11477).
PRESETS = {
    "xlsr-300m": lambda: _xlsr(encoder_layers=24, encoder_embed_dim=1024, encoder_ffn_embed_dim=4096, final_dim=768),
    "xlsr-1b": lambda: _xlsr(encoder_layers=48, encoder_embed_dim=1280, encoder_ffn_embed_dim=5120, final_dim=1024),
    "xlsr-2b": lambda: _xlsr(encoder_layers=48, encoder_embed_dim=1920, encoder_ffn_embed_dim=7680, final_dim=1024),
    "wav2vec2-base": lambda: _base(),
    # Small models for tests and CPU recipes: the real conv strides (20 ms frames), narrow layers.
    "tiny": lambda: _xlsr(
        conv_feature_layers=((32, 10, 5),) + ((32, 3, 2),) * 4 + ((32, 2, 2),) * 2,
        encoder_layers=2,
        encoder_embed_dim=32,
        encoder_ffn_embed_dim=64,
        encoder_attention_heads=2,
        conv_pos=16,
        conv_pos_groups=4,
        latent_vars=16,
        final_dim=16,
        encoder_layerdrop=0.0,
    ),
    "tiny-base": lambda: _base(
        conv_feature_layers=((32, 10, 5),) + ((32, 3, 2),) * 4 + ((32, 2, 2),) * 2,
        encoder_layers=2,
        encoder_embed_dim=32,
        encoder_ffn_embed_dim=64,
        encoder_attention_heads=2,
        conv_pos=16,
        conv_pos_groups=4,
        latent_vars=16,
        final_dim=16,
        encoder_layerdrop=0.0,
    ),
    # The size the CPU recipes pretrain and fine-tune (a few MB).
    "small": lambda: _xlsr(
        conv_feature_layers=((128, 10, 5),) + ((128, 3, 2),) * 4 + ((128, 2, 2),) * 2,
        encoder_layers=4,
        encoder_embed_dim=192,
        encoder_ffn_embed_dim=768,
        encoder_attention_heads=4,
        conv_pos=64,
        conv_pos_groups=8,
        latent_vars=64,
        final_dim=128,
        encoder_layerdrop=0.0,
    ),
}


def preset(name: str, **changes: Any) -> ModelConfig | SpeechTranslationConfig:
    """A named preset (`xlsr-300m`, `xlsr-1b`, `xlsr-2b`, `wav2vec2-base`, `tiny`, ...) with optional changes.

    The speech-translation presets (`xlsr-300m-st`, `xlsr-1b-st`, `xlsr-2b-st`, `tiny-st`) return a
    `SpeechTranslationConfig` (whose `family` is "speech_translation"), every other one a `ModelConfig`.
    """
    key = name.replace("_", "-").lower()
    if key not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[key]().replace(**changes)


@dataclass(frozen=True)
class SpeechTranslationConfig:
    """XLS-R encoder + convolutional adapter + mBART-style decoder: the speech-translation family.

    fairseq `xm_transformer` (`Wav2VecEncoderWithAdaptor` + `TransformerDecoder`); transformers
    `SpeechEncoderDecoderModel` of a `Wav2Vec2Model` with `add_adapter` and an `MBartForCausalLM`. Stored inside
    every checkpoint and rebuilt from it, like `ModelConfig`. Field names follow fairseq's xm_transformer options;
    the comments give transformers' names where they differ.
    """

    family: ClassVar[str] = "speech_translation"

    encoder: ModelConfig = dataclasses.field(default_factory=lambda: ModelConfig(head="none"))
    # adapter (fairseq Conv1dAdaptor, with w2v_encoder.proj + w2v_proj_ln; transformers Wav2Vec2Adapter)
    adaptor_n_layers: int = 3  # HF num_adapter_layers
    adaptor_kernel_size: int = 3  # HF adapter_kernel_size
    adaptor_stride: int = 2  # HF adapter_stride
    adaptor_proj_dim: int = 0  # Linear + LayerNorm down to this width first (0: none); HF output_hidden_size
    # decoder (fairseq TransformerDecoder with decoder_normalize_before; transformers MBartDecoder)
    decoder_layers: int = 12
    decoder_embed_dim: int = 1024  # HF d_model
    decoder_ffn_embed_dim: int = 4096  # HF decoder_ffn_dim
    decoder_attention_heads: int = 16
    vocab_size: int = 250054  # mBART-50: 4 specials, the sentencepiece pieces, 52 language codes, <mask>
    max_target_positions: int = 1024  # HF max_position_embeddings (the table has 2 more rows: the offset)
    activation_fn: str = "relu"  # HF activation_function
    scale_embedding: bool = True  # embeddings times sqrt(decoder_embed_dim); fairseq `not no_scale_embedding`
    layernorm_embedding: bool = True
    decoder_dropout: float = 0.1  # HF dropout
    decoder_attention_dropout: float = 0.0  # HF attention_dropout
    decoder_activation_dropout: float = 0.0  # HF activation_dropout
    decoder_layerdrop: float = 0.0
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2
    decoder_start_token_id: int = 2  # fairseq starts the decoder input with </s>

    def __post_init__(self):
        if not isinstance(self.encoder, ModelConfig):
            raise ConfigError("SpeechTranslationConfig.encoder must be a ModelConfig")
        if self.encoder.head != "none":
            raise ConfigError(f"a speech-translation encoder has head 'none', not {self.encoder.head!r}")
        if self.adapter_dim != self.decoder_embed_dim:
            raise ConfigError(
                f"the adapter's output width {self.adapter_dim} must equal decoder_embed_dim {self.decoder_embed_dim}"
                " (set adaptor_proj_dim to project the encoder down)"
            )
        if self.decoder_embed_dim % self.decoder_attention_heads:
            raise ConfigError(
                f"decoder_embed_dim {self.decoder_embed_dim} is not divisible by "
                f"decoder_attention_heads {self.decoder_attention_heads}"
            )
        if self.adaptor_n_layers < 0 or self.adaptor_kernel_size < 1 or self.adaptor_stride < 1:
            raise ConfigError("adaptor_n_layers must be >= 0 and adaptor_kernel_size, adaptor_stride >= 1")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ConfigError(f"{name} {getattr(self, name)} is outside the vocabulary (size {self.vocab_size})")

    @property
    def adapter_dim(self) -> int:
        """Width of the adapter's convolutions and output (HF output_hidden_size)."""
        return self.adaptor_proj_dim or self.encoder.encoder_embed_dim

    @property
    def frame_stride(self) -> int:
        """Samples per encoder output frame after the adapter (320 * 2**3 = 2560 = 160 ms for the published models)."""
        return self.encoder.frame_stride * self.adaptor_stride**self.adaptor_n_layers

    def replace(self, **changes: Any) -> SpeechTranslationConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["encoder"] = self.encoder.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SpeechTranslationConfig:
        d = dict(d)
        family = d.pop("family", cls.family)
        if family != cls.family:
            raise ConfigError(f"config family {family!r} is not {cls.family!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown speech-translation config keys: {', '.join(unknown)}")
        if isinstance(d.get("encoder"), dict):
            d["encoder"] = ModelConfig.from_dict(d["encoder"])
        return cls(**d)


def _st(encoder: ModelConfig, **changes: Any) -> SpeechTranslationConfig:
    """The published XLS-R speech-translation layout (arXiv 2111.09296 section 4.4; facebook/wav2vec2-xls-r-*-to-*):
    the fine-tuned XLS-R encoder, a 3-layer adapter (kernel 3, stride 2), mBART-50's decoder (12 x 1024, 16
    heads, FFN 4096, 250054 tokens, ReLU, scaled embeddings)."""
    return SpeechTranslationConfig(encoder=encoder.replace(head="none"), **changes)


PRESETS.update(
    {
        "xlsr-300m-st": lambda: _st(PRESETS["xlsr-300m"]()),
        "xlsr-1b-st": lambda: _st(PRESETS["xlsr-1b"](), adaptor_proj_dim=1024),  # 1280 -> 1024
        "xlsr-2b-st": lambda: _st(PRESETS["xlsr-2b"](), adaptor_proj_dim=1024),  # 1920 -> 1024
        "tiny-st": lambda: _st(
            PRESETS["tiny"](),
            decoder_layers=2,
            decoder_embed_dim=32,
            decoder_ffn_embed_dim=64,
            decoder_attention_heads=4,
            vocab_size=64,
        ),
    }
)
