"""The speech-translation network (xlsr/models/adapter.py, decoder.py, speech_translation.py), its config and
Hugging Face directories (xlsr/checkpoints/hf_st.py).

Reference: transformers 5.23 on random weights (`Wav2Vec2Model` with `add_adapter`, `MBartDecoderLayer`,
`MBartForCausalLM`, `SpeechEncoderDecoderModel` with its `save_pretrained`, `from_pretrained` and `generate`).
Batch invariance is a property of xlsr's own (neither transformers nor fairseq has it): the reference there
is the same utterance run alone.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import hf_config, randomize, speechlike

from xlsr.audio import normalize, pad_batch
from xlsr.checkpoints.hf_st import (
    GenerationDefaults,
    is_hf_st_config,
    load_hf_st_dir,
    parse_st_config,
    save_hf_st_dir,
    to_hf_st_config,
)
from xlsr.config import ModelConfig, SpeechTranslationConfig, preset
from xlsr.errors import CheckpointError, ConfigError
from xlsr.models.decoder import DecoderLayer, TransformerDecoder
from xlsr.models.padding import padding_mask
from xlsr.models.speech_translation import SpeechTranslationModel, length_groups

VOCAB = 64
# Encoder width 32; "equal": adapter and decoder at 32 (the 300M layout), "projected": Linear + LayerNorm down to
# 16 first (the 1B/2B layout).
LAYOUTS = {"equal": 32, "projected": 16}
# 1.1 s, 0.7 s, 0.93 s: 54, 34, 45 encoder frames; the adapter (3 x stride 2) meets odd lengths (27, 17, 45, 23, 9).
SECONDS = (1.1, 0.7, 0.93)
ATOL = 1e-4


def waves(seconds=SECONDS):
    wave, lengths = pad_batch([speechlike(s, seed=i + 3) for i, s in enumerate(seconds)])
    return normalize(wave, lengths), lengths


def mbart_config(d_model: int, **changes):
    from transformers import MBartConfig

    kwargs = dict(
        vocab_size=VOCAB,
        d_model=d_model,
        decoder_layers=2,
        decoder_ffn_dim=40,
        decoder_attention_heads=4,
        activation_function="relu",
        scale_embedding=True,
        max_position_embeddings=64,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        is_decoder=True,
        add_cross_attention=True,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    kwargs.update(changes)
    return MBartConfig(**kwargs)


def hf_st_model(layout: str, seed: int = 0):
    """A random transformers SpeechEncoderDecoderModel: XLS-R-layout encoder + adapter, mBART decoder."""
    from transformers import SpeechEncoderDecoderConfig, SpeechEncoderDecoderModel

    out = LAYOUTS[layout]
    enc = hf_config(
        add_adapter=True, num_adapter_layers=3, adapter_kernel_size=3, adapter_stride=2, output_hidden_size=out
    )
    cfg = SpeechEncoderDecoderConfig.from_encoder_decoder_configs(enc, mbart_config(out))
    cfg.decoder_start_token_id, cfg.pad_token_id, cfg.eos_token_id = 2, 1, 2
    torch.manual_seed(seed)
    return randomize(SpeechEncoderDecoderModel(cfg), seed=seed).eval()


def xlsr_st_model(layout: str = "equal", seed: int = 0) -> SpeechTranslationModel:
    out = LAYOUTS[layout]
    cfg = preset(
        "tiny-st",
        adaptor_proj_dim=0 if out == 32 else out,
        decoder_embed_dim=out,
        decoder_ffn_embed_dim=40,
        vocab_size=VOCAB,
        max_target_positions=64,
        decoder_dropout=0.0,
    )
    encoder = cfg.encoder.replace(dropout=0.0, attention_dropout=0.0, dropout_input=0.0, encoder_layerdrop=0.0)
    cfg = cfg.replace(encoder=encoder)
    torch.manual_seed(seed)
    return randomize(SpeechTranslationModel(cfg), seed=seed).eval()


@pytest.fixture(scope="module", params=list(LAYOUTS))
def hf_pair(request, tmp_path_factory):
    """(transformers model, xlsr model read by load_hf_st_dir from the directory transformers wrote, generation)."""
    hf = hf_st_model(request.param)
    hf.generation_config.forced_bos_token_id = 5
    hf.generation_config.max_length = 12
    path = tmp_path_factory.mktemp("hf") / request.param
    hf.save_pretrained(path)
    model, gen = load_hf_st_dir(path)
    return hf, model.eval(), gen, path


def attention_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    return (~padding_mask(lengths, width)).long()


def tokens(n: int, length: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(3, VOCAB, (n, length), generator=g)
    t[:, 0] = 2  # the decoder starts with </s>, as fairseq and transformers' decoder_start_token_id
    return t


# -- config ---------------------------------------------------------------------------------------------------


def test_presets_round_trip_and_describe_the_published_models():
    for name, width, proj in (("xlsr-300m-st", 1024, 0), ("xlsr-1b-st", 1280, 1024), ("xlsr-2b-st", 1920, 1024)):
        cfg = preset(name)
        assert isinstance(cfg, SpeechTranslationConfig) and cfg.family == "speech_translation"
        assert cfg.encoder.encoder_embed_dim == width and cfg.adaptor_proj_dim == proj and cfg.encoder.head == "none"
        assert (cfg.decoder_layers, cfg.decoder_embed_dim, cfg.decoder_attention_heads, cfg.vocab_size) == (
            12,
            1024,
            16,
            250054,
        )
        assert SpeechTranslationConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert isinstance(preset("tiny"), ModelConfig)
    with pytest.raises(ConfigError, match="decoder_embed_dim"):
        preset("tiny-st", decoder_embed_dim=48)
    with pytest.raises(ConfigError, match="unknown"):
        SpeechTranslationConfig.from_dict({**preset("tiny-st").to_dict(), "nope": 1})


@pytest.mark.parametrize("name", ["xlsr-300m-st", "xlsr-1b-st"])
def test_preset_parameter_count_equals_transformers(name):
    """Reference: transformers' SpeechEncoderDecoderModel built (on the meta device) from the config xlsr writes."""
    from transformers import SpeechEncoderDecoderConfig, SpeechEncoderDecoderModel

    cfg = preset(name)
    config = SpeechEncoderDecoderConfig.from_dict(to_hf_st_config(cfg, GenerationDefaults()))
    with torch.device("meta"):
        hf = SpeechEncoderDecoderModel(config)
        mine = SpeechTranslationModel(cfg)
    assert not hasattr(hf, "enc_to_dec_proj")
    assert mine.num_parameters() == sum(p.numel() for p in hf.parameters())


