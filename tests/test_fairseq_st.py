"""xlsr/checkpoints/fairseq_st.py: fairseq xm_transformer speech-translation checkpoints.

Reference: the genuine fairseq 0.12 checkpoint and fairseq's own outputs in tests/fixtures/fairseq_st (its
README records how each was made): `Wav2VecEncoderWithAdaptor` outputs alone and in padded batches,
`TransformerDecoder` teacher-forced logits, a plain greedy loop on the model, and `SequenceGenerator` output.
"""

from __future__ import annotations

import builtins
import dataclasses
import functools
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xlsr.audio import normalize, pad_batch
from xlsr.checkpoints.fairseq import model_options, parse_config
from xlsr.checkpoints.fairseq_st import is_fairseq_st, load_fairseq_st
from xlsr.checkpoints.io import safe_torch_load
from xlsr.decoding.generate import DecoderInference, DecodingOptions, generate
from xlsr.errors import CheckpointError

ATOL = 1e-4
# The encoder's shape: what a fairseq wav2vec2 ModelConfig says about the network (not its regularisation).
SHAPE_FIELDS = (
    "conv_feature_layers",
    "extractor_mode",
    "conv_bias",
    "encoder_layers",
    "encoder_embed_dim",
    "encoder_ffn_embed_dim",
    "encoder_attention_heads",
    "layer_norm_first",
    "conv_pos",
    "conv_pos_groups",
    "post_extract_proj",
    "activation_fn",
)


@functools.cache
def _load(path: Path):
    net, tokenizer, pre = load_fairseq_st(path)
    return net.eval(), tokenizer, pre


def _st(d: Path):
    return _load(d / "st.pt")


def _ckpt(d: Path) -> dict:
    return safe_torch_load(d / "st.pt")


