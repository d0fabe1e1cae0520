"""fairseq `wav2vec_classification` checkpoints (the XLS-R release's language-ID model, xlsr_300m_voxlingua107_ft.pt).

Reference: the genuine fairseq 0.12 checkpoints and fairseq's own outputs in tests/fixtures/fairseq_lid (its README
records how each was made): logits alone and batched for the GELU head (`lid.pt`) and the linear one
(`lid_linear.pt`), pooled embeddings, encoder outputs, the frame padding of a batch, and the release's crop
evaluation as fairseq's own scripts ran it. transformers is the reference for the linear head written as a
Hugging Face directory.
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from xlsr.checkpoints import convert, load_model
from xlsr.checkpoints.io import safe_torch_load
from xlsr.classify import crop_probabilities, crop_starts
from xlsr.cli import main
from xlsr.errors import CheckpointError
from xlsr.evaluate import evaluate
from xlsr.identify import identify
from xlsr.inference import prepare_batch

ATOL = 2e-5
WAVES = ("a", "b")


def _np(fx, name):
    return np.load(fx / f"{name}.npy")


def _batch(net, waves):
    return prepare_batch(waves, net.preprocessing, "cpu", torch.float32)


@pytest.fixture
def info(lid_fixtures):
    return json.loads((lid_fixtures / "info.json").read_text())


def test_the_checkpoint_reads_without_running_fairseq_code(lid_fixtures, info):
    ckpt = safe_torch_load(lid_fixtures / "lid.pt")
    assert sorted(ckpt) == info["checkpoint_top_keys"]
    assert ckpt["task_state"]["target_dictionary"].symbols == info["labels"]
    net = load_model(lid_fixtures / "lid.pt")
    cfg = net.cfg
    assert cfg.head == "classification" and cfg.labels == tuple(info["labels"])
    assert cfg.classifier_activation == "gelu" and cfg.classifier_proj_size == info["latent_dim"] == 64
    w2v = info["w2v"]
    assert (cfg.encoder_layers, cfg.encoder_embed_dim, cfg.encoder_ffn_embed_dim, cfg.encoder_attention_heads) == (
        w2v["encoder_layers"], w2v["encoder_embed_dim"], w2v["encoder_ffn_embed_dim"], w2v["encoder_attention_heads"]
    )  # fmt: skip
    assert net.preprocessing.do_normalize and net.preprocessing.normalize_eps == 1e-5
    assert load_model(lid_fixtures / "lid_linear.pt").cfg.classifier_activation == "linear"


def test_labels_follow_dict_label_txt_without_special_symbols(lid_fixtures, tmp_path):
    lines = (lid_fixtures / "dict.label.txt").read_text().split("\n")
    assert [line.split()[0] for line in lines if line] == json.loads((lid_fixtures / "info.json").read_text())["labels"]
    # a dictionary given explicitly wins over the pickled one: class index = line number
    reordered = tmp_path / "dict.label.txt"
    reordered.write_text("\n".join(lines[1:] + lines[:1]).strip() + "\n")
    assert load_model(lid_fixtures / "lid.pt", dict_path=reordered).cfg.labels[0] == "ru"
    short = tmp_path / "short.txt"
    short.write_text("en 5\nfr 3\n")
    with pytest.raises(CheckpointError, match="2 labels, but the classifier has 10 outputs"):
        load_model(lid_fixtures / "lid.pt", dict_path=short)


@pytest.mark.parametrize("ckpt,prefix", [("lid.pt", ""), ("lid_linear.pt", "linear_")])
def test_logits_match_fairseq_alone_and_batched(lid_fixtures, ckpt, prefix):
    net = load_model(lid_fixtures / ckpt).eval()
    waves = [_np(lid_fixtures, f"wave_{w}") for w in WAVES]
    with torch.no_grad():
        for w, x in zip(WAVES, waves):
            logits = net(*_batch(net, [x])).numpy()
            np.testing.assert_allclose(logits, _np(lid_fixtures, f"{prefix}logits_{w}"), atol=ATOL)
        batch = net(*_batch(net, waves)).numpy()
    np.testing.assert_allclose(batch, _np(lid_fixtures, f"{prefix}logits_batch"), atol=ATOL)
    labels = net.cfg.labels
    expected = {"": ("fr", "ar"), "linear_": ("fr", "ru")}[prefix]
    assert tuple(labels[i] for i in batch.argmax(-1)) == expected


def test_encoder_output_padding_and_pooled_embeddings_match_fairseq(lid_fixtures):
    net = load_model(lid_fixtures / "lid.pt").eval()
    waves = [_np(lid_fixtures, f"wave_{w}") for w in WAVES]
    with torch.no_grad():
        for w, x in zip(WAVES, waves):
            out = net.encode(*_batch(net, [x]))
            np.testing.assert_allclose(out.x[0].numpy(), _np(lid_fixtures, f"enc_{w}"), atol=ATOL)
            pooled = net.head.pool(out.x, out.hidden_states, out.padding_mask).numpy()
            np.testing.assert_allclose(pooled, _np(lid_fixtures, f"pooled_{w}"), atol=ATOL)
        out = net.encode(*_batch(net, waves))
        assert torch.equal(out.padding_mask, torch.from_numpy(_np(lid_fixtures, "batch_frame_padding")))
        pooled = net.head.pool(out.x, out.hidden_states, out.padding_mask).numpy()
    np.testing.assert_allclose(pooled, _np(lid_fixtures, "pooled_batch"), atol=ATOL)
    # the linear checkpoint has the same weights: the same embedding (the activation follows the pooling)
    linear = load_model(lid_fixtures / "lid_linear.pt").eval()
    with torch.no_grad():
        out = linear.encode(*_batch(linear, waves))
        again = linear.head.pool(out.x, out.hidden_states, out.padding_mask).numpy()
    np.testing.assert_allclose(again, pooled, atol=1e-6)


def _write_crop_corpus(fx, root):
    crops = json.loads((fx / "crops.json").read_text())
    rows = ["path\tlang"]
    for name, target in zip(crops["utterances"], crops["target_labels"]):
        sf.write(root / f"{name}.wav", _np(fx, name), 16000, subtype="FLOAT")
        rows.append(f"{name}.wav\t{target}")
    (root / "test.tsv").write_text("\n".join(rows) + "\n")
    return crops


def test_the_release_crop_evaluation_matches_fairseqs_scripts(lid_fixtures, tmp_path, capsys):
    crops = _write_crop_corpus(lid_fixtures, tmp_path)
    size, n = crops["infer_max_sample_size"], crops["infer_xtimes"]
    infer = np.load(lid_fixtures / "crops_infer.npz")
    assert infer["src_len"].tolist() == crops["src_len"]
    # the starts as fairseq drew them: np.random.seed(123), utterances in turn inside the crop loop
    starts = crop_starts(crops["src_len"], size, n, seed=crops["np_random_seed"])
    assert starts == crops["starts"]
    net = load_model(lid_fixtures / "lid.pt").eval()
    logits = _np(lid_fixtures, "crops_logits")
    np.testing.assert_allclose(logits, infer["logit"], atol=0)
    for i, name in enumerate(crops["utterances"]):
        x = _np(lid_fixtures, name)
        probs = crop_probabilities(net, x, size, starts[i])
        np.testing.assert_allclose(probs, crops["mean_prob"][i], atol=1e-5)
        reference = torch.from_numpy(logits[i]).softmax(-1).mean(0).numpy()  # "mean_logit": mean probabilities
        np.testing.assert_allclose(probs, reference, atol=1e-5)
    # the command: accuracy as eval_speaker_clf_task.py printed it
    report = evaluate(lid_fixtures / "lid.pt", tmp_path / "test.tsv", crops=n, crop_seconds=size / 16000, quiet=True)
    printed = crops["eval_speaker_clf_task_stdout"]
    acc = float(re.search(r"\| acc = ([\d.]+)%", printed).group(1))
    assert round(100 * report.overall.value, 2) == acc
    assert [u["prediction"] for u in report.utterances] == crops["pred_labels"]
    assert report.overall.correct == infer["target"].tolist().count(2) == 2  # wave_b's target is another label
    code = main(["evaluate", "--model", str(lid_fixtures / "lid.pt"), str(tmp_path / "test.tsv"),
                 "--crops", str(n), "--crop-seconds", str(size / 16000), "--quiet"])  # fmt: skip
    assert code == 0 and re.search(r"^all\s+3\s+66\.67$", capsys.readouterr().out, re.M)


def test_identify_gives_fairseqs_probabilities(lid_fixtures, tmp_path):
    for w in WAVES:
        sf.write(tmp_path / f"{w}.wav", _np(lid_fixtures, f"wave_{w}"), 16000, subtype="FLOAT")
    for ckpt, prefix in (("lid.pt", ""), ("lid_linear.pt", "linear_")):
        # the fixture's waves are noise, not speech: the speech check would (rightly) withhold a label
        results = identify(lid_fixtures / ckpt, [tmp_path / "a.wav", tmp_path / "b.wav"], top_k=10,
                           speech_check=False, quiet=True)  # fmt: skip
        labels = load_model(lid_fixtures / ckpt).cfg.labels
        for w, r in zip(WAVES, results):
            expected = torch.from_numpy(_np(lid_fixtures, f"{prefix}logits_{w}")[0]).softmax(-1).numpy()
            got = dict(r.top)
            np.testing.assert_allclose([got[label] for label in labels], expected, atol=1e-5)
        assert identify(lid_fixtures / ckpt, [tmp_path / "a.wav"], quiet=True)[0].no_speech


def test_convert_keeps_a_linear_head_for_transformers_and_refuses_a_gelu_one(lid_fixtures, tmp_path, capsys):
    from transformers import Wav2Vec2ForSequenceClassification

    convert(lid_fixtures / "lid_linear.pt", tmp_path / "hf")
    ref = Wav2Vec2ForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    assert ref.config.id2label[2] == "fr"
    waves = [_np(lid_fixtures, f"wave_{w}") for w in WAVES]
    net = load_model(tmp_path / "hf")
    x, lengths = _batch(net, waves)
    mask = (torch.arange(x.shape[1])[None] < lengths[:, None]).long()
    with torch.no_grad():
        got = ref(x, attention_mask=mask).logits.numpy()
    np.testing.assert_allclose(got, _np(lid_fixtures, "linear_logits_batch"), atol=ATOL)
    # GELU after the pooling: transformers has no such head; one line, nothing written
    capsys.readouterr()  # (transformers' own loading bar)
    assert main(["convert", str(lid_fixtures / "lid.pt"), str(tmp_path / "gelu")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot represent" in err and ".pt" in err
    assert not (tmp_path / "gelu").exists()
    # an xlsr checkpoint keeps it exactly
    assert main(["convert", str(lid_fixtures / "lid.pt"), str(tmp_path / "lid_xlsr.pt")]) == 0
    again = load_model(tmp_path / "lid_xlsr.pt").eval()
    assert again.cfg.classifier_activation == "gelu"
    with torch.no_grad():
        np.testing.assert_allclose(again(*_batch(again, waves)).numpy(), _np(lid_fixtures, "logits_batch"), atol=ATOL)


def test_a_missing_label_dictionary_is_one_line(lid_fixtures, tmp_path, capsys):
    ckpt = safe_torch_load(lid_fixtures / "lid.pt")
    ckpt["task_state"] = {}
    torch.save(ckpt, tmp_path / "lid.pt")  # the label Dictionary no longer pickled: dict.label.txt is needed
    assert main(["info", str(tmp_path / "lid.pt")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "dict.label.txt does not exist" in err
    shutil.copy(lid_fixtures / "dict.label.txt", tmp_path)
    assert load_model(tmp_path / "lid.pt").cfg.labels[:3] == ("en", "ru", "fr")
