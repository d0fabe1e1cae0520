"""Classification: `xlsr finetune classify`, `xlsr identify`, and `xlsr evaluate` on a classifier."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import needs_tool, randomize, speechlike

from xlsr.audio import normalize
from xlsr.checkpoints import init, load_model, save_hf_dir
from xlsr.classify import crop_probabilities, crop_starts, evaluate_classifier, identify, score
from xlsr.cli import main
from xlsr.config import preset
from xlsr.errors import ConfigError
from xlsr.finetuning.classify import finetune_classify
from xlsr.models import Wav2Vec2Model

LABELS = ("de", "fr", "sw")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("lid")
    rows = ["path\tsamples\tlang\tspeaker"]
    for i in range(15):
        x = speechlike(1.0 + (i % 4) * 0.8, seed=i)
        sf.write(root / f"u{i}.flac", x, 16000)
        rows.append(f"u{i}.flac\t{len(x)}\t{LABELS[i % 3]}\tspk{i % 2}")
    (root / "train.tsv").write_text("\n".join(rows[:13]) + "\n")
    (root / "valid.tsv").write_text("\n".join([rows[0], *rows[13:]]) + "\n")
    init(root / "init", preset="tiny", seed=0)
    return root


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    torch.manual_seed(0)
    cfg = preset("tiny", head="classification", labels=LABELS, dropout=0.0, attention_dropout=0.0)
    model = randomize(Wav2Vec2Model(cfg), scale=0.3).eval()
    path = tmp_path_factory.mktemp("clf") / "model"
    save_hf_dir(model, path)
    return path


def test_fine_tuned_directory_is_a_transformers_classifier_with_the_label_maps(corpus, tmp_path):
    from transformers import Wav2Vec2ForSequenceClassification

    args = ["num_workers=0", "max_update=3", "lr=1e-3", "warmup_updates=1", "log_interval=1", "crop_seconds=1.5",
            "validate_interval_updates=3", "balanced=true", "weighted_layer_sum=true"]  # fmt: skip
    finetune_classify(str(corpus / "init"), corpus / "train.tsv", corpus / "valid.tsv", tmp_path, set=args, quiet=True)
    best = tmp_path / "best"
    config = json.loads((best / "config.json").read_text())
    assert config["id2label"] == {"0": "de", "1": "fr", "2": "sw"} and config["label2id"]["sw"] == 2
    hf = Wav2Vec2ForSequenceClassification.from_pretrained(best).eval()
    ours = load_model(best)
    assert ours.cfg.labels == LABELS and ours.cfg.use_weighted_layer_sum
    x = normalize(torch.from_numpy(speechlike(1.7, seed=30))[None])
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(x).logits, atol=1e-4, rtol=0)
    # another label column: speakers
    finetune_classify(str(corpus / "init"), corpus / "train.tsv", corpus / "valid.tsv", tmp_path / "spk",
                      label_column="speaker", set=args, quiet=True)  # fmt: skip
    assert load_model(tmp_path / "spk" / "best").cfg.labels == ("spk0", "spk1")


def test_identify_averages_window_probabilities_over_a_long_file(classifier, tmp_path):
    net = load_model(classifier)
    x = speechlike(7.0, seed=9)
    sf.write(tmp_path / "long.wav", x, 16000)
    (tmp_path / "broken.wav").write_bytes(b"RIFF....WAVEfmt nonsense")
    results = identify(classifier, [tmp_path / "long.wav", tmp_path / "broken.wav"], top_k=3, chunk_seconds=3.0,
                       quiet=True)  # fmt: skip
    assert results[1].error and "broken.wav" in results[1].path
    # by hand: windows of 3 s (150 frames) = [0, 3), [3, 6), [6, 7) s, weighted by their frames
    probs, weights = [], []
    with torch.no_grad():
        for a, b in ((0, 48000), (48000, 96000), (96000, len(x))):
            w = normalize(torch.from_numpy(x[a:b])[None])
            probs.append(net(w).softmax(-1)[0].numpy())
            weights.append(int(net.frame_lengths(torch.tensor([b - a]))[0]))
    expected = np.average(probs, axis=0, weights=weights)
    got = dict(results[0].top)
    assert [label for label, _ in results[0].top] == [LABELS[i] for i in np.argsort(-expected)]
    for i, label in enumerate(LABELS):
        assert got[label] == pytest.approx(expected[i], abs=2e-3)  # (the last frames differ by a window edge)


def test_identify_cli_formats_and_exit_code(classifier, tmp_path, capsys):
    sf.write(tmp_path / "a.wav", speechlike(1.0, seed=1), 16000)
    assert main(["identify", str(classifier), str(tmp_path / "a.wav"), "--format", "json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["labels"]) == 3 and sum(x["probability"] for x in out["labels"]) == pytest.approx(1, abs=1e-4)
    assert main(["identify", str(classifier), str(tmp_path / "a.wav"), str(tmp_path / "missing.wav"), "--quiet"]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith(str(tmp_path / "a.wav") + "\t") and "missing.wav" in captured.err
    assert main(["identify", str(classifier), str(tmp_path / "a.wav"), "--top-k", "0"]) != 0
    assert capsys.readouterr().err.strip() == "xlsr: error: --top-k must be at least 1, got 0"
    with pytest.raises(ConfigError, match="--crops must be at least 1, got 0"):
        evaluate_classifier(classifier, tmp_path / "m.tsv", crops=0)


def test_scores_per_class_and_duration_bucket_with_a_confusion_matrix():
    rows = [("fr", "fr", 2.0), ("fr", "de", 6.0), ("de", "de", 4.9), ("de", "de", 5.0), ("sw", "fr", 30.0)]
    report = score(LABELS, rows)
    assert (report.overall.correct, report.overall.total) == (3, 5)
    assert report.per_class["fr"].value == 0.5 and report.per_class["de"].value == 1.0
    assert report.per_class["sw"].value == 0.0
    assert {k: (v.correct, v.total) for k, v in report.per_bucket.items()} == {
        "0-5 s": (2, 2),
        "5-20 s": (1, 2),
        ">20 s": (0, 1),
    }
    assert report.confusion.tolist() == [[2, 0, 0], [1, 1, 0], [0, 1, 0]]  # rows de, fr, sw
    assert "ref \\ hyp" in report.table()


def test_crops_are_random_and_averaged_and_short_utterances_are_used_whole(classifier):
    net = load_model(classifier)
    assert crop_starts([100], 100, 10, seed=0) == [[0] * 10]
    (starts,) = crop_starts([1000], 100, 10, seed=0)
    assert len(starts) == 10 and all(0 <= s <= 900 for s in starts) and len(set(starts)) > 1
    x = speechlike(3.0, seed=2)
    crop = 16000
    (starts,) = crop_starts([len(x)], crop, 4, seed=5)
    got = crop_probabilities(net, x, crop, starts)
    whole = normalize(torch.from_numpy(x)[None])  # fairseq normalises the utterance, then cuts it
    expected = []
    with torch.no_grad():
        for s in starts:
            expected.append(net(whole[:, s : s + crop]).softmax(-1)[0].numpy())
    np.testing.assert_allclose(got, np.mean(expected, axis=0), atol=1e-5)
    short = speechlike(0.6, seed=3)
    with torch.no_grad():
        whole = net(normalize(torch.from_numpy(short)[None])).softmax(-1)[0].numpy()
    np.testing.assert_allclose(crop_probabilities(net, short, crop, [0] * 4), whole, atol=1e-5)


def test_evaluate_a_classifier_writes_json_and_a_png(classifier, corpus, tmp_path, capsys):
    report = evaluate_classifier(classifier, corpus / "train.tsv", json_path=tmp_path / "r.json",
                                 plot=tmp_path / "cm.png", quiet=True)  # fmt: skip
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["overall"]["total"] == 12 and sum(map(sum, data["confusion"])) == 12
    assert (tmp_path / "cm.png").read_bytes()[:4] == b"\x89PNG"
    assert report.overall.value == pytest.approx(
        np.mean([u["reference"] == u["prediction"] for u in data["utterances"]])
    )
    crops = evaluate_classifier(classifier, corpus / "train.tsv", crops=3, crop_seconds=1.0, quiet=True)
    assert crops.overall.total == 12
    assert main(["evaluate", str(classifier), str(corpus / "valid.tsv"), "--crops", "--quiet"]) == 0
    assert "confusion matrix" in capsys.readouterr().out


@needs_tool("espeak-ng")
def test_speaker_identification_end_to_end(tmp_path, capsys):
    """The paper's fourth task at toy scale: a synth corpus of fixed speakers, a speaker-ID head trained on
    `speaker`, and evaluation per speaker on phrases training never heard."""
    from xlsr.checkpoints import bundled_model
    from xlsr.synth import synth

    made = synth(tmp_path / "corpus", ["sw"], per_lang=30, speakers=3, seed=1, quiet=True)
    speakers = sorted({u.speaker for u in made["train"]})
    assert len(speakers) == 3 and not {u.text for u in made["test"]} & {u.text for u in made["train"]}
    args = ["num_workers=0", "max_update=30", "lr=3e-3", "warmup_updates=3", "log_interval=1", "crop_seconds=2.0",
            "validate_interval_updates=30", "freeze_finetune_updates=0", "max_tokens=160000"]  # fmt: skip
    # from the bundled reference model's encoder (pretrained on espeak-ng speech): it tells voices apart quickly
    finetune_classify(str(bundled_model("asr")), tmp_path / "corpus" / "train.tsv", tmp_path / "corpus" / "valid.tsv",
                      tmp_path / "run", label_column="speaker", set=args, quiet=True)  # fmt: skip
    model = load_model(tmp_path / "run" / "best")
    assert sorted(model.cfg.labels) == speakers
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if r.get("split") == "train" and "loss" in r]
    assert len(losses) >= 20 and np.mean(losses[-5:]) < np.mean(losses[:5])  # it learns the training voices
    code = main(["evaluate", "--model", str(tmp_path / "run" / "best"), str(tmp_path / "corpus" / "test.tsv"),
                 "--label-column", "speaker", "--output-dir", str(tmp_path / "eval"), "--quiet"])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    for name in speakers:
        assert re.search(rf"^{re.escape(name)}\s+1\s+(0|100)\.00$", out, re.M), out
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert set(report["per_class"]) == set(speakers) and report["overall"]["total"] == 3
