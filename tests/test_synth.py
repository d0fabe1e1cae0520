"""`xlsr synth`: the espeak-ng corpus is deterministic, complete, split by phrase, and readable by xlsr."""

from __future__ import annotations

import shutil

import pytest

from xlsr.data.manifest import read_manifest
from xlsr.errors import XlsrError
from xlsr.synth import languages, plan, sentences, synth

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng (Debian package) not installed")


def test_every_language_has_phrases_and_the_splits_never_share_one():
    langs = languages()
    assert len(langs) >= 8
    clips = plan(langs, 40, seed=0)
    for lang in langs:
        assert len(sentences(lang)) >= 100
        mine = [c for c in clips if c.lang == lang]
        assert [sum(c.split == s for c in mine) for s in ("train", "valid", "test")] == [32, 4, 4]
        train = {c.text for c in mine if c.split == "train"}
        assert not train & {c.text for c in mine if c.split != "train"}
        assert all(c.voice.startswith(lang + "+") and 130 <= c.speed <= 190 for c in mine)
    assert plan(langs, 40, seed=0) == clips and plan(langs, 40, seed=1) != clips


def test_a_language_keeps_its_held_out_phrases_whatever_the_corpus_size():
    """recipes/ctc_pretrained_vs_random.py makes a bigger one-language corpus: its test phrases must be the
    reference corpus's, which pretraining never heard."""

    def phrases(clips, split):
        return {c.text for c in clips if c.lang == "fr" and c.split == split}

    small, big = plan(["de", "fr", "sw"], 300, seed=0), plan(["fr"], 1000, seed=0)
    assert phrases(small, "test") == phrases(big, "test") and phrases(small, "train") == phrases(big, "train")
    assert not phrases(big, "test") & phrases(small, "train")


def test_a_clear_error_when_espeak_is_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(XlsrError, match="Debian/Ubuntu package espeak-ng"):
        synth(tmp_path, ["fr"], per_lang=10, quiet=True)
    with pytest.raises(XlsrError, match="no text for language 'xx'"):
        plan(["xx"], 10, 0)


@needs_espeak
def test_synth_is_deterministic_and_writes_manifests_xlsr_reads(tmp_path):
    a = synth(tmp_path / "a", ["fr", "sw", "pl"], per_lang=10, seed=3, quiet=True)
    b = synth(tmp_path / "b", ["fr", "sw", "pl"], per_lang=10, seed=3, quiet=True)
    for split in ("train", "valid", "test"):
        rows = read_manifest(tmp_path / "a" / f"{split}.tsv")
        assert [(u.lang, u.text, u.samples) for u in rows] == [(u.lang, u.text, u.samples) for u in a[split]]
        assert {u.lang for u in rows} == {"fr", "sw", "pl"}
        for u, v in zip(a[split], b[split]):
            assert u.path.read_bytes() == v.path.read_bytes()
            assert 1.0 < u.samples / 16000 < 15.0
    assert (tmp_path / "a" / "train.tsv").read_text().splitlines()[0] == "path\tsamples\tlang\ttext"
    other = synth(tmp_path / "c", ["fr"], per_lang=10, seed=4, quiet=True)
    assert [u.text for u in other["train"]] != [u.text for u in a["train"] if u.lang == "fr"]
