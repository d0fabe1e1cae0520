"""The context network: convolutional relative positional embedding + Transformer encoder.

fairseq `TransformerEncoder` / `TransformerSentenceEncoderLayer`; transformers `Wav2Vec2Encoder`
(post-LN) and `Wav2Vec2EncoderStableLayerNorm` (pre-LN); torchaudio `Transformer` / `EncoderLayer`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..config import ModelConfig

ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "swish": F.silu, "silu": F.silu}


class PositionalConvEmbedding(nn.Module):
    """Weight-normalised grouped conv over time, "same" padding, GELU (fairseq `pos_conv`).

    weight = g * v / ||v||, the norm taken per kernel position over both channel dims, as
    `torch.nn.utils.weight_norm(conv, dim=2)` computes it; g, v and the bias are stored as fairseq does
    (`weight_g` (1, 1, K), `weight_v` (D, D / groups, K)).
    """

    def __init__(self, dim: int, kernel: int, groups: int):
        super().__init__()
        self.kernel, self.groups = kernel, groups
        std = math.sqrt(4.0 / (kernel * dim))
        self.weight_v = nn.Parameter(torch.randn(dim, dim // groups, kernel) * std)
        self.weight_g = nn.Parameter(self.weight_v.detach().norm(dim=(0, 1), keepdim=True))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, T, D) -> (B, T, D)."""
        weight = torch._weight_norm(self.weight_v, self.weight_g, 2)  # what nn.utils.weight_norm(dim=2) computes
        y = F.conv1d(x.transpose(1, 2), weight, self.bias, padding=self.kernel // 2, groups=self.groups)
        if self.kernel % 2 == 0:  # an even kernel with padding K/2 yields one frame too many
            y = y[..., :-1]
        return F.gelu(y).transpose(1, 2)


class SelfAttention(nn.Module):
    """Multi-head self-attention through `scaled_dot_product_attention` (fairseq `MultiheadAttention`)."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, attn_mask: Tensor | None) -> Tensor:
        """x: (B, T, D); attn_mask: (B, 1, 1, T) bool, True = may attend (SDPA's meaning), or None."""
        B, T, D = x.shape
        q = self.q_proj(x).view(B, T, self.heads, -1).transpose(1, 2)  # (B, H, T, D/H)
        k = self.k_proj(x).view(B, T, self.heads, -1).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.heads, -1).transpose(1, 2)
        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, D))


class EncoderLayer(nn.Module):
    """One Transformer block, pre-LN (XLS-R) or post-LN (wav2vec2-base)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        D, eps = cfg.encoder_embed_dim, cfg.layer_norm_eps
        self.self_attn = SelfAttention(D, cfg.encoder_attention_heads, cfg.attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(D, eps=eps)  # transformers `layer_norm`
        self.fc1 = nn.Linear(D, cfg.encoder_ffn_embed_dim)  # transformers `feed_forward.intermediate_dense`
        self.fc2 = nn.Linear(cfg.encoder_ffn_embed_dim, D)  # transformers `feed_forward.output_dense`
        self.final_layer_norm = nn.LayerNorm(D, eps=eps)
        self.activation = ACTIVATIONS[cfg.activation_fn]
        self.layer_norm_first = cfg.layer_norm_first
        self.dropout, self.activation_dropout = cfg.dropout, cfg.activation_dropout

    def _attention(self, x: Tensor, attn_mask: Tensor | None) -> Tensor:
        return F.dropout(self.self_attn(x, attn_mask), self.dropout, self.training)

    def _feed_forward(self, x: Tensor) -> Tensor:
        x = F.dropout(self.activation(self.fc1(x)), self.activation_dropout, self.training)
        return F.dropout(self.fc2(x), self.dropout, self.training)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """x: (B, T, D) -> (B, T, D)."""
        if self.layer_norm_first:
            x = x + self._attention(self.self_attn_layer_norm(x), attn_mask)
            return x + self._feed_forward(self.final_layer_norm(x))
        x = self.self_attn_layer_norm(x + self._attention(x, attn_mask))
        return self.final_layer_norm(x + self._feed_forward(x))


class TransformerEncoder(nn.Module):
    """Positional conv, then the blocks; the layer norm comes first (post-LN) or last (pre-LN).

    Args (fairseq / transformers names): encoder_layers / num_hidden_layers, encoder_embed_dim /
    hidden_size, encoder_layerdrop / layerdrop (training only: each block is skipped with this
    probability), conv_pos / num_conv_pos_embeddings, conv_pos_groups / num_conv_pos_embedding_groups.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        D = cfg.encoder_embed_dim
        self.pos_conv = PositionalConvEmbedding(D, cfg.conv_pos, cfg.conv_pos_groups)
        self.layer_norm = nn.LayerNorm(D, eps=cfg.layer_norm_eps)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.layer_norm_first = cfg.layer_norm_first
        self.dropout, self.layerdrop = cfg.dropout, cfg.encoder_layerdrop
        self.gradient_checkpointing = False
        # Layer drop decisions are drawn from this generator when set, so that every process of a
        # distributed run skips the same blocks.
        self.layerdrop_generator: torch.Generator | None = None

    def forward(
        self,
        x: Tensor,
        padding_mask: Tensor | None = None,
        num_layers: int | None = None,
        return_hidden_states: bool = False,
    ) -> tuple[Tensor, list[Tensor]]:
        """x: (B, T, D); padding_mask: (B, T) bool, True = padded.

        Returns the output (B, T, D) and, if asked, the hidden states [input of block 0, output of block 1,
        ...] (transformers' `hidden_states`; kept only on request: they cost a model-sized activation per
        layer). With `num_layers=K` only K blocks run and the output is the raw output of block K (no final
        layer norm), i.e. hidden_states[K].
        """
        if padding_mask is not None:
            # padded frames are zeroed so the positional conv sees the same zeros as an unpadded utterance
            x = x.masked_fill(padding_mask[..., None], 0.0)
        x = x + self.pos_conv(x)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        x = F.dropout(x, self.dropout, self.training)
        attn_mask = None if padding_mask is None else ~padding_mask[:, None, None, :]  # (B, 1, 1, T)
        hidden_states = [x] if return_hidden_states else []
        for layer in self.layers[:num_layers]:
            if self.training and self.layerdrop > 0:
                if torch.rand((), generator=self.layerdrop_generator) < self.layerdrop:
                    if return_hidden_states:
                        hidden_states.append(x)
                    continue
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, attn_mask, use_reentrant=False)
            else:
                x = layer(x, attn_mask)
            if return_hidden_states:
                hidden_states.append(x)
        if self.layer_norm_first and num_layers is None:
            x = self.layer_norm(x)
        return x, hidden_states
