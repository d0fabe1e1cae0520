"""Checkpoint interop: Hugging Face directories both ways (reference: transformers 5.23), genuine
fairseq 0.12 checkpoints with fairseq's own outputs (tests/fixtures/fairseq_xlsr), safety."""

from __future__ import annotations

import argparse
import json
import os
import sys
import types

import numpy as np
import pytest
import torch
from conftest import hf_config, randomize, speechlike

from xlsr.audio import normalize, pad_batch
from xlsr.checkpoints import convert, load_model, save_hf_dir
from xlsr.checkpoints.io import safe_torch_load
from xlsr.config import preset
from xlsr.errors import CheckpointError
from xlsr.models import Wav2Vec2Model
from xlsr.models.padding import padding_mask
from xlsr.text.ctc_tokenizer import CTCTokenizer

VOCAB = ["<pad>", "<s>", "</s>", "<unk>", "|", "A", "B", "C", "D", "E", "'", "Z"]


def batch():
    wave, lengths = pad_batch([speechlike(1.1, seed=5), speechlike(0.7, seed=6)])
    return normalize(wave, lengths), lengths


def xlsr_model(head: str, layout: str = "layer_norm", **changes) -> Wav2Vec2Model:
    base = "tiny" if layout == "layer_norm" else "tiny-base"
    extra = {"ctc": dict(vocab_size=len(VOCAB)), "classification": dict(labels=("en", "fr", "yo"))}.get(head, {})
    torch.manual_seed(0)
    cfg = preset(base, head=head, dropout=0.0, attention_dropout=0.0, encoder_layerdrop=0.0, **extra, **changes)
    return randomize(Wav2Vec2Model(cfg)).eval()


HF_CLASSES = {
    "none": "Wav2Vec2Model",
    "pretraining": "Wav2Vec2ForPreTraining",
    "ctc": "Wav2Vec2ForCTC",
    "classification": "Wav2Vec2ForSequenceClassification",
}


