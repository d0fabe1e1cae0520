"""The network against transformers (reference: transformers 5.23 `models/wav2vec2`), submodule by
submodule and whole, both layouts, with and without padding, on random weights."""

from __future__ import annotations

import pytest
import torch
from conftest import hf_config, randomize, speechlike

from xlsr.audio import normalize, pad_batch
from xlsr.checkpoints import load_model
from xlsr.config import ModelConfig, preset
from xlsr.models import Wav2Vec2Model
from xlsr.models.padding import padding_mask

ATOL = 2e-5


def hf_pair(cls_name: str, layout: str, tmp_path, seed: int = 0, **changes):
    """A randomised transformers model of class `cls_name` and the same weights loaded by xlsr."""
    import transformers

    torch.manual_seed(seed)
    hf = getattr(transformers, cls_name)(hf_config(layout, **changes))
    randomize(hf, seed).eval()
    hf.save_pretrained(tmp_path / "hf")
    return hf, load_model(tmp_path / "hf")


@pytest.fixture
def audio():
    """(2, S) batch: 1.3 s and 0.9 s of speech-like audio, normalised, right-padded."""
    a, b = speechlike(1.3, seed=1), speechlike(0.9, seed=2)
    wave, lengths = pad_batch([a, b])
    return normalize(wave, lengths), lengths


@pytest.mark.parametrize("layout", ["layer_norm", "group_norm"])
def test_submodules_match_transformers(layout, tmp_path, audio):
    hf, ours = hf_pair("Wav2Vec2ForPreTraining", layout, tmp_path)
    wave = audio[0][:1]
    with torch.no_grad():
        # feature encoder
        ref = hf.wav2vec2.feature_extractor(wave).transpose(1, 2)
        feats, _ = ours.feature_encoder(wave)
        torch.testing.assert_close(feats, ref, atol=ATOL, rtol=0)
        # feature projection (layer norm + linear); both outputs
        ref_h, ref_norm = hf.wav2vec2.feature_projection(ref)
        h, normed = ours.feature_projection(feats)
        torch.testing.assert_close(h, ref_h, atol=ATOL, rtol=0)
        torch.testing.assert_close(normed, ref_norm, atol=ATOL, rtol=0)
        # convolutional relative positional embedding
        torch.testing.assert_close(
            ours.encoder.pos_conv(h), hf.wav2vec2.encoder.pos_conv_embed(ref_h), atol=ATOL, rtol=0
        )
        # one Transformer block
        for i in range(2):
            torch.testing.assert_close(
                ours.encoder.layers[i](h), hf.wav2vec2.encoder.layers[i](ref_h), atol=ATOL, rtol=0
            )
        # quantizer (eval: argmax codes) and the two projections into the contrastive space
        q_ref, _ = hf.quantizer(ref_norm)
        q = ours.head.quantizer(normed.reshape(-1, normed.shape[-1])).quantized.view_as(q_ref)
        torch.testing.assert_close(q, q_ref, atol=ATOL, rtol=0)
        torch.testing.assert_close(ours.head.project_q(q), hf.project_q(q_ref), atol=ATOL, rtol=0)
        torch.testing.assert_close(ours.head.final_proj(h), hf.project_hid(ref_h), atol=ATOL, rtol=0)


@pytest.mark.parametrize("layout", ["layer_norm", "group_norm"])
def test_whole_model_and_hidden_states_match_transformers(layout, tmp_path, audio):
    hf, ours = hf_pair("Wav2Vec2Model", layout, tmp_path)
    wave = audio[0][:1]
    with torch.no_grad():
        ref = hf(wave, output_hidden_states=True)
        out = ours.encode(wave, return_hidden_states=True)
    torch.testing.assert_close(out.x, ref.last_hidden_state, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.features, ref.extract_features, atol=ATOL, rtol=0)
    assert len(out.hidden_states) == len(ref.hidden_states) == 3
    for mine, theirs in zip(out.hidden_states, ref.hidden_states):
        torch.testing.assert_close(mine, theirs, atol=ATOL, rtol=0)
    # stopping early gives block K's output (hidden_states[K]) without running the rest
    with torch.no_grad():
        for k in range(3):
            torch.testing.assert_close(ours.encode(wave, num_layers=k).x, ref.hidden_states[k], atol=ATOL, rtol=0)