def _batch(d: Path, *names: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The README's input: each waveform layer-normalised over its own samples (eps 1e-5), right-padded with 0."""
    _, _, pre = _st(d)
    waves, lengths = pad_batch([np.load(d / f"wave_{n}.npy") for n in names])
    return normalize(waves, lengths, pre.normalize_eps), lengths


def _ref(d: Path, name: str) -> torch.Tensor:
    return torch.from_numpy(np.load(d / f"{name}.npy"))


def _one_line(e: pytest.ExceptionInfo) -> str:
    message = str(e.value)
    assert "\n" not in message
    return message


def test_xm_transformer_checkpoints_are_recognised(st_fixtures, fixtures_dir):
    ckpt = _ckpt(st_fixtures)
    assert is_fairseq_st(ckpt)
    assert not is_fairseq_st(safe_torch_load(st_fixtures / "pretrain.pt"))
    assert not is_fairseq_st(safe_torch_load(fixtures_dir / "ctc.pt"))  # wav2vec_ctc: w2v_encoder.* without a decoder
    anonymous = {"model": ckpt["model"]}  # no options at all: the weights' layout says it
    assert is_fairseq_st(anonymous)
    assert not is_fairseq_st({"model": {"decoder.embed_tokens.weight": torch.zeros(1)}})


def test_encoder_shape_comes_from_the_weights_and_equals_the_pretraining_config(st_fixtures):
    # reference: the wav2vec2 options fairseq stored in pretrain.pt, which st.pt only names by a cluster path
    net, _, _ = _st(st_fixtures)
    pretrain = parse_config(model_options(safe_torch_load(st_fixtures / "pretrain.pt"))[0])
    for field in SHAPE_FIELDS:
        assert getattr(net.cfg.encoder, field) == getattr(pretrain, field), field
    info = json.loads((st_fixtures / "info.json").read_text())
    cfg = net.cfg
    assert (cfg.adaptor_n_layers, cfg.adaptor_kernel_size, cfg.adaptor_stride, cfg.adaptor_proj_dim) == (2, 3, 2, 0)
    assert (cfg.decoder_layers, cfg.decoder_embed_dim, cfg.decoder_ffn_embed_dim) == (2, 48, 96)
    assert (cfg.decoder_attention_heads, cfg.vocab_size, cfg.max_target_positions) == (4, info["dict_len"], 1024)
    assert (cfg.activation_fn, cfg.scale_embedding, cfg.layernorm_embedding) == ("relu", True, True)


def test_the_cluster_paths_are_never_touched(st_fixtures, monkeypatch):
    model = _ckpt(st_fixtures)["cfg"]["model"]
    cluster = (model.w2v_path, model.load_pretrained_decoder_from)
    assert all(p.startswith("/checkpoint/") for p in cluster) and model.w2v_args is None
    touched = []

    def spy(fn):
        def wrapper(file, *args, **kwargs):
            touched.append(os.fspath(file) if isinstance(file, (str, os.PathLike)) else "")
            return fn(file, *args, **kwargs)

        return wrapper

    for module, name in [(os, "stat"), (os, "lstat"), (os, "open"), (os, "listdir"), (os, "scandir")]:
        monkeypatch.setattr(module, name, spy(getattr(module, name)))
    monkeypatch.setattr(builtins, "open", spy(builtins.open))
    monkeypatch.setattr(io, "open", spy(io.open))
    load_fairseq_st(st_fixtures / "st.pt")
    assert any(p.endswith("st.pt") for p in touched)  # the spies see the files that are read
    assert not [p for p in touched if p.startswith("/checkpoint")]


@pytest.mark.parametrize("name", ["a", "b", "c"])
def test_encoder_output_alone_matches_fairseq(st_fixtures, name):
    net, _, _ = _st(st_fixtures)
    waves, _ = _batch(st_fixtures, name)
    with torch.no_grad():
        x, padding = net.encode(waves, None)
    assert padding is None
    torch.testing.assert_close(x[0], _ref(st_fixtures, f"enc_{name}"), atol=ATOL, rtol=0)


def test_padded_batch_matches_fairseq_and_each_utterance_alone(st_fixtures):
    net, _, _ = _st(st_fixtures)
    waves, lengths = _batch(st_fixtures, "a", "b")
    with torch.no_grad():
        x, padding = net.encode(waves, lengths)
    ref_padding = _ref(st_fixtures, "enc_batch_padding")
    assert torch.equal(padding, ref_padding)
    # wave_b's frame counts never leave fairseq's adaptor an unzeroed padded frame: it is right everywhere
    torch.testing.assert_close(x, _ref(st_fixtures, "enc_batch"), atol=ATOL, rtol=0)
    assert not x[padding].any()  # padded frames exactly 0, as fairseq's
    torch.testing.assert_close(x[1, ~padding[1]], _ref(st_fixtures, "enc_b"), atol=ATOL, rtol=0)


def test_odd_intermediate_lengths_give_the_single_utterance_output_where_fairseq_does_not(st_fixtures):
    net, _, _ = _st(st_fixtures)
    waves, lengths = _batch(st_fixtures, "a", "c")
    with torch.no_grad():
        x, padding = net.encode(waves, lengths)
    assert torch.equal(padding, _ref(st_fixtures, "enc_batch_ac_padding"))
    fairseq, alone = _ref(st_fixtures, "enc_batch_ac"), _ref(st_fixtures, "enc_c")
    n = int((~padding[1]).sum())
    assert n == len(alone) == 14
    torch.testing.assert_close(x[0], fairseq[0], atol=ATOL, rtol=0)
    # fairseq's batch is right on every frame but the last valid one (its second conv reads an unzeroed
    # padded frame there); xlsr zeroes padding around every conv, so it equals wave_c alone on all of them
    torch.testing.assert_close(x[1, : n - 1], fairseq[1, : n - 1], atol=ATOL, rtol=0)
    assert (fairseq[1, n - 1] - alone[n - 1]).abs().max() > 0.1
    torch.testing.assert_close(x[1, :n], alone, atol=ATOL, rtol=0)
    assert not x[padding].any()


def test_teacher_forced_logits_match_fairseq(st_fixtures):
    net, _, _ = _st(st_fixtures)
    prefix = _ref(st_fixtures, "prefix_tokens")
    waves, _ = _batch(st_fixtures, "a")
    with torch.no_grad():
        logits = net(waves, None, prefix[None])
    torch.testing.assert_close(logits[0], _ref(st_fixtures, "logits_a"), atol=ATOL, rtol=0)
    waves, lengths = _batch(st_fixtures, "a", "b")
    with torch.no_grad():
        logits = net(waves, lengths, prefix[None].expand(2, -1))
    torch.testing.assert_close(logits, _ref(st_fixtures, "logits_batch"), atol=ATOL, rtol=0)


def test_a_plain_greedy_loop_on_the_model_gives_fairseqs_tokens(st_fixtures):
    net, tokenizer, _ = _st(st_fixtures)
    ref = json.loads((st_fixtures / "generate.json").read_text())
    lang = tokenizer.lang_id("en")
    assert lang == ref["lang_tag_id"] == tokenizer.lang_id("en_XX")
    for name, expected in zip("ab", ref["greedy_loop"]):
        waves, _ = _batch(st_fixtures, name)
        tokens = [tokenizer.eos_id, lang]
        with torch.no_grad():
            encoder_out, padding = net.encode(waves, None)
            for _ in range(10):
                logits = net.decoder(torch.tensor([tokens]), encoder_out, padding)
                tokens.append(int(logits[0, -1].argmax()))
                if tokens[-1] == tokenizer.eos_id:
                    break
        assert tokens == expected
    texts = [tokenizer.decode(t[2:], keep_lang_tags=True) for t in ref["greedy_loop"]]
    assert texts == ref["greedy_loop_text"]


@pytest.mark.parametrize("beam", [1, 4])
def test_beam_search_returns_fairseqs_hypotheses_and_scores(st_fixtures, beam):
    # reference: fairseq's SequenceGenerator on the padded batch, max_len_a 0, max_len_b 10, lenpen 1, --prefix-size 1
    net, tokenizer, _ = _st(st_fixtures)
    ref = json.loads((st_fixtures / "generate.json").read_text())
    waves, lengths = _batch(st_fixtures, "a", "b")
    options = DecodingOptions(
        beam_size=beam, max_len_a=0, max_len_b=10, min_len=1, length_penalty=1.0, prefix_tokens=(ref["lang_tag_id"],)
    )
    with torch.no_grad():
        encoder_out, padding = net.encode(waves, lengths)
        inference = DecoderInference(net.decoder, encoder_out, padding, max_positions=net.cfg.max_target_positions)
        best = [hypotheses[0] for hypotheses in generate(inference, options)]
    assert [h.tokens for h in best] == ref[f"fairseq_generator_beam{beam}"]
    scores = torch.tensor([h.score for h in best], dtype=torch.float64)
    torch.testing.assert_close(
        scores, torch.tensor(ref[f"fairseq_generator_beam{beam}_score"], dtype=torch.float64), atol=ATOL, rtol=0
    )
    if beam == 1:  # the text without the forced language tag and </s>
        texts = [tokenizer.decode(h.tokens[1:-1], keep_lang_tags=True) for h in best]
        assert texts == ref["fairseq_generator_beam1_text"]


def test_tokenizer_and_preprocessing_are_fairseqs(st_fixtures):
    _, tokenizer, pre = _st(st_fixtures)
    ref = json.loads((st_fixtures / "generate.json").read_text())
    assert tokenizer.encode(ref["prefix_text"]) == ref["prefix_tokens"][2:]
    assert len(tokenizer) == 118 and tokenizer.tokens[ref["lang_tag_id"]] == ref["lang_tag"]
    assert pre.do_normalize and pre.normalize_eps == 1e-5
    # reference: fairseq's S2T dataset with standardize_audio, F.layer_norm(w, w.shape)
    wave = torch.from_numpy(np.load(st_fixtures / "wave_b.npy"))
    torch.testing.assert_close(
        normalize(wave[None], None, pre.normalize_eps)[0], F.layer_norm(wave, wave.shape), atol=1e-6, rtol=0
    )


def _copy(src: Path, dst: Path, *names: str) -> Path:
    dst.mkdir(exist_ok=True)
    for name in names:
        shutil.copy(src / name, dst / name)
    return dst / "st.pt"


def test_target_files_come_from_the_data_config_or_the_flags(st_fixtures, tmp_path):
    path = _copy(st_fixtures, tmp_path / "renamed", "st.pt")
    shutil.copy(st_fixtures / "dict.txt", path.parent / "target.dict")
    shutil.copy(st_fixtures / "spm.model", path.parent / "target.spm")
    # the data config's names; an absolute one (a path on the training machine) is looked for beside the checkpoint
    (path.parent / "config.yaml").write_text(
        "bpe_tokenizer:\n  bpe: sentencepiece\n  sentencepiece_model: /checkpoint/data/target.spm\n"
        "vocab_filename: target.dict\nstandardize_audio: true\n"
    )
    _, tokenizer, pre = load_fairseq_st(path)
    assert tokenizer.tokens == _st(st_fixtures)[1].tokens and pre.do_normalize
    bare = _copy(st_fixtures, tmp_path / "bare", "st.pt")
    _, tokenizer, pre = load_fairseq_st(bare, dict_path=st_fixtures / "dict.txt", spm_path=st_fixtures / "spm.model")
    assert len(tokenizer) == 118
    assert pre.do_normalize and pre.normalize_eps == 1e-5  # without a data config: cfg.model.normalize
    (bare.parent / "config.yaml").write_text("vocab_filename: dict.txt\n")  # fairseq: standardize_audio is False
    _, _, pre = load_fairseq_st(bare, spm_path=st_fixtures / "spm.model", dict_path=st_fixtures / "dict.txt")
    assert not pre.do_normalize


def test_missing_or_wrong_target_files_are_one_line_errors(st_fixtures, tmp_path):
    path = _copy(st_fixtures, tmp_path, "st.pt")
    with pytest.raises(CheckpointError) as e:
        load_fairseq_st(path)
    assert "dict.txt" in _one_line(e) and "--dict" in str(e.value)
    shutil.copy(st_fixtures / "dict.txt", tmp_path / "dict.txt")
    with pytest.raises(CheckpointError) as e:
        load_fairseq_st(path)
    assert "sentencepiece.bpe.model" in _one_line(e) and "--spm" in str(e.value)
    with pytest.raises(CheckpointError) as e:
        load_fairseq_st(path, spm_path=tmp_path / "nowhere.model")
    assert "nowhere.model" in _one_line(e) and "--spm" in str(e.value)
    short = tmp_path / "short.txt"
    short.write_text("".join((st_fixtures / "dict.txt").read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(CheckpointError) as e:
        load_fairseq_st(path, dict_path=short, spm_path=st_fixtures / "spm.model")
    assert "117 symbols" in _one_line(e) and "118" in str(e.value)


def _edited(st_fixtures, edit) -> dict:
    ckpt = _ckpt(st_fixtures)
    ckpt["model"] = dict(ckpt["model"])
    edit(ckpt["model"])
    return ckpt


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.update({"encoder.extra.weight": torch.zeros(1)}), "unknown weight 'encoder.extra.weight'"),
        (lambda m: m.update({"encoder.adaptor.proj.0.weight": torch.zeros(1)}), "unknown weight"),
        (lambda m: m.update({"encoder.w2v_encoder.w2v_model.quantizer.vars": torch.zeros(1)}), "pretraining module"),
        (lambda m: m.update({"decoder.layers.0.extra.weight": torch.zeros(1)}), "decoder.layers.0.extra.weight"),
        (lambda m: m.pop("decoder.layers.1.fc2.bias"), "missing weights: ['decoder.layers.1.fc2.bias']"),
        (lambda m: m.pop("encoder.adaptor.layers.1.bias"), "adapter.layers.1.bias"),
        (lambda m: m.update({"decoder.output_projection.weight": torch.zeros(118, 48)}), "xlsr ties them"),
        (lambda m: m.update({"encoder.w2v_encoder.proj.weight": torch.zeros(48, 48)}), "w2v_proj_ln"),
    ],
)
def test_unknown_and_missing_weights_are_one_line_errors(st_fixtures, edit, message):
    with pytest.raises(CheckpointError) as e:
        load_fairseq_st(st_fixtures / "st.pt", _edited(st_fixtures, edit))
    assert message in _one_line(e) and "st.pt" in str(e.value)


