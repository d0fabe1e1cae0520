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
    size = sum(
        p.stat().st_size for kind in ("asr", "lid") for p in (ROOT / "xlsr" / "assets" / "model" / kind).rglob("*")
    )
    assert size < 15 * 2**20  # the translation model has its own limit (below)


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
    # several files: every line has the --top-k labels, not only the first (a line's shape never depends on the count)
    assert main(["identify", *clips[:3], "--top-k", "2", "--quiet"]) == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [line[0] for line in lines] == clips[:3] and all(len(line) == 3 for line in lines)
    assert all(line[1].split()[0] == Path(line[0]).stem for line in lines)


# --- the bundled speech-translation model (recipes/translation.py) ---------------------------------------
TRANSLATION_EXAMPLES = EXAMPLES / "translation" / "translation.tsv"


def stated_translation() -> re.Match:
    """What the README says the bundled translation model does on its examples."""
    found = re.search(
        r"On the bundled examples \(examples/translation/translation.tsv[^)]*\): BLEU (\d+\.\d), chrF (\d+\.\d)\.",
        (ROOT / "README.md").read_text(),
    )
    assert found, "README must state the bundled translation model's figures on its examples"
    return found


def test_the_bundled_translation_model_is_small_and_loads():
    from xlsr.models.speech_translation import SpeechTranslationModel

    st = load_model(bundled_model("st"))
    assert isinstance(st, SpeechTranslationModel) and st.tokenizer is not None
    assert st.generation.forced_bos_token_id == st.tokenizer.lang_id("en")  # X -> English
    assert st.generation.target_languages == ("en_XX",)  # and into nothing else
    size = sum(p.stat().st_size for p in (ROOT / "xlsr" / "assets" / "model" / "st").rglob("*"))
    assert size < 10 * 2**20


def test_the_translation_examples_score_what_the_readme_states():
    report = evaluate(bundled_model("st"), TRANSLATION_EXAMPLES, quiet=True)
    match = stated_translation()
    assert report.overall.sentences == len(read_manifest(TRANSLATION_EXAMPLES)) >= 4
    assert report.overall.bleu == pytest.approx(float(match.group(1)), abs=0.051)
    assert report.overall.chrf == pytest.approx(float(match.group(2)), abs=0.051)


def test_translate_needs_no_model_argument(capsys):
    """The README's first command: the bundled translation model on the example clips, one line per clip."""
    clips = sorted(str(p) for p in EXAMPLES.glob("*.wav")) + sorted(
        str(p) for p in TRANSLATION_EXAMPLES.parent.glob("*.wav")
    )
    assert main(["translate", *clips, "--quiet"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in out] == clips
    assert all(len(line.split("\t")[1].split()) >= 2 for line in out)  # English words, not nothing
    references = {str(u.path): u.translation for u in read_manifest(TRANSLATION_EXAMPLES)}
    said = dict(line.split("\t", 1) for line in out)
    assert any(said[path] == ref for path, ref in references.items())  # a training sentence, a new voice


def test_the_bundled_translation_model_refuses_a_target_it_was_not_trained_on(capsys):
    """Its vocabulary has mBART-50's 52 language tags, but it learnt English only: another target is refused
    before any work, in one line that names the languages it does translate into."""
    clip = str(TRANSLATION_EXAMPLES.parent / "de.wav")
    for target in ("de", "fr_XX", "xx"):
        assert main(["translate", clip, "--target-lang", target, "--quiet"]) != 0
        captured = capsys.readouterr()
        assert captured.out == "" and len(captured.err.strip().splitlines()) == 1, captured
        assert "fine-tuned to translate into en_XX only" in captured.err and "Traceback" not in captured.err
    assert main(["translate", clip, "--target-lang", "en", "--quiet"]) == 0
    assert capsys.readouterr().out.strip()