@pytest.mark.parametrize("layout", ["layer_norm", "group_norm"])
@pytest.mark.parametrize("head", list(HF_CLASSES))
def test_written_directory_loads_in_transformers_with_same_outputs(head, layout, tmp_path):
    import transformers

    model = xlsr_model(head, layout)
    tok = CTCTokenizer(VOCAB) if head == "ctc" else None
    save_hf_dir(model, tmp_path / "m", tok)
    hf, info = getattr(transformers, HF_CLASSES[head]).from_pretrained(tmp_path / "m", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    hf.eval()
    wave, lengths = batch()
    mask = (~padding_mask(lengths, wave.shape[1])).long()
    with torch.no_grad():
        if head == "pretraining":
            ref = hf(wave, attention_mask=mask)
            out = model.encode(wave, lengths)
            for i, n in enumerate(out.lengths.tolist()):
                torch.testing.assert_close(
                    model.head.final_proj(out.x)[i, :n], ref.projected_states[i, :n], atol=1e-4, rtol=0
                )
            return
        ref = hf(wave, attention_mask=mask)
        ref = ref.logits if head in ("ctc", "classification") else ref.last_hidden_state
        mine = model(wave, lengths)
    if head == "classification":
        torch.testing.assert_close(mine, ref, atol=1e-4, rtol=0)
    else:
        for i, n in enumerate(model.frame_lengths(lengths).tolist()):
            torch.testing.assert_close(mine[i, :n], ref[i, :n], atol=1e-4, rtol=0)
    # and back: xlsr reads its own output
    again = load_model(tmp_path / "m")
    assert again.cfg == model.cfg
    with torch.no_grad():
        torch.testing.assert_close(again(wave, lengths), mine, atol=0, rtol=0)


def test_ctc_directory_loads_in_autoprocessor_and_decodes_the_same(tmp_path):
    from transformers import AutoProcessor

    model = xlsr_model("ctc")
    tok = CTCTokenizer(VOCAB)
    save_hf_dir(model, tmp_path / "m", tok)
    processor = AutoProcessor.from_pretrained(tmp_path / "m")
    assert type(processor).__name__ == "Wav2Vec2Processor"
    assert processor.tokenizer.get_vocab() == {t: i for i, t in enumerate(VOCAB)}
    assert processor.tokenizer.pad_token_id == tok.blank_id
    rng = np.random.default_rng(0)
    ids = rng.integers(0, len(VOCAB), size=(20, 30))
    ids[:, ::3] = 0  # plenty of blanks
    assert processor.batch_decode(ids) == [tok.decode(row.tolist()) for row in ids]
    assert processor.tokenizer("AB CD").input_ids == tok.encode("AB CD")
    # the feature extractor normalises as xlsr does
    wave = speechlike(0.5)
    ref = processor(wave, sampling_rate=16000, return_tensors="pt").input_values
    torch.testing.assert_close(normalize(torch.from_numpy(wave)[None]), ref, atol=1e-5, rtol=0)


def test_transformers_directory_variants_load(tmp_path):
    """Sharded safetensors, pytorch_model.bin, and pre-4.33 weight-norm names all read the same."""
    from safetensors.torch import load_file
    from transformers import Wav2Vec2ForCTC

    torch.manual_seed(0)
    hf = randomize(Wav2Vec2ForCTC(hf_config())).eval()
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    wave, lengths = batch()
    with torch.no_grad():
        ref = load_model(tmp_path / "sharded")(wave[:1])
        hf_ref = hf(wave[:1]).logits
    torch.testing.assert_close(ref, hf_ref, atol=2e-5, rtol=0)

    state = {}
    for f in (tmp_path / "sharded").glob("*.safetensors"):
        state.update(load_file(f))
    renames = {"parametrizations.weight.original0": "weight_g", "parametrizations.weight.original1": "weight_v"}
    legacy = {}
    for k, v in state.items():
        for new, old in renames.items():
            k = k.replace(new, old)
        legacy[k] = v
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "sharded" / "config.json").read_text())
    torch.save(legacy, tmp_path / "bin" / "pytorch_model.bin")
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path / "bin")(wave[:1]), hf_ref, atol=2e-5, rtol=0)


