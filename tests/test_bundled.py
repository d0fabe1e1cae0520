"""The bundled reference models and example clips: the first command a user runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from xlsr.checkpoints import bundled_model, load_model
from xlsr.classify import identify
from xlsr.cli import main
from xlsr.data.manifest import read_manifest
from xlsr.evaluate import evaluate

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def stated() -> re.Match:
    """What the README says the bundled models do on the examples."""
    found = re.search(
        r"On the bundled examples \(examples/examples.tsv\): CER ([\d.]+)%, WER ([\d.]+)%, language ID (\d+) of "
        r"(\d+) right",
        (ROOT / "README.md").read_text(),
    )
    assert found, "README must state the bundled models' figures on the examples"
    return found


def test_the_bundled_models_are_small_and_load():
    asr, lid = load_model(bundled_model("asr")), load_model(bundled_model("lid"))
    assert asr.cfg.head == "ctc" and asr.tokenizer is not None and lid.cfg.head == "classification"
    assert len(lid.cfg.labels) >= 8 and asr.cfg.encoder_layers == lid.cfg.encoder_layers
    size = sum(p.stat().st_size for p in (ROOT / "xlsr" / "assets" / "model").rglob("*"))
    assert size < 15 * 2**20


def test_the_examples_are_transcribed_with_the_cer_the_readme_states():
    report = evaluate(bundled_model("asr"), EXAMPLES / "examples.tsv", quiet=True)
    match = stated()
    assert 100 * report.overall.cer == pytest.approx(float(match.group(1)), abs=0.051)
    assert 100 * report.overall.wer == pytest.approx(float(match.group(2)), abs=0.051)


def test_identify_names_the_languages_of_the_examples():
    rows = read_manifest(EXAMPLES / "examples.tsv")
    results = identify(bundled_model("lid"), [u.path for u in rows], top_k=3, quiet=True)
    right = sum(r.top[0][0] == u.lang for r, u in zip(results, rows))
    match = stated()
    assert (right, len(rows)) == (int(match.group(3)), int(match.group(4)))
    assert right == len(rows)  # the issue: identify names every example's language


def test_the_first_command_needs_no_model_argument(capsys):
    clips = sorted(str(p) for p in EXAMPLES.glob("*.wav"))
    assert len(clips) >= 8
    assert main(["transcribe", *clips, "--quiet"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(clips) and all("\t" in line for line in out)
    assert main(["identify", clips[0], "--quiet"]) == 0
    path, *top = capsys.readouterr().out.splitlines()[0].split("\t")  # path, then "label probability" x top-k
    label, probability = top[0].split()
    assert path == clips[0] and len(top) == 3 and label == Path(clips[0]).stem and 0 < float(probability) <= 1
