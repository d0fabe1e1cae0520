"""The mBART-style Transformer decoder of the speech-translation models, with its key/value cache.

fairseq `TransformerDecoder` (decoder_normalize_before, layernorm_embedding, learned positions, shared
input/output embedding); transformers `MBartDecoder` + `MBartForCausalLM.lm_head`. Weight names are
fairseq's. Attention is SDPA with boolean masks (True = may attend, the complement of xlsr's padding masks).

Dimension letters: B utterances, k beams per utterance, N = B * k decoder rows (utterance-major: row
b * k + j is beam j of utterance b), L target tokens, T encoder frames, D model dim, H heads, V vocabulary.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..config import SpeechTranslationConfig
from .transformer import ACTIVATIONS

# Learned position p (0-based) is row p + 2 of `embed_positions`: fairseq's LearnedPositionalEmbedding
# counts from padding_idx + 1 (= 2 for the mBART dictionaries, pad = 1); transformers' MBart has offset 2.
POSITION_OFFSET = 2
CACHE_BLOCK = 16  # the self-attention cache grows by doubling, from this many positions


class Attention(nn.Module):
    """Multi-head attention with separate projection and attention steps, so that keys and values can be
    cached (fairseq `MultiheadAttention`; transformers `MBartAttention`)."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def _split(self, x: Tensor) -> Tensor:
        """(R, S, D) -> (R, H, S, D/H)."""
        R, S, _ = x.shape
        return x.view(R, S, self.heads, -1).transpose(1, 2)

    def query(self, x: Tensor) -> Tensor:
        """x: (R, S, D) -> (R, H, S, D/H)."""
        return self._split(self.q_proj(x))

    def keys_values(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x: (R, S, D) -> keys, values, each (R, H, S, D/H)."""
        return self._split(self.k_proj(x)), self._split(self.v_proj(x))

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        """q: (R, H, S, D/H), k, v: (R, H, S', D/H), mask broadcastable to (R, H, S, S'), True = may attend
        -> (R, S, D)."""
        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal)
        R, H, S, Dh = y.shape
        return self.out_proj(y.transpose(1, 2).reshape(R, S, H * Dh))

    def cross(self, x: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """Cross-attention of N = B * k query rows to their utterance's encoder memory.

        x: (N, L, D) decoder states, utterance-major; k, v: (B, H, T, D/H), one per utterance; mask: (B, 1, 1, T)
        or None -> (N, L, D). Queries never interact, so the k beams of an utterance are attended as one
        sequence of k * L queries against its memory: exact, with no per-beam copy of the encoder states.
        """
        N, L, D = x.shape
        B = k.shape[0]
        q = self.q_proj(x).view(B, N // B * L, self.heads, -1).transpose(1, 2)  # (B, H, k * L, D/H)
        y = self.attend(q, k, v, mask)  # (B, k * L, D)
        return y.view(N, L, D)


class DecoderLayer(nn.Module):
    """Pre-LN block: self-attention, cross-attention, feed-forward, each with its own layer norm
    (fairseq `TransformerDecoderLayer` with normalize_before; transformers `MBartDecoderLayer`)."""

    def __init__(self, cfg: SpeechTranslationConfig):
        super().__init__()
        D, H = cfg.decoder_embed_dim, cfg.decoder_attention_heads
        self.self_attn = Attention(D, H, cfg.decoder_attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(D)
        self.encoder_attn = Attention(D, H, cfg.decoder_attention_dropout)
        self.encoder_attn_layer_norm = nn.LayerNorm(D)
        self.fc1 = nn.Linear(D, cfg.decoder_ffn_embed_dim)
        self.fc2 = nn.Linear(cfg.decoder_ffn_embed_dim, D)
        self.final_layer_norm = nn.LayerNorm(D)
        self.activation = ACTIVATIONS[cfg.activation_fn]
        self.dropout, self.activation_dropout = cfg.decoder_dropout, cfg.decoder_activation_dropout

    def _feed_forward(self, x: Tensor) -> Tensor:
        x = F.dropout(self.activation(self.fc1(x)), self.activation_dropout, self.training)
        return self.fc2(x)

    def forward(
        self,
        x: Tensor,
        memory: tuple[Tensor, Tensor] | Tensor,
        memory_mask: Tensor | None,
        self_mask: Tensor | None = None,
        is_causal: bool = False,
        cache: DecoderCache | None = None,
        index: int = 0,
    ) -> Tensor:
        """x: (N, L, D); memory: this layer's cross-attention keys and values, each (B, H, T, D/H), or the encoder
        output (B, T, D) they are computed from here (teacher forcing: inside the layer's own call, where FSDP has
        gathered its weights); memory_mask: (B, 1, 1, T) True = may attend, or None; self_mask: (N or 1, 1, L,
        L_past + L) or None (with is_causal: a plain causal mask); cache: past keys/values, updated in place for
        layer `index`."""
        if isinstance(memory, Tensor):
            memory = self.encoder_attn.keys_values(memory)
        h = self.self_attn_layer_norm(x)
        q, (k, v) = self.self_attn.query(h), self.self_attn.keys_values(h)
        if cache is not None:
            k, v = cache.update(index, k, v)  # (N, H, L_past + L, D/H)
        x = x + F.dropout(self.self_attn.attend(q, k, v, self_mask, is_causal), self.dropout, self.training)
        h = self.encoder_attn_layer_norm(x)
        x = x + F.dropout(self.encoder_attn.cross(h, *memory, memory_mask), self.dropout, self.training)
        return x + F.dropout(self._feed_forward(self.final_layer_norm(x)), self.dropout, self.training)


class DecoderCache:
    """What incremental decoding keeps between steps (the `Inference` state of whisper's decoding).

    Cross-attention keys/values are computed once per utterance ((B, H, T, D/H) per layer) and shared by its
    beams; self-attention keys/values ((N, H, positions, D/H) per layer) are written into buffers that grow by
    doubling. `reorder` moves beams by index (one index_select per buffer per step, never a per-beam copy of
    the encoder memory). `length` is the number of target positions already decoded.
    """

    def __init__(self, memory: list[tuple[Tensor, Tensor]], memory_mask: Tensor | None, beams: int):
        self.memory, self.memory_mask, self.beams = memory, memory_mask, beams
        self.length = 0
        self._keys: list[Tensor | None] = [None] * len(memory)
        self._values: list[Tensor | None] = [None] * len(memory)

    @property
    def utterances(self) -> int:
        return self.memory[0][0].shape[0] if self.memory else 0

    def update(self, index: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Appends layer `index`'s new keys/values k, v: (N, H, L, D/H) after the `length` cached positions;
        returns all of them, (N, H, length + L, D/H) views of the buffers."""
        end = self.length + k.shape[2]
        buffers = []
        for store, new in ((self._keys, k), (self._values, v)):
            buf = store[index]
            if buf is None or buf.shape[2] < end:
                N, H, _, Dh = new.shape
                grown = new.new_empty(N, H, max(CACHE_BLOCK, end, 2 * (0 if buf is None else buf.shape[2])), Dh)
                if buf is not None:
                    grown[:, :, : self.length] = buf[:, :, : self.length]
                store[index] = buf = grown
            buf[:, :, self.length : end] = new
            buffers.append(buf[:, :, :end])
        return buffers[0], buffers[1]

    def reorder(self, indices: Tensor) -> None:
        """indices: (N,) long, row i of the next step continues row indices[i] (always one of the same
        utterance's beams, so the shared cross-attention memory stays as it is)."""
        L = self.length  # only the positions written so far move; the buffers' spare room is left alone
        for store in (self._keys, self._values):
            for i, buf in enumerate(store):
                if buf is not None:
                    moved = torch.empty((len(indices), *buf.shape[1:]), dtype=buf.dtype, device=buf.device)
                    torch.index_select(buf[:, :, :L], 0, indices, out=moved[:, :, :L])
                    store[i] = moved

    def keep_utterances(self, keep: Tensor) -> None:
        """keep: (B',) long utterance indices: drops the other utterances (finished ones) and their beams."""
        rows = (keep[:, None] * self.beams + torch.arange(self.beams, device=keep.device)).flatten()  # (B' * k,)
        self.memory = [(k.index_select(0, keep), v.index_select(0, keep)) for k, v in self.memory]
        if self.memory_mask is not None:
            self.memory_mask = self.memory_mask.index_select(0, keep)
        self.reorder(rows)


class TransformerDecoder(nn.Module):
    """Token + learned position embeddings, layer norm, pre-LN blocks, final layer norm, tied output projection.

    fairseq `TransformerDecoder` (decoder_layers, decoder_embed_dim, decoder_ffn_embed_dim,
    decoder_attention_heads, no_scale_embedding, layernorm_embedding, share_decoder_input_output_embed);
    transformers `MBartDecoder` / `MBartForCausalLM` (decoder_layers, d_model, decoder_ffn_dim,
    decoder_attention_heads, scale_embedding, max_position_embeddings). The output projection is
    `embed_tokens.weight` itself (fairseq `output_projection`, HF `lm_head`, both tied), so the state dict
    holds it once.
    """

    def __init__(self, cfg: SpeechTranslationConfig):
        super().__init__()
        D = cfg.decoder_embed_dim
        self.embed_tokens = nn.Embedding(cfg.vocab_size, D, padding_idx=cfg.pad_token_id)
        self.embed_positions = nn.Embedding(cfg.max_target_positions + POSITION_OFFSET, D)
        self.embed_scale = math.sqrt(D) if cfg.scale_embedding else 1.0
        self.layernorm_embedding = nn.LayerNorm(D) if cfg.layernorm_embedding else None
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        self.layer_norm = nn.LayerNorm(D)
        self.max_target_positions = cfg.max_target_positions
        self.dropout, self.layerdrop = cfg.decoder_dropout, cfg.decoder_layerdrop
        self.gradient_checkpointing = False
        self.layerdrop_generator: torch.Generator | None = None  # as TransformerEncoder's

    def embed(self, tokens: Tensor, start: int = 0) -> Tensor:
        """tokens: (N, L) long at positions start ... start + L - 1 -> (N, L, D)."""
        L = tokens.shape[1]
        if start + L > self.max_target_positions:
            raise ValueError(f"{start + L} target positions exceed max_target_positions {self.max_target_positions}")
        positions = self.embed_positions.weight[start + POSITION_OFFSET : start + L + POSITION_OFFSET]  # (L, D)
        x = self.embed_scale * self.embed_tokens(tokens) + positions
        if self.layernorm_embedding is not None:
            x = self.layernorm_embedding(x)
        return F.dropout(x, self.dropout, self.training)

    def memory(self, encoder_out: Tensor) -> list[tuple[Tensor, Tensor]]:
        """encoder_out: (B, T, D) -> each layer's cross-attention keys and values, (B, H, T, D/H) each."""
        return [layer.encoder_attn.keys_values(encoder_out) for layer in self.layers]

    def new_cache(self, encoder_out: Tensor, encoder_padding: Tensor | None, beams: int) -> DecoderCache:
        """encoder_out: (B, T, D); encoder_padding: (B, T) bool, True = padded; beams: k -> an empty cache for
        N = B * k rows."""
        return DecoderCache(self.memory(encoder_out), _memory_mask(encoder_padding), beams)

    def forward(
        self,
        tokens: Tensor,
        encoder_out: Tensor,
        encoder_padding: Tensor | None = None,
        cache: DecoderCache | None = None,
        target_padding: Tensor | None = None,
    ) -> Tensor:
        """tokens: (N, L) long, N = k * B rows utterance-major; encoder_out: (B, T, D); encoder_padding: (B, T)
        bool, True = padded, or None -> logits (N, L, V).

        Without a cache: teacher forcing (causal self-attention over the L tokens; target_padding (N, L) bool,
        True = padded, masks padded keys, which matters only for left padding; positions count from column 0
        as in transformers, where fairseq would skip left pads). With a cache: only the new tokens, at
        positions cache.length ...; the cache holds the memory (encoder_out is not read again).
        """
        B = encoder_out.shape[0] if cache is None else cache.utterances
        if tokens.shape[0] % B:
            raise ValueError(f"{tokens.shape[0]} decoder rows are not a multiple of {B} utterances")
        start = 0 if cache is None else cache.length
        x = self.embed(tokens, start)
        if cache is None:  # each layer computes its keys and values from encoder_out
            memory, memory_mask = [encoder_out] * len(self.layers), _memory_mask(encoder_padding)
        else:
            memory, memory_mask = cache.memory, cache.memory_mask
        self_mask, is_causal = _self_mask(tokens.shape[1], start, target_padding, tokens.device)
        for i, layer in enumerate(self.layers):
            if self.training and self.layerdrop > 0:
                if torch.rand((), generator=self.layerdrop_generator) < self.layerdrop:
                    continue
            args = (x, memory[i], memory_mask, self_mask, is_causal, cache, i)
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled() and cache is None:
                x = checkpoint(layer, *args, use_reentrant=False)
            else:
                x = layer(*args)
        if cache is not None:
            cache.length += tokens.shape[1]
        return F.linear(self.layer_norm(x), self.embed_tokens.weight)  # (N, L, V)


def _memory_mask(encoder_padding: Tensor | None) -> Tensor | None:
    """(B, T) True = padded -> (B, 1, 1, T) True = may attend."""
    return None if encoder_padding is None else ~encoder_padding[:, None, None, :]


def _self_mask(L: int, start: int, target_padding: Tensor | None, device: torch.device) -> tuple[Tensor | None, bool]:
    """The self-attention mask of L new tokens after `start` cached ones: (mask, is_causal)."""
    if target_padding is not None:
        if start:
            raise ValueError("target_padding is for teacher forcing (no cache)")
        causal = torch.ones(L, L, dtype=torch.bool, device=device).tril()
        mask = causal & ~target_padding[:, None, None, :]  # (N, 1, L, L)
        return mask | torch.eye(L, dtype=torch.bool, device=device), False  # a row never attends to nothing
    if L == 1:
        return None, False
    if start == 0:
        return None, True
    past = torch.arange(start + L, device=device)[None, :] <= start + torch.arange(L, device=device)[:, None]
    return past, False  # (L, start + L): token i sees the cache and new tokens up to itself