def test_unknown_and_missing_weights_are_errors(tmp_path):
    from safetensors.torch import load_file, save_file

    model = xlsr_model("ctc")
    save_hf_dir(model, tmp_path / "m", CTCTokenizer(VOCAB))
    state = load_file(tmp_path / "m" / "model.safetensors")
    save_file({**state, "wav2vec2.encoder.extra.weight": torch.zeros(2)}, tmp_path / "m" / "model.safetensors")
    with pytest.raises(CheckpointError, match="unknown weight 'wav2vec2.encoder.extra.weight'"):
        load_model(tmp_path / "m")
    del state["lm_head.bias"]
    save_file(state, tmp_path / "m" / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing weights: \['head.proj.bias'\]"):
        load_model(tmp_path / "m")


def test_unsupported_architecture_is_a_clear_error(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(
        json.dumps({"model_type": "wav2vec2", "architectures": ["Wav2Vec2ForXVector"]})
    )
    with pytest.raises(CheckpointError, match="Wav2Vec2ForXVector is not supported"):
        load_model(tmp_path / "m")


# -- fairseq ---------------------------------------------------------------------------------


def fixture_waves(fixtures_dir):
    return torch.from_numpy(np.load(fixtures_dir / "wave_a.npy")), torch.from_numpy(
        np.load(fixtures_dir / "wave_b.npy")
    )


def ctc_logits(model, a, b):
    eps = model.preprocessing.normalize_eps
    wave, lengths = pad_batch([a, b])
    with torch.no_grad():
        return model(normalize(wave, lengths, eps), lengths), model(normalize(b[None], eps=eps))


def test_fairseq_pretraining_checkpoint_matches_fairseq(fixtures_dir):
    model = load_model(fixtures_dir / "pretrain.pt")
    assert model.cfg.head == "pretraining" and model.cfg.layer_norm_first and not model.cfg.quantize_targets
    assert model.preprocessing.do_normalize  # task.normalize=True
    a, _ = fixture_waves(fixtures_dir)
    with torch.no_grad():
        x = model.encode(normalize(a[None], eps=model.preprocessing.normalize_eps)).x[0]
    ref = torch.from_numpy(np.load(fixtures_dir / "pretrain_a_final.npy"))
    torch.testing.assert_close(x, ref, atol=5e-5, rtol=0)
    # the pretraining parts are kept, so training can continue
    assert model.head.final_proj.weight.shape == (48, 64) and model.head.project_q.weight.shape == (48, 64)


def test_fairseq_ctc_checkpoint_matches_fairseq_batched_and_alone(fixtures_dir):
    model = load_model(fixtures_dir / "ctc.pt")
    assert model.tokenizer.tokens[:5] == ["<pad>", "<s>", "</s>", "<unk>", "|"] and len(model.tokenizer) == 32
    a, b = fixture_waves(fixtures_dir)
    logits, alone = ctc_logits(model, a, b)
    ref = torch.from_numpy(np.load(fixtures_dir / "ctc_batch_logits.npy"))
    pad = torch.from_numpy(np.load(fixtures_dir / "ctc_batch_padding.npy"))
    assert logits.shape == ref.shape
    torch.testing.assert_close(logits[~pad], ref[~pad], atol=5e-5, rtol=0)
    frames = model.frame_lengths(torch.tensor([len(a), len(b)]))
    assert frames.tolist() == (~pad).sum(1).tolist()
    torch.testing.assert_close(alone, torch.from_numpy(np.load(fixtures_dir / "ctc_b_logits.npy")), atol=5e-5, rtol=0)


def test_fairseq_ctc_converts_to_a_directory_transformers_runs(fixtures_dir, tmp_path):
    from transformers import AutoProcessor, Wav2Vec2ForCTC

    convert(fixtures_dir / "ctc.pt", tmp_path / "hf")
    hf = Wav2Vec2ForCTC.from_pretrained(tmp_path / "hf").eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "hf")
    a, _ = fixture_waves(fixtures_dir)
    inputs = processor(a.numpy(), sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        logits = hf(**inputs).logits[0]
    ref = torch.from_numpy(np.load(fixtures_dir / "ctc_batch_logits.npy"))[0]
    # transformers normalises with eps 1e-7 where fairseq used 1e-5: a tiny difference in scale
    torch.testing.assert_close(logits, ref, atol=2e-3, rtol=0)
    assert processor.batch_decode(logits.argmax(-1)[None]) == [
        load_model(tmp_path / "hf").tokenizer.decode(logits.argmax(-1).tolist())
    ]


@pytest.mark.parametrize("encoder_only", [False, True])
def test_fairseq_pretraining_without_quantizer_converts_encoder_only(fixtures_dir, tmp_path, encoder_only):
    """transformers' Wav2Vec2ForPreTraining cannot hold a model without a quantizer: the encoder is written
    (asked for or not) and the result says what was left out; compared with fairseq's own output."""
    from transformers import Wav2Vec2Model as HFModel

    done = convert(fixtures_dir / "pretrain.pt", tmp_path / "hf", encoder_only=encoder_only)
    assert done.model.cfg.head == "none"
    assert (done.left_out is None) == encoder_only or "quantize_targets=False" in done.left_out
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == ["Wav2Vec2Model"]
    hf = HFModel.from_pretrained(tmp_path / "hf").eval()
    a, _ = fixture_waves(fixtures_dir)
    with torch.no_grad():  # same input normalisation as fairseq, to compare the network alone
        x = hf(normalize(a[None], eps=1e-5)).last_hidden_state[0]
    torch.testing.assert_close(x, torch.from_numpy(np.load(fixtures_dir / "pretrain_a_final.npy")), atol=5e-5, rtol=0)


def _old_style(ckpt: dict) -> dict:
    """The same checkpoint as fairseq < 0.10 wrote it: an argparse.Namespace `args`, no `cfg`."""
    model_cfg, task = dict(ckpt["cfg"]["model"]), ckpt["cfg"]["task"]
    if "w2v_args" in model_cfg:
        inner = model_cfg.pop("w2v_args")
        model_cfg["w2v_args"] = argparse.Namespace(**{**inner["model"], "normalize": inner["task"]["normalize"]})
        model_cfg["arch"] = "wav2vec_ctc"
    else:
        model_cfg["arch"] = "wav2vec2"
    del model_cfg["_name"]
    return {
        "args": argparse.Namespace(**{**model_cfg, "normalize": task["normalize"], "labels": task.get("labels")}),
        "model": ckpt["model"],
        "extra_state": {"best": np.float64(0.5)},
    }


def test_old_style_fairseq_checkpoints_load_the_same(fixtures_dir, tmp_path):
    for name in ("pretrain.pt", "ctc.pt"):
        torch.save(_old_style(safe_torch_load(fixtures_dir / name)), tmp_path / name)
    (tmp_path / "dict.ltr.txt").write_text((fixtures_dir / "dict.ltr.txt").read_text())
    a, b = fixture_waves(fixtures_dir)
    old, new = load_model(tmp_path / "ctc.pt"), load_model(fixtures_dir / "ctc.pt")
    assert old.cfg == new.cfg and old.preprocessing == new.preprocessing
    torch.testing.assert_close(ctc_logits(old, a, b)[0], ctc_logits(new, a, b)[0], atol=0, rtol=0)
    assert load_model(tmp_path / "pretrain.pt").cfg == load_model(fixtures_dir / "pretrain.pt").cfg


def test_fairseq_ctc_needs_the_right_dictionary(fixtures_dir, tmp_path):
    (tmp_path / "ctc.pt").write_bytes((fixtures_dir / "ctc.pt").read_bytes())
    with pytest.raises(CheckpointError, match="dict.ltr.txt does not exist .*--dict"):
        load_model(tmp_path / "ctc.pt")
    (tmp_path / "short.txt").write_text("| 5\nE 3\n")
    with pytest.raises(CheckpointError, match="wrong dictionary"):
        load_model(tmp_path / "ctc.pt", dict_path=tmp_path / "short.txt")
    model = load_model(tmp_path / "ctc.pt", dict_path=fixtures_dir / "dict.ltr.txt")
    assert model.tokenizer.tokens[-1] == "'"


def test_fairseq_unknown_weight_is_an_error(fixtures_dir, tmp_path):
    ckpt = safe_torch_load(fixtures_dir / "pretrain.pt")
    ckpt["model"]["encoder.layers.0.adapter.weight"] = torch.zeros(3)
    torch.save(ckpt, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="unknown weight 'encoder.layers.0.adapter.weight'"):
        load_model(tmp_path / "x.pt")
    del ckpt["model"]["encoder.layers.0.adapter.weight"], ckpt["model"]["final_proj.bias"]
    torch.save(ckpt, tmp_path / "y.pt")
    with pytest.raises(CheckpointError, match="missing weights: .*head.final_proj.bias"):
        load_model(tmp_path / "y.pt")


# -- safety and bad files ----------------------------------------------------------------------


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-checkpoint",))


def test_a_checkpoint_that_runs_code_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"cfg": {}, "model": {}, "payload": _RunsCode()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"evil.pt: refused to load: .*(posix|os)\.system"):
        load_model(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned-by-checkpoint").exists()
    torch.save({"model": {}, "x": types.SimpleNamespace(a=1)}, tmp_path / "ns.pt")
    with pytest.raises(CheckpointError, match="types.SimpleNamespace"):
        safe_torch_load(tmp_path / "ns.pt")


def test_fairseq_bookkeeping_objects_load_as_inert_data(tmp_path, monkeypatch):
    """Genuine fairseq checkpoints pickle logging meters in extra_state: read as plain data, no code."""
    module = types.ModuleType("fairseq.logging.meters")

    class AverageMeter:
        def __init__(self):
            self.val, self.count = 1.5, 3

    AverageMeter.__module__ = "fairseq.logging.meters"
    AverageMeter.__qualname__ = "AverageMeter"
    module.AverageMeter = AverageMeter
    for name in ("fairseq", "fairseq.logging", "fairseq.logging.meters"):
        monkeypatch.setitem(sys.modules, name, module if name.endswith("meters") else types.ModuleType(name))
    torch.save({"extra_state": {"train_meters": {"loss": AverageMeter()}}, "w": torch.ones(2)}, tmp_path / "m.pt")
    monkeypatch.delitem(sys.modules, "fairseq.logging.meters")  # fairseq is not installed when xlsr reads it
    loaded = safe_torch_load(tmp_path / "m.pt")
    assert loaded["extra_state"]["train_meters"]["loss"].state == {"val": 1.5, "count": 3}
    assert torch.equal(loaded["w"], torch.ones(2))


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "the file is empty"),
        (b"not a checkpoint at all", "not a readable PyTorch checkpoint"),
        (b"PK\x03\x04broken zip", "not a readable PyTorch checkpoint"),
    ],
)
def test_corrupt_checkpoint_files_give_one_line_errors(tmp_path, content, message):
    (tmp_path / "bad.pt").write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as e:
        load_model(tmp_path / "bad.pt")
    assert "\n" not in str(e.value) and "bad.pt" in str(e.value)