# -- adapter --------------------------------------------------------------------------------------------------


def test_adapter_matches_transformers_on_single_utterances(hf_pair):
    """Reference: transformers Wav2Vec2Model(add_adapter=True), i.e. the encoder and Wav2Vec2Adapter."""
    hf, model, _, _ = hf_pair
    wave, lengths = waves()
    with torch.no_grad():
        for w, n in zip(wave, lengths):
            ref = hf.encoder(w[None, :n]).last_hidden_state
            mine, padding = model.encode(w[None, :n])
            assert padding is None and mine.shape == ref.shape
            torch.testing.assert_close(mine, ref, atol=ATOL, rtol=0)
            assert int(model.frame_lengths(n[None])) == ref.shape[1]


def _frames_transformers_gets_right(frame_lengths: torch.Tensor, width: int, n_layers: int) -> list[int]:
    """transformers' adapter zeroes no padded frame: an output frame is right only if every input frame its
    kernel (3, stride 2, padding 1) reads is a valid, right frame (or the conv's own left padding)."""
    right = [i < int(frame_lengths) for i in range(width)]
    for _ in range(n_layers):
        T = (len(right) - 1) // 2 + 1
        right = [all(i < 0 or (i < len(right) and right[i]) for i in (2 * j - 1, 2 * j, 2 * j + 1)) for j in range(T)]
    return [j for j, ok in enumerate(right) if ok]