def test_the_projected_layout_maps_proj_and_its_layer_norm_to_the_adapter(st_fixtures):
    """The 1B/2B layout: `w2v_encoder.proj` + `w2v_proj_ln` before the adaptor convs. Reference: fairseq's
    Wav2VecEncoderWithAdaptor.forward order (proj, then w2v_proj_ln, then Conv1d + GLU per layer), with torch ops."""
    g = torch.Generator().manual_seed(0)
    proj_w, proj_b = torch.randn(48, 48, generator=g) / 7, torch.randn(48, generator=g) / 7
    ln_w, ln_b = 1 + torch.randn(48, generator=g) / 10, torch.randn(48, generator=g) / 10
    extra = {
        "encoder.w2v_encoder.proj.weight": proj_w,
        "encoder.w2v_encoder.proj.bias": proj_b,
        "encoder.w2v_proj_ln.weight": ln_w,
        "encoder.w2v_proj_ln.bias": ln_b,
    }
    ckpt = _edited(st_fixtures, lambda m: m.update(extra))
    net = load_fairseq_st(st_fixtures / "st.pt", ckpt)[0].eval()
    assert net.cfg.adaptor_proj_dim == 48
    weights = ckpt["model"]
    waves, _ = _batch(st_fixtures, "a")
    with torch.no_grad():
        x = net.encoder.encode(waves).x[0]  # (T, D), checked against fairseq above
        x = F.layer_norm(F.linear(x, proj_w, proj_b), (48,), ln_w, ln_b, 1e-5).T[None]  # (1, D, T)
        for n in range(2):
            w, b = weights[f"encoder.adaptor.layers.{n}.weight"], weights[f"encoder.adaptor.layers.{n}.bias"]
            x = F.glu(F.conv1d(x, w, b, stride=2, padding=1), dim=1)
        out, _ = net.encode(waves, None)
    torch.testing.assert_close(out[0], x[0].T, atol=ATOL, rtol=0)