def test_save_is_atomic_and_refuses_to_clobber_unrelated_folders(tmp_path):
    model = xlsr_model("none")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "precious.txt").write_text("keep")
    with pytest.raises(CheckpointError, match="refusing to replace"):
        convert_model_to(model, tmp_path / "data")
    assert (tmp_path / "data" / "precious.txt").read_text() == "keep"
    save_hf_dir(model, tmp_path / "m")
    save_hf_dir(model, tmp_path / "m")  # replacing a model directory is fine
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left behind


def convert_model_to(model, dst):
    from xlsr.checkpoints import checkpoint_dict

    torch.save(checkpoint_dict(model), dst.parent / "src.pt")
    return convert(dst.parent / "src.pt", dst).model


def test_xlsr_checkpoint_round_trip(tmp_path):
    from xlsr.checkpoints import checkpoint_dict

    model = xlsr_model("ctc")
    model.tokenizer = CTCTokenizer(VOCAB)
    torch.save(checkpoint_dict(model, step=7), tmp_path / "c.pt")
    again = load_model(tmp_path / "c.pt")
    assert again.cfg == model.cfg and again.tokenizer == model.tokenizer
    wave, lengths = batch()
    with torch.no_grad():
        torch.testing.assert_close(again(wave, lengths), model(wave, lengths), atol=0, rtol=0)


def test_hub_ids_download_through_huggingface_hub_and_fail_cleanly_offline(tmp_path, monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    save_hf_dir(xlsr_model("none"), tmp_path / "snapshot")
    asked = []

    def fake_download(repo_id, allow_patterns):
        asked.append(repo_id)
        return str(tmp_path / "snapshot")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    model = load_model("facebook/wav2vec2-xls-r-300m")
    assert asked == ["facebook/wav2vec2-xls-r-300m"] and model.cfg.head == "none"

    def offline(repo_id, allow_patterns):
        raise OSError("network unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(CheckpointError, match="not a local path, and the hub download failed"):
        load_model("someone/some-model")