@pytest.mark.parametrize("layout", ["layer_norm", "group_norm"])
def test_padded_batch_matches_transformers_attention_mask(layout, tmp_path, audio):
    hf, ours = hf_pair("Wav2Vec2Model", layout, tmp_path)
    wave, lengths = audio
    attention_mask = (~padding_mask(lengths, wave.shape[1])).long()
    with torch.no_grad():
        ref = hf(wave, attention_mask=attention_mask).last_hidden_state
        out = ours.encode(wave, lengths)
    frames = out.lengths
    assert frames.tolist() == hf._get_feat_extract_output_lengths(lengths).tolist()
    for i, n in enumerate(frames.tolist()):
        torch.testing.assert_close(out.x[i, :n], ref[i, :n], atol=ATOL, rtol=0)


def test_layer_norm_layout_padded_batch_equals_each_utterance_alone(tmp_path):
    torch.manual_seed(0)
    model = randomize(Wav2Vec2Model(preset("tiny", dropout=0.0, attention_dropout=0.0))).eval()
    waves = [speechlike(s, seed=i) for i, s in enumerate((1.7, 0.6, 1.1))]
    batch, lengths = pad_batch(waves)
    batch = normalize(batch, lengths)
    with torch.no_grad():
        together = model.encode(batch, lengths)
        for i, w in enumerate(waves):
            alone = model.encode(normalize(torch.from_numpy(w)[None])).x[0]
            n = alone.shape[0]
            assert together.lengths[i] == n
            torch.testing.assert_close(together.x[i, :n], alone, atol=1e-5, rtol=0)
    assert together.padding_mask is not None and together.padding_mask.sum() > 0


@pytest.mark.parametrize("layout", ["layer_norm", "group_norm"])
def test_ctc_logits_match_transformers(layout, tmp_path, audio):
    hf, ours = hf_pair("Wav2Vec2ForCTC", layout, tmp_path)
    assert ours.cfg.head == "ctc" and ours.cfg.vocab_size == 12
    wave, lengths = audio
    mask = (~padding_mask(lengths, wave.shape[1])).long()
    with torch.no_grad():
        ref = hf(wave, attention_mask=mask).logits
        logits = ours(wave, lengths)
    for i, n in enumerate(ours.frame_lengths(lengths).tolist()):
        torch.testing.assert_close(logits[i, :n], ref[i, :n], atol=ATOL, rtol=0)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("layout", ["layer_norm", "group_norm"])
def test_classification_logits_match_transformers(layout, weighted, tmp_path, audio):
    labels = {0: "fr", 1: "de", 2: "sw"}
    hf, ours = hf_pair(
        "Wav2Vec2ForSequenceClassification",
        layout,
        tmp_path,
        num_labels=3,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
        classifier_proj_size=20,
        use_weighted_layer_sum=weighted,
    )
    assert ours.cfg.labels == ("fr", "de", "sw")
    wave, lengths = audio
    mask = (~padding_mask(lengths, wave.shape[1])).long()
    with torch.no_grad():
        torch.testing.assert_close(ours(wave, lengths), hf(wave, attention_mask=mask).logits, atol=ATOL, rtol=0)
        torch.testing.assert_close(ours(wave[:1]), hf(wave[:1]).logits, atol=ATOL, rtol=0)


def test_classification_pooling_ignores_padding():
    cfg = preset("tiny", head="classification", labels=("a", "b"), dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(0)
    model = randomize(Wav2Vec2Model(cfg)).eval()
    waves = [speechlike(1.2, seed=3), speechlike(0.5, seed=4)]
    batch, lengths = pad_batch(waves)
    with torch.no_grad():
        together = model(normalize(batch, lengths), lengths)
        alone = torch.cat([model(normalize(torch.from_numpy(w)[None])) for w in waves])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)