def test_embedded_w2v_args_are_used_and_checked_against_the_weights(st_fixtures):
    pretrain = safe_torch_load(st_fixtures / "pretrain.pt")["cfg"]
    ckpt = _ckpt(st_fixtures)
    w2v = {"model": {**pretrain["model"], "encoder_attention_heads": 2}, "task": pretrain["task"]}
    ckpt["cfg"]["model"].w2v_args = w2v
    net, _, _ = load_fairseq_st(st_fixtures / "st.pt", ckpt)
    assert net.cfg.encoder.encoder_attention_heads == 2  # w2v_args wins over every inference...
    net, _, _ = load_fairseq_st(st_fixtures / "st.pt", ckpt, encoder_attention_heads=4)
    assert net.cfg.encoder.encoder_attention_heads == 4  # ...but the caller's word
    for change, message in [
        ({"conv_feature_layers": "[(32, 10, 5)] + [(32, 3, 2)] * 6"}, "does not match the conv weights"),
        ({"encoder_layers": 3}, "w2v_args.encoder_layers = 3 does not match the weights (2)"),
        ({"activation_fn": "relu"}, "activation_fn='relu' is not supported"),
    ]:
        ckpt["cfg"]["model"].w2v_args = {"model": {**pretrain["model"], **change}, "task": pretrain["task"]}
        with pytest.raises(CheckpointError) as e:
            load_fairseq_st(st_fixtures / "st.pt", ckpt)
        assert message in _one_line(e)


