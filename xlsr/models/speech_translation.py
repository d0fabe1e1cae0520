"""The XLS-R speech-translation network: wav2vec 2.0 encoder -> adapter -> mBART-style decoder.

fairseq `XMTransformerModel` (`Wav2VecEncoderWithAdaptor` + `TransformerDecoder`); transformers
`SpeechEncoderDecoderModel` (`Wav2Vec2Model` with `add_adapter` + `MBartForCausalLM`).

State-dict prefixes: `encoder.` (a head-less `Wav2Vec2Model`, its own keys), `adapter.`, `decoder.`.
Dimension letters: B batch, S samples, T' adapter frames, D decoder width, L target tokens, V vocabulary.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..config import Preprocessing, SpeechTranslationConfig
from .adapter import Adapter
from .decoder import TransformerDecoder
from .padding import padding_mask
from .wav2vec2 import Wav2Vec2Model
from .weights import build_with_weights


class SpeechTranslationModel(nn.Module):
    def __init__(self, cfg: SpeechTranslationConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Wav2Vec2Model(cfg.encoder)
        self.adapter = Adapter(
            cfg.encoder.encoder_embed_dim,
            cfg.adaptor_proj_dim,
            cfg.adaptor_n_layers,
            cfg.adaptor_kernel_size,
            cfg.adaptor_stride,
        )
        self.decoder = TransformerDecoder(cfg)
        # What a loaded model carries besides its weights (set by the checkpoint loaders).
        self.tokenizer: Any = None  # the target-text tokenizer (xlsr.text.spm_tokenizer), None until set
        self.preprocessing = Preprocessing()
        self.source = "new model"

    @classmethod
    def from_state_dict(cls, cfg: SpeechTranslationConfig, state: dict[str, Tensor]) -> SpeechTranslationModel:
        """A float32 model holding exactly `state`; a missing or unexpected weight raises ValueError.

        Only `encoder.mask_emb` may be absent (it then gets a fresh initialisation). Built on the meta device
        first, as `Wav2Vec2Model.from_state_dict`, so no time goes into random weights.
        """
        model = build_with_weights(cls, cfg, state, optional="encoder.mask_emb")
        if "encoder.mask_emb" not in state:
            model.encoder.mask_emb = nn.Parameter(torch.empty(cfg.encoder.encoder_embed_dim).uniform_())
        return model.float()

    def frame_lengths(self, lengths: Tensor) -> Tensor:
        """(B,) samples -> (B,) frames of the encoder output after the adapter."""
        return self.adapter.output_lengths(self.encoder.frame_lengths(lengths))

    def encode(self, waveforms: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """waveforms: (B, S) float, normalised as `preprocessing` says; lengths: (B,) long valid samples (None:
        nothing is padded) -> encoder_out (B, T', D) (padded frames exactly 0) and padding (B, T') bool,
        True = padded (None when nothing is)."""
        out = self.encoder.encode(waveforms, lengths)  # out.x: the final output, final layer norm included
        return self.adapt(out.x, out.lengths)

    def encode_by_length(
        self, waveforms: Tensor, lengths: Tensor | None = None, max_padding: float = 0.1
    ) -> tuple[Tensor, Tensor | None]:
        """`encode`, with the utterances run through the encoder in groups of similar length, so that at most
        `max_padding` of each group's samples are padding (a batch of 5-15 s clips padded to the longest is a
        third padding) for less work. With the layer-norm feature encoder of every XLS-R model a padded batch
        gives each utterance its own output, so the result is encode's (tested); a group-norm encoder
        normalises over the padding too, and gets closer to each utterance's own output. The groups come from
        `length_groups`; the decoder then sees the whole batch at once, where batching pays."""
        if lengths is None or len(lengths) < 2:
            return self.encode(waveforms, lengths)
        groups = length_groups(lengths.tolist(), max_padding)
        if len(groups) == 1:
            return self.encode(waveforms, lengths)
        frames = self.frame_lengths(lengths)  # (B,) decoder memory frames
        out = None
        for group in groups:
            idx = torch.tensor(group, device=waveforms.device)
            x, _ = self.encode(waveforms[idx, : int(lengths[idx].max())], lengths[idx])  # (g, T_g, D)
            if out is None:
                out = x.new_zeros(len(lengths), int(frames.max()), x.shape[-1])
            out[idx, : x.shape[1]] = x
        return out, padding_mask(frames, out.shape[1]) if bool((frames < out.shape[1]).any()) else None

    def adapt(self, encoded: Tensor, frames: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """The adapter over the encoder's output: encoded (B, T, D_enc), frames (B,) long valid frames or None
        -> decoder memory (B, T', D) (padded frames exactly 0) and padding (B, T') bool, True = padded (None when
        nothing is). Fine-tuning calls the encoder itself (masking, freezing), then this."""
        x, frames = self.adapter(encoded, frames)
        if frames is None or not bool((frames < x.shape[1]).any()):
            return x, None
        return x, padding_mask(frames, x.shape[1])

    def forward(
        self,
        waveforms: Tensor,
        lengths: Tensor | None,
        prev_tokens: Tensor,
        target_padding: Tensor | None = None,
    ) -> Tensor:
        """Teacher forcing. waveforms: (B, S); lengths: (B,) or None; prev_tokens: (B, L) long, the decoder
        input (fairseq prev_output_tokens: </s>, language tag, ...; HF decoder_input_ids); target_padding:
        (B, L) bool, True = padded, or None -> logits (B, L, V)."""
        encoder_out, padding = self.encode(waveforms, lengths)
        return self.decoder(prev_tokens, encoder_out, padding, target_padding=target_padding)

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        self.encoder.set_gradient_checkpointing(enabled)
        self.decoder.gradient_checkpointing = enabled

    def fsdp_units(self) -> list[nn.Module]:
        """The modules to wrap with fully_shard, before the whole model: every encoder and decoder block."""
        return [*self.encoder.encoder.layers, *self.decoder.layers]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def length_groups(lengths: list[int], max_padding: float = 0.1) -> list[list[int]]:
    """Indices of `lengths` in groups, longest first, each as large as it can be while padding to its longest
    costs at most `max_padding` of its real samples (a group of one has none)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    for i in order:
        g = groups[-1] if groups else None
        if g is not None and (len(g) + 1) * lengths[g[0]] <= (1 + max_padding) * (
            sum(lengths[j] for j in g) + lengths[i]
        ):
            g.append(i)
        else:
            groups.append([i])
    return groups