def test_presets_have_the_published_sizes_and_transformers_parameter_counts():
    from transformers import Wav2Vec2Config
    from transformers import Wav2Vec2Model as HFModel

    from xlsr.checkpoints.hf import to_hf_config

    expected = {
        "xlsr-300m": (24, 1024, 4096, 16),
        "xlsr-1b": (48, 1280, 5120, 16),
        "xlsr-2b": (48, 1920, 7680, 16),
        "wav2vec2-base": (12, 768, 3072, 12),
    }
    for name, (layers, dim, ffn, heads) in expected.items():
        cfg = preset(name, head="none")
        assert (cfg.encoder_layers, cfg.encoder_embed_dim, cfg.encoder_ffn_embed_dim, cfg.encoder_attention_heads) == (
            layers,
            dim,
            ffn,
            heads,
        )
        assert cfg.frame_stride == 320 and cfg.receptive_field == 400
        assert (cfg.conv_pos, cfg.conv_pos_groups) == (128, 16)
        with torch.device("meta"):
            ours = Wav2Vec2Model(cfg).num_parameters()
            theirs = sum(p.numel() for p in HFModel(Wav2Vec2Config(**to_hf_config(cfg))).parameters())
        assert ours == theirs, name
    # published totals, in millions (XLS-R paper table 1: 0.3B, 1B, 2B; wav2vec 2.0 base 95M)
    with torch.device("meta"):
        sizes = {n: Wav2Vec2Model(preset(n, head="none")).num_parameters() / 1e6 for n in expected}
    assert 300 < sizes["xlsr-300m"] < 330 and 950 < sizes["xlsr-1b"] < 980 and 2100 < sizes["xlsr-2b"] < 2200
    assert 90 < sizes["wav2vec2-base"] < 100


def test_training_features_run_and_change_outputs():
    """Dropout, layer drop and gradient checkpointing: training mode differs from eval; checkpointing
    gives the same gradients as plain backprop."""
    cfg = preset("tiny", encoder_layerdrop=0.5, dropout=0.1)
    torch.manual_seed(0)
    model = Wav2Vec2Model(cfg)
    wave = normalize(torch.from_numpy(speechlike(1.0))[None])
    model.eval()
    with torch.no_grad():
        a, b = model.encode(wave).x, model.encode(wave).x
    torch.testing.assert_close(a, b)  # eval is deterministic
    model.train()
    with torch.no_grad():
        outs = {tuple(model.encode(wave).x.flatten()[:4].tolist()) for _ in range(8)}
    assert len(outs) > 1

    def grads(checkpointing: bool) -> list[torch.Tensor]:
        torch.manual_seed(1)
        m = Wav2Vec2Model(preset("tiny", dropout=0.0, attention_dropout=0.0)).train()
        m.set_gradient_checkpointing(checkpointing)
        m.encode(wave).x.pow(2).mean().backward()
        return [p.grad.clone() for p in m.parameters() if p.grad is not None]

    for g1, g2 in zip(grads(False), grads(True), strict=True):
        torch.testing.assert_close(g1, g2, atol=1e-6, rtol=1e-4)


def test_feature_grad_mult_scales_and_zero_freezes():
    wave = normalize(torch.from_numpy(speechlike(0.8))[None])

    def conv_grad(mult: float) -> torch.Tensor | None:
        torch.manual_seed(0)
        m = Wav2Vec2Model(preset("tiny", dropout=0.0, attention_dropout=0.0)).train()
        m.encode(wave, feature_grad_mult=mult).x.sum().backward()
        return m.feature_encoder.conv_layers[0].conv.weight.grad

    full, tenth = conv_grad(1.0), conv_grad(0.1)
    torch.testing.assert_close(tenth, full * 0.1, rtol=1e-4, atol=1e-7)
    assert conv_grad(0.0) is None