def test_undeterminable_encoder_heads_are_an_error_unless_given(st_fixtures):
    ckpt = _ckpt(st_fixtures)
    del ckpt["cfg"]["model"].decoder_attention_heads  # width 48 is no released encoder's: nothing else says
    with pytest.raises(CheckpointError) as e:
        load_fairseq_st(st_fixtures / "st.pt", ckpt)
    assert "attention heads" in _one_line(e)
    net, _, _ = load_fairseq_st(st_fixtures / "st.pt", ckpt, encoder_attention_heads=4)
    assert dataclasses.replace(net.cfg.encoder) == _st(st_fixtures)[0].cfg.encoder


def test_an_xlsr_checkpoint_of_a_speech_translation_model_round_trips(st_fixtures, tmp_path):
    """The family table's third source: an xlsr checkpoint keeps the family, config, weights and the
    sentencepiece vocabulary, and loads back to the same logits (reference: the fairseq-loaded model)."""
    from xlsr.checkpoints import checkpoint_dict, load_model

    model = load_model(st_fixtures / "st.pt")
    torch.save(checkpoint_dict(model), tmp_path / "st_xlsr.pt")
    again = load_model(tmp_path / "st_xlsr.pt")
    assert type(again) is type(model) and again.cfg == model.cfg and again.source.startswith("xlsr checkpoint")
    assert again.tokenizer.tokens == model.tokenizer.tokens and again.tokenizer.encode(
        "the cat"
    ) == model.tokenizer.encode("the cat")
    wave = torch.from_numpy(np.load(st_fixtures / "wave_a.npy"))[None]
    prefix = torch.from_numpy(np.load(st_fixtures / "prefix_tokens.npy"))[None]
    with torch.no_grad():
        torch.testing.assert_close(again(wave, None, prefix), model(wave, None, prefix), atol=0, rtol=0)