def test_adapter_matches_transformers_on_the_frames_its_batches_get_right(hf_pair):
    """Reference: transformers on a padded batch, on the frames its adapter computes from valid frames only."""
    hf, model, _, _ = hf_pair
    wave, lengths = waves()
    with torch.no_grad():
        out = hf.encoder(wave, attention_mask=attention_mask(lengths, wave.shape[1]))
        mine, padding = model.encode(wave, lengths)
        conv_frames = model.encoder.frame_lengths(lengths)
        width = int(conv_frames.max())
    compared = 0
    for i in range(len(lengths)):
        frames = _frames_transformers_gets_right(conv_frames[i], width, 3)
        torch.testing.assert_close(mine[i, frames], out.last_hidden_state[i, frames], atol=ATOL, rtol=0)
        compared += len(frames)
        n = int((~padding[i]).sum())
        if n < mine.shape[1]:  # transformers' batched output differs from its single one at the last frames
            alone = hf.encoder(wave[i : i + 1, : lengths[i]]).last_hidden_state[0]
            assert (out.last_hidden_state[i, n - 1] - alone[n - 1]).abs().max() > 1e-3
    assert compared > 10


def test_padded_batch_gives_each_utterance_its_own_output():
    """Batch invariance (xlsr's own property; reference: the same utterance alone): encoder + adapter, then the
    decoder's logits."""
    model = xlsr_st_model()
    wave, lengths = waves()
    prev = tokens(len(lengths), 6)
    with torch.no_grad():
        enc, padding = model.encode(wave, lengths)
        logits = model(wave, lengths, prev)
        frames = model.frame_lengths(lengths)
        assert torch.equal(padding, padding_mask(frames, enc.shape[1]))
        assert torch.all(enc[padding] == 0)
        for i, n in enumerate(lengths):
            alone, _ = model.encode(wave[i : i + 1, :n])
            assert alone.shape[1] == frames[i]
            torch.testing.assert_close(enc[i, : frames[i]], alone[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(
                logits[i], model(wave[i : i + 1, :n], None, prev[i : i + 1])[0], atol=1e-5, rtol=0
            )


def test_length_groups_bound_the_padding_and_keep_every_utterance_once():
    rng = np.random.default_rng(0)
    for _ in range(200):
        lengths = rng.integers(400, 240000, size=int(rng.integers(1, 12))).tolist()
        for bound in (0.0, 0.1, 0.5):
            groups = length_groups(lengths, bound)
            assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
            heads = [lengths[g[0]] for g in groups]
            assert heads == sorted(heads, reverse=True) and all(
                lengths[g[0]] == max(lengths[i] for i in g) for g in groups
            )
            for g in groups:
                assert len(g) * lengths[g[0]] <= (1 + bound) * sum(lengths[i] for i in g) + 1e-9
    # 5-15 s clips: padded to 15 s they are 120 s of work for 80 s of audio; grouped, 84 s
    clips = [int(16000 * s) for s in np.linspace(5, 15, 8)]
    groups = length_groups(clips, 0.1)
    assert sum(len(g) * clips[g[0]] for g in groups) < 1.06 * sum(clips) and len(groups) < len(clips)
    assert length_groups([16000] * 5, 0.0) == [[0, 1, 2, 3, 4]]


def test_encoding_by_length_groups_gives_the_padded_batch_encoding():
    """What translate runs: the same decoder memory and padding as one padded batch, for less encoder work."""
    model = xlsr_st_model()
    wave, lengths = waves([0.5, 1.3, 0.6, 1.2, 0.9])
    with torch.no_grad():
        enc, padding = model.encode(wave, lengths)
        assert len(length_groups(lengths.tolist(), 0.1)) > 1  # the test means something
        grouped, grouped_padding = model.encode_by_length(wave, lengths, max_padding=0.1)
        assert torch.equal(grouped_padding, padding) and grouped.shape == enc.shape
        assert torch.all(grouped[padding] == 0)
        torch.testing.assert_close(grouped, enc, atol=1e-5, rtol=0)
        same, same_padding = model.encode_by_length(wave[:1, : lengths[0]], lengths[:1])  # one: as encode
        torch.testing.assert_close(same, enc[:1, : same.shape[1]], atol=1e-5, rtol=0)
        assert same_padding is None


# -- decoder --------------------------------------------------------------------------------------------------


def _memory(B: int = 2, T: int = 9, D: int = 32, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    enc = torch.randn(B, T, D, generator=g)
    enc_lengths = torch.tensor([T, T - 4])[:B]
    return enc, padding_mask(enc_lengths, T)


def _decoder_cfg(**changes) -> SpeechTranslationConfig:
    base = preset("tiny-st", vocab_size=VOCAB, decoder_ffn_embed_dim=40, max_target_positions=64, decoder_dropout=0.0)
    return base.replace(**changes)


def _additive(mask: torch.Tensor) -> torch.Tensor:
    """True = may attend -> transformers' eager additive mask."""
    return torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_decoder_layer_matches_transformers(activation):
    """Reference: transformers MBartDecoderLayer (eager attention, additive masks)."""
    from transformers.models.mbart.modeling_mbart import MBartDecoderLayer

    config = mbart_config(32, activation_function=activation)
    config._attn_implementation = "eager"
    hf = randomize(MBartDecoderLayer(config, layer_idx=0)).eval()
    mine = DecoderLayer(_decoder_cfg(activation_fn=activation)).eval()
    mine.load_state_dict(hf.state_dict())
    enc, enc_pad = _memory()
    L = 7
    x = torch.randn(2, L, 32, generator=torch.Generator().manual_seed(2))
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    with torch.no_grad():
        ref = hf(x, _additive(causal)[None, None], enc, encoder_attention_mask=_additive(~enc_pad[:, None, None, :]))
        out = mine(x, mine.encoder_attn.keys_values(enc), ~enc_pad[:, None, None, :], is_causal=True)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def _decoder_pair(scale_embedding: bool = True):
    """transformers MBartForCausalLM and xlsr's TransformerDecoder with the same random weights."""
    from transformers import MBartForCausalLM

    torch.manual_seed(0)
    hf = randomize(MBartForCausalLM(mbart_config(32, scale_embedding=scale_embedding))).eval()
    mine = TransformerDecoder(_decoder_cfg(scale_embedding=scale_embedding)).eval()
    state = {k.removeprefix("model.decoder."): v for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    mine.load_state_dict(state)
    assert hf.lm_head.weight is hf.model.decoder.embed_tokens.weight  # transformers ties them too
    return hf, mine


@pytest.mark.parametrize("scale_embedding", [True, False])
def test_decoder_matches_mbart_for_causal_lm(scale_embedding):
    """Reference: transformers MBartForCausalLM with encoder states and a padded encoder mask."""
    hf, mine = _decoder_pair(scale_embedding)
    enc, enc_pad = _memory()
    prev = tokens(2, 8)
    with torch.no_grad():
        ref = hf(input_ids=prev, encoder_hidden_states=enc, encoder_attention_mask=(~enc_pad).long()).logits
        out = mine(prev, enc, enc_pad)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)
    assert "output_projection.weight" not in mine.state_dict()


def test_cached_incremental_decoding_equals_transformers_uncached():
    """Reference: transformers MBartForCausalLM on the whole sequence. xlsr decodes it in pieces with a cache: a
    2-token prefix, then 3 tokens at once (a causal mask offset by the cache), then one token at a time, and the
    rows are reordered within their utterance (as a beam search does) half way."""
    hf, mine = _decoder_pair()
    enc, enc_pad = _memory()
    k, L = 3, 10
    prev = tokens(2 * k, L, seed=3)  # (N = B * k, L), utterance-major
    # Beam reorder after step 5: row i continues row order[i] (same utterance); the reference sees the
    # histories that result.
    order = torch.tensor([2, 0, 0, 4, 5, 3])
    history = torch.cat([prev[order, :5], prev[:, 5:]], dim=1)
    with torch.no_grad():
        memory_mask = (~enc_pad).long().repeat_interleave(k, 0)
        ref = hf(
            input_ids=history, encoder_hidden_states=enc.repeat_interleave(k, 0), encoder_attention_mask=memory_mask
        )
        cache = mine.new_cache(enc, enc_pad, beams=k)
        pieces = [mine(prev[:, :2], enc, enc_pad, cache), mine(prev[:, 2:5], enc, enc_pad, cache)]
        cache.reorder(order)
        pieces = [p[order] for p in pieces]
        pieces += [mine(prev[:, t : t + 1], enc, enc_pad, cache) for t in range(5, L)]
    assert cache.length == L
    torch.testing.assert_close(torch.cat(pieces, dim=1), ref.logits, atol=1e-4, rtol=0)


def test_beams_share_cross_attention_exactly():
    """Reference: the same decoder given k expanded copies of the encoder states (what transformers' generate
    does), with and without a cache."""
    _, mine = _decoder_pair()
    enc, enc_pad = _memory()
    k = 4
    prev = tokens(2 * k, 6, seed=5)
    with torch.no_grad():
        expanded = mine(prev, enc.repeat_interleave(k, 0), enc_pad.repeat_interleave(k, 0))
        shared = mine(prev, enc, enc_pad)
        cache = mine.new_cache(enc, enc_pad, beams=k)
        assert cache.memory[0][0].shape[0] == 2  # one copy per utterance, not per beam
        stepwise = torch.cat([mine(prev[:, t : t + 1], enc, enc_pad, cache) for t in range(6)], dim=1)
    torch.testing.assert_close(shared, expanded, atol=1e-5, rtol=0)
    torch.testing.assert_close(stepwise, expanded, atol=1e-5, rtol=0)


def test_cache_drops_finished_utterances():
    """Reference: the uncached decoder on the remaining utterance alone."""
    _, mine = _decoder_pair()
    enc, enc_pad = _memory()
    k = 2
    prev = tokens(2 * k, 5, seed=7)
    with torch.no_grad():
        cache = mine.new_cache(enc, enc_pad, beams=k)
        first = mine(prev[:, :3], enc, enc_pad, cache)
        cache.keep_utterances(torch.tensor([1]))
        rest = mine(prev[2:, 3:], enc[1:], enc_pad[1:], cache)
        ref = mine(prev[2:], enc[1:], enc_pad[1:])
    torch.testing.assert_close(torch.cat([first[2:], rest], dim=1), ref, atol=1e-5, rtol=0)


def test_teacher_forcing_with_left_padded_targets():
    """Reference: transformers MBartForCausalLM with a decoder attention mask (its positions count the pads,
    so the comparison is against the same padded input)."""
    hf, mine = _decoder_pair()
    enc, enc_pad = _memory()
    prev = tokens(2, 7, seed=9)
    target_padding = torch.zeros(2, 7, dtype=torch.bool)
    target_padding[1, :2] = True
    prev[1, :2] = 1
    with torch.no_grad():
        ref = hf(
            input_ids=prev,
            attention_mask=(~target_padding).long(),
            encoder_hidden_states=enc,
            encoder_attention_mask=(~enc_pad).long(),
        ).logits
        out = mine(prev, enc, enc_pad, target_padding=target_padding)
    torch.testing.assert_close(out[~target_padding], ref[~target_padding], atol=1e-4, rtol=0)


# -- the whole model and its directories -----------------------------------------------------------------------


def _logits_per_utterance(hf, wave, lengths, prev):
    with torch.no_grad():
        return [
            hf(input_values=wave[i : i + 1, :n], decoder_input_ids=prev[i : i + 1]).logits[0]
            for i, n in enumerate(lengths)
        ]


def test_transformers_directory_gives_the_same_logits(hf_pair):
    """Reference: transformers SpeechEncoderDecoderModel (the one that wrote the directory), one utterance at a
    time and on an unpadded batch; xlsr's padded batch is compared with transformers' single utterances."""
    hf, model, gen, _ = hf_pair
    wave, lengths = waves()
    prev = tokens(len(lengths), 9)
    refs = _logits_per_utterance(hf, wave, lengths, prev)
    with torch.no_grad():
        batched = model(wave, lengths, prev)
        n = int(lengths.min())
        same_length = hf(input_values=wave[:, :n], decoder_input_ids=prev).logits
        torch.testing.assert_close(model(wave[:, :n], None, prev), same_length, atol=ATOL, rtol=0)
    for i, ref in enumerate(refs):
        torch.testing.assert_close(batched[i], ref, atol=ATOL, rtol=0)
    assert gen == GenerationDefaults(decoder_start_token_id=2, forced_bos_token_id=5, max_length=12, num_beams=1)
    assert model.source.startswith("Hugging Face directory")


def _greedy(model: SpeechTranslationModel, wave, gen: GenerationDefaults, max_new: int) -> list[int]:
    """A plain argmax loop on the uncached forward: decoder start, the forced language token, then argmax
    until </s>; </s> forced at the last step (generation_config's forced_eos_token_id, as mBART and fairseq)."""
    out = [gen.decoder_start_token_id]
    for step in range(max_new):
        with torch.no_grad():
            logits = model(wave, None, torch.tensor([out]))[0, -1]
        if step == 0 and gen.forced_bos_token_id is not None:
            token = gen.forced_bos_token_id
        elif step == max_new - 1:
            token = model.cfg.eos_token_id
        else:
            token = int(logits.argmax())
        out.append(token)
        if token == model.cfg.eos_token_id:
            break
    return out


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_written_directory_loads_in_transformers(layout, tmp_path):
    """Reference: transformers SpeechEncoderDecoderModel.from_pretrained on xlsr's directory: no missing or
    unexpected weights, the same logits, and `generate()`'s greedy tokens equal to xlsr's argmax loop."""
    from transformers import SpeechEncoderDecoderModel

    model = xlsr_st_model(layout)
    gen = GenerationDefaults(decoder_start_token_id=2, forced_bos_token_id=7, max_length=9, num_beams=1)
    save_hf_st_dir(model, tmp_path / "m", gen)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["processor_class"] == "Wav2Vec2Processor"
    assert is_hf_st_config(config) and parse_st_config(config) == model.cfg
    hf, info = SpeechEncoderDecoderModel.from_pretrained(tmp_path / "m", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    hf.eval()
    assert hf.generation_config.forced_bos_token_id == 7 and hf.generation_config.max_length == 9
    wave, lengths = waves()
    prev = tokens(len(lengths), 9)
    refs = _logits_per_utterance(hf, wave, lengths, prev)
    with torch.no_grad():
        batched = model(wave, lengths, prev)
    for i, ref in enumerate(refs):
        torch.testing.assert_close(batched[i], ref, atol=ATOL, rtol=0)
    for i, n in enumerate(lengths):
        with torch.no_grad():
            ref = hf.generate(wave[i : i + 1, :n], num_beams=1, do_sample=False)[0].tolist()
        assert _greedy(model, wave[i : i + 1, :n], gen, max_new=8) == ref
    again, gen_again = load_hf_st_dir(tmp_path / "m")
    assert gen_again == gen
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))


def test_legacy_directory_with_generation_values_in_config_json(hf_pair, tmp_path):
    """Reference: the GenerationConfig transformers 5 builds for a 2021-style directory (no
    generation_config.json: values at the top level of config.json or in its decoder)."""
    from transformers import SpeechEncoderDecoderModel

    _, _, _, path = hf_pair
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "model.safetensors").write_bytes((path / "model.safetensors").read_bytes())
    config = json.loads((path / "config.json").read_text())
    config.update(max_length=40, num_beams=5, decoder_start_token_id=2)
    config["decoder"].update(forced_bos_token_id=9, max_length=99)  # the top level wins over the decoder
    (legacy / "config.json").write_text(json.dumps(config))
    _, gen = load_hf_st_dir(legacy)
    ref = SpeechEncoderDecoderModel.from_pretrained(legacy).generation_config
    assert (ref.decoder_start_token_id, ref.forced_bos_token_id, ref.max_length, ref.num_beams) == (2, 9, 40, 5)
    assert gen == GenerationDefaults(decoder_start_token_id=2, forced_bos_token_id=9, max_length=40, num_beams=5)
    config["target_languages"] = "en_XX"  # a bad value is named with the file it is in: config.json here
    (legacy / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"legacy/config\.json: target_languages must be a list"):
        load_hf_st_dir(legacy)


def test_pytorch_model_bin_directory(hf_pair, tmp_path):
    """Reference: transformers reading the same pytorch_model.bin (a legacy, non-zip pickle, as in the 2021
    directories, holding the tied lm_head too)."""
    from safetensors.torch import load_file
    from transformers import SpeechEncoderDecoderModel

    _, _, _, path = hf_pair
    legacy = tmp_path / "bin"
    legacy.mkdir()
    state = load_file(path / "model.safetensors")
    state["decoder.lm_head.weight"] = state["decoder.model.decoder.embed_tokens.weight"]
    torch.save(state, legacy / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    (legacy / "config.json").write_text((path / "config.json").read_text())
    model, _ = load_hf_st_dir(legacy)
    hf = SpeechEncoderDecoderModel.from_pretrained(legacy).eval()
    wave, lengths = waves(SECONDS[:1])
    prev = tokens(1, 5)
    with torch.no_grad():
        torch.testing.assert_close(
            model(wave, None, prev), hf(input_values=wave, decoder_input_ids=prev).logits, atol=ATOL, rtol=0
        )
    # an untied output projection is refused, not silently dropped
    state["decoder.lm_head.weight"] = state["decoder.lm_head.weight"] + 1
    torch.save(state, legacy / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="lm_head"):
        load_hf_st_dir(legacy)


def test_directories_xlsr_cannot_read_raise_checkpoint_errors(hf_pair, tmp_path):
    _, _, _, path = hf_pair
    config = json.loads((path / "config.json").read_text())
    bad = json.loads(json.dumps(config))
    bad["decoder"]["d_model"] = 48  # transformers would add enc_to_dec_proj
    with pytest.raises(CheckpointError, match="enc_to_dec_proj"):
        parse_st_config(bad)
    bad = json.loads(json.dumps(config))
    bad["decoder"]["model_type"] = "bart"
    with pytest.raises(CheckpointError, match="mbart"):
        parse_st_config(bad)
    with pytest.raises(CheckpointError, match="not a SpeechEncoderDecoderModel"):
        parse_st_config(config["encoder"])
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps(config))
    from safetensors.torch import load_file, save_file

    state = load_file(path / "model.safetensors")
    state["decoder.model.decoder.extra.weight"] = torch.zeros(1)
    save_file(state, broken / "model.safetensors")
    with pytest.raises(CheckpointError, match="extra"):
        load_hf_st_dir(broken)


# -- training-side API ------------------------------------------------------------------------------------------


def test_from_state_dict_and_training_helpers():
    model = xlsr_st_model()
    state = model.state_dict()
    assert not any("output_projection" in k for k in state)
    rebuilt = SpeechTranslationModel.from_state_dict(
        model.cfg, {k: v for k, v in state.items() if k != "encoder.mask_emb"}
    )
    assert rebuilt.encoder.mask_emb.device.type == "cpu"
    with pytest.raises(ValueError, match="missing weights"):
        SpeechTranslationModel.from_state_dict(model.cfg, {k: v for k, v in state.items() if "fc1" not in k})
    with pytest.raises(ValueError, match="unexpected"):
        SpeechTranslationModel.from_state_dict(
            model.cfg, {**state, "decoder.output_projection.weight": state["decoder.embed_tokens.weight"]}
        )
    units = model.fsdp_units()
    assert len(units) == model.cfg.encoder.encoder_layers + model.cfg.decoder_layers
    # gradient checkpointing changes memory, not gradients (reference: the same model without it)
    wave, lengths = waves(SECONDS[:2])
    prev = tokens(2, 5)
    grads = []
    for enabled in (False, True):
        model.zero_grad()
        model.train().set_gradient_checkpointing(enabled)
        model(wave, lengths, prev).square().mean().backward()
        grads.append(model.decoder.layers[0].fc1.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=0)


LOAD_PEAK = """
import sys
from xlsr.checkpoints.hf_st import load_hf_st_dir

def rss(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key)) * 1024

load_hf_st_dir(sys.argv[2])  # imports and one-time costs first
base = rss("VmRSS:")
model, _ = load_hf_st_dir(sys.argv[1])
print(sum(float(p.detach().sum()) for p in model.parameters()))  # every page of every weight read at least once
print(rss("VmHWM:") - base)
"""


def test_loading_holds_one_copy_of_the_weights(tmp_path):
    """Reference: the size of model.safetensors. Loading a model and reading every weight grows the process's
    peak RSS by less than 1.3x the file (the weights are memory-mapped or read once; two copies would be 2x)."""
    import subprocess
    import sys

    cfg = preset("tiny-st", vocab_size=100_000, decoder_embed_dim=128, adaptor_proj_dim=128, decoder_ffn_embed_dim=256)
    with torch.device("meta"):
        model = SpeechTranslationModel(cfg)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    save_hf_st_dir(model, tmp_path / "big")
    save_hf_st_dir(xlsr_st_model(), tmp_path / "small")
    del model
    size = (tmp_path / "big" / "model.safetensors").stat().st_size
    args = [sys.executable, "-c", LOAD_PEAK, str(tmp_path / "big"), str(tmp_path / "small")]
    out = subprocess.run(args, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    peak = int(out.stdout.split()[-1])
    assert size / 2 < peak < 1.3 * size, (peak, size)