def test_config_round_trips_and_rejects_unknown_keys():
    cfg = preset("tiny", head="classification", labels=("x", "y"))
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    from xlsr.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown model config keys: bogus"):
        ModelConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("xlsr-3b")


@pytest.mark.parametrize("kernel, stride, c_in", [(10, 5, 1), (3, 2, 8), (2, 2, 8), (4, 3, 5), (2, 3, 4), (5, 2, 3)])
@pytest.mark.parametrize("path", ["tap groups", "im2col"])
def test_channels_last_conv_equals_conv1d_with_gradients(kernel, stride, c_in, path, monkeypatch):
    from xlsr.models import feature_encoder
    from xlsr.models.feature_encoder import strided_conv

    monkeypatch.setattr(feature_encoder, "NARROW_INPUT", 0 if path == "tap groups" else 10**9)
    monkeypatch.setattr(feature_encoder, "WEIGHT_GRAD_CHUNK", 7)  # im2col weight gradient: chunks + a remainder
    torch.manual_seed(0)
    x = torch.randn(2, 57, c_in)
    weight, bias = torch.randn(6, c_in, kernel, requires_grad=True), torch.randn(6, requires_grad=True)
    ref = torch.nn.functional.conv1d(x.transpose(1, 2), weight, bias, stride=stride).transpose(1, 2)
    torch.testing.assert_close(strided_conv(x, weight, bias, stride), ref)  # im2col, weights need grads
    monkeypatch.setattr(feature_encoder, "IM2COL_CHUNK", 4)  # inference: chunked im2col, several chunks
    with torch.no_grad():
        torch.testing.assert_close(strided_conv(x, weight, bias, stride), ref)
        torch.testing.assert_close(strided_conv(x, weight, None, stride), ref - bias)
    g_ref = torch.autograd.grad(ref.pow(2).sum(), (weight, bias))
    xg = x.clone().requires_grad_(True)
    ours = strided_conv(xg, weight, bias, stride)
    torch.testing.assert_close(ours, ref)
    g_ours = torch.autograd.grad(ours.pow(2).sum(), (weight, bias, xg))
    x_ref = x.transpose(1, 2).clone().requires_grad_(True)
    gx_ref = torch.autograd.grad(torch.nn.functional.conv1d(x_ref, weight, bias, stride=stride).pow(2).sum(), x_ref)[0]
    for a, b in zip(g_ours, (*g_ref, gx_ref.transpose(1, 2))):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    g_w = torch.autograd.grad(strided_conv(x, weight, None, stride).pow(2).sum(), weight)[0]  # no bias, no input grad
    ref = torch.nn.functional.conv1d(x.transpose(1, 2), weight, None, stride=stride).transpose(1, 2)
    torch.testing.assert_close(g_w, torch.autograd.grad(ref.pow(2).sum(), weight)[0], atol=1e-4, rtol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision: computed in bf16, like F.conv1d
        ours, ref = (
            strided_conv(xg, weight, bias, stride),
            torch.nn.functional.conv1d(xg.mT, weight, bias, stride=stride),
        )
        weights_only = strided_conv(x, weight, bias, stride)
    assert ours.dtype == weights_only.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(ours, ref.mT, atol=0.1, rtol=0.02)
    torch.testing.assert_close(weights_only, ref.mT, atol=0.1, rtol=0.02)
    grads = torch.autograd.grad(ours.float().pow(2).sum(), (weight, bias, xg))
    assert [g.dtype for g in grads] == [torch.float32] * 3


def test_from_state_dict_refuses_a_wrongly_shaped_weight():
    """A checkpoint whose weight has the wrong shape is a ValueError (a CheckpointError for the user), not a
    RuntimeError from deep inside torch; both families build through models/weights.py."""
    from xlsr.config import preset

    cfg = preset("tiny")
    state = Wav2Vec2Model(cfg).state_dict()
    state["encoder.layers.0.fc1.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="fc1.weight"):
        Wav2Vec2Model.from_state_dict(cfg, state)
