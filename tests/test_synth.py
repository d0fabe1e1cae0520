"""`xlsr synth`: the espeak-ng corpus is deterministic, complete, split by phrase, and readable by xlsr;
a folder holding a corpus is refused unless overwritten, and overwriting removes that corpus only."""

from __future__ import annotations

import importlib
import shutil

import numpy as np
import pytest
import soundfile as sf

from xlsr.data.manifest import read_manifest
from xlsr.errors import ConfigError, XlsrError
from xlsr.synth import Clip, languages, plan, sentences, synth

synth_module = importlib.import_module("xlsr.synth")  # `xlsr.synth` is the function

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
    assert (tmp_path / "a" / "train.tsv").read_text().splitlines()[0] == "path\tsamples\tlang\ttext\tspeaker"
    assert [u.speaker for u in read_manifest(tmp_path / "a" / "train.tsv")] == [u.speaker for u in a["train"]]
    assert not (tmp_path / "a" / ".synth-plan.json").exists()
    other = synth(tmp_path / "c", ["fr"], per_lang=10, seed=4, quiet=True)
    assert [u.text for u in other["train"]] != [u.text for u in a["train"] if u.lang == "fr"]


def test_the_draws_are_those_of_the_first_release():
    """Voices, speeds and pitches for seed 0, as xlsr's first `synth` (commit 5e61a38) drew them: the
    recipes' corpora and the bundled models' figures depend on them."""
    first = [("de+m2", 186, 31), ("de+m6", 190, 33), ("de+m2", 145, 46), ("de+f2", 178, 43), ("de+f1", 181, 46),
             ("de+m1", 166, 59), ("de+m2", 134, 25), ("de+m5", 162, 56), ("de+f3", 188, 42),
             ("de+m7", 160, 69)]  # fmt: skip
    assert [(c.voice, c.speed, c.pitch) for c in plan(["de"], 10, seed=0)] == first


def test_each_clip_has_a_speaker_made_of_its_voice_and_its_pitch_and_speed_bands():
    def band(value, edges, names):  # edges: where the next band starts
        return names[sum(value >= e for e in edges)]

    clips = plan(languages(), 40, seed=0)
    for c in clips:
        pitch = band(c.pitch, (42, 59), ("low", "mid", "high"))
        speed = band(c.speed, (150, 170), ("slow", "medium", "fast"))
        assert c.speaker == f"{c.voice.split('+')[1]}-{pitch}-{speed}"
    assert 50 < len({c.speaker for c in clips}) <= 12 * 9
    edges = [
        (41, 149, "m1-low-slow"),
        (42, 150, "m1-mid-medium"),
        (58, 169, "m1-mid-medium"),
        (59, 170, "m1-high-fast"),
    ]
    for pitch, speed, speaker in edges:
        assert Clip("fr", "train", "x", "fr+m1", speed, pitch, "x.flac").speaker == speaker


def test_a_fixed_set_of_speakers_says_every_clip_in_every_split():
    default = plan(["fr", "sw"], 60, seed=1)
    clips = plan(["fr", "sw"], 60, seed=1, speakers=4)
    # the same phrases in the same splits as the default corpus; only the voices are the set's
    assert [(c.lang, c.split, c.text, c.name) for c in clips] == [(c.lang, c.split, c.text, c.name) for c in default]
    voices = {(c.voice.split("+")[1], c.pitch, c.speed) for c in clips}
    assert len(voices) == 4 and len({c.speaker for c in clips}) == 4
    for c in clips:
        assert c.speaker == f"{c.voice.split('+')[1]}-p{c.pitch}-s{c.speed}"
    for lang in ("fr", "sw"):
        for split in ("train", "valid", "test"):
            assert len({c.speaker for c in clips if c.lang == lang and c.split == split}) == 4
    assert plan(["fr", "sw"], 60, seed=1, speakers=4) == clips
    assert {c.speaker for c in plan(["fr"], 60, seed=2, speakers=4)} != {c.speaker for c in clips}


def test_a_parallel_corpus_writes_translation_and_tgt_lang(tmp_path, fake_espeak):
    made = synth(tmp_path, ["sw", "en"], per_lang=20, parallel=True, quiet=True)
    rows = read_manifest(tmp_path / "train.tsv")
    assert [(u.text, u.translation, u.get("tgt_lang")) for u in rows] == [
        (u.text, u.translation, u.get("tgt_lang")) for u in made["train"]
    ]
    assert {u.get("tgt_lang") for u in rows if u.lang == "sw"} == {"en"}
    assert {u.get("tgt_lang") for u in rows if u.lang == "en"} == {"sw"}
    assert all(u.translation for u in rows)


def test_speakers_must_leave_each_speaker_test_clips(tmp_path, fake_espeak):
    with pytest.raises(ConfigError, match="--speakers must be between 2 and 3"):
        synth(tmp_path, ["fr"], per_lang=30, speakers=4, quiet=True)
    made = synth(tmp_path, ["fr"], per_lang=30, speakers=3, quiet=True)
    assert {u.speaker for u in made["test"]} == {u.speaker for u in made["train"]}
    assert {u.speaker for u in read_manifest(tmp_path / "test.tsv")} == {u.speaker for u in made["test"]}


def test_parallel_text_is_aligned_paragraph_by_paragraph_in_every_language():
    paragraphs = synth_module.parallel_paragraphs()
    assert len(paragraphs) == 50 and all(set(p) == set(languages()) for p in paragraphs.values())
    assert paragraphs["a03.1"]["en"] == "Everyone has the right to life, liberty and the security of person."
    assert paragraphs["a03.1"]["fr"].startswith("Tout individu a droit à la vie")
    units = synth_module.parallel_units("fr", "en", ["a01.1", "a03.1"])
    # Article 1 has two sentences on both sides: aligned sentence by sentence; article 3 is one
    assert [u[0] for u in units] == ["a01.1.1", "a01.1.2", "a03.1"]
    assert units[1][2] == "They are endowed with reason and conscience and should act towards one another in a " \
        "spirit of brotherhood."  # fmt: skip


def test_a_parallel_corpus_translates_into_english_and_out_of_it_and_holds_out_paragraphs_everywhere():
    clips = plan(["fr", "sw", "en"], 100, seed=0, parallel=True)
    assert clips == plan(["fr", "sw", "en"], 100, seed=0, parallel=True)
    split = synth_module.parallel_split(0)
    assert sorted(sum(split.values(), [])) == sorted(synth_module.parallel_paragraphs())
    for lang, tgt in (("fr", "en"), ("sw", "en"), ("en", "fr"), ("en", "sw")):
        for name, ids in split.items():
            expected = {(a, b) for _, a, b in synth_module.parallel_units(lang, tgt, ids)}
            got = {(c.text, c.translation) for c in clips if c.lang == lang and c.tgt_lang == tgt and c.split == name}
            assert got and got <= expected, (lang, tgt, name)
    assert {c.tgt_lang for c in clips if c.lang == "en"} == {"fr", "sw"}
    said = lambda split: {(c.lang, c.text) for c in clips if c.split == split}  # noqa: E731
    assert not said("test") & said("train") and not said("valid") & said("train")
    with pytest.raises(ConfigError, match="other languages"):
        plan(["en"], 30, seed=0, parallel=True)


@pytest.fixture
def fake_espeak(monkeypatch):
    """espeak-ng stood in for by a tone per clip (its pitch and speed decide the tone), counting the calls."""
    calls = []

    def speak(binary, clip, path):
        calls.append(clip.name)
        t = np.arange(int(16000 * clip.speed / 100)) / 16000
        sf.write(path, 0.1 * np.sin(2 * np.pi * (100 + clip.pitch) * t), 16000, format="FLAC", subtype="PCM_16")
        return len(t)

    monkeypatch.setattr(synth_module, "espeak_binary", lambda: "espeak-ng")
    monkeypatch.setattr(synth_module, "speak", speak)
    return calls


def snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_folder_that_holds_a_corpus_is_refused(tmp_path, fake_espeak):
    out = tmp_path / "corpus"
    synth(out, ["fr", "sw"], per_lang=10, seed=0, quiet=True)
    before = snapshot(out)
    for langs, seed in ((["fr", "sw"], 0), (["fr", "sw"], 1), (["pl"], 0)):  # the same corpus, or another
        with pytest.raises(ConfigError) as e:
            synth(out, langs, per_lang=10, seed=seed, quiet=True)
        assert str(out) in str(e.value) and "--overwrite" in str(e.value) and "\n" not in str(e.value)
    assert snapshot(out) == before and len(fake_espeak) == 20  # nothing spoken, nothing touched
    own = tmp_path / "mine"
    own.mkdir()
    (own / "test.tsv").write_text("path\nx.wav\n")
    with pytest.raises(ConfigError, match="holds a corpus .test.tsv."):
        synth(own, ["fr"], per_lang=10, quiet=True)
    (own / "test.tsv").unlink()
    (own / "fr").mkdir()
    (own / "fr" / "train_00000.flac").write_bytes(b"my own recording")
    with pytest.raises(ConfigError, match="files synth would write over .fr/train_00000.flac."):
        synth(own, ["fr"], per_lang=10, quiet=True)
    assert (own / "fr" / "train_00000.flac").read_bytes() == b"my own recording"


def test_overwrite_removes_the_previous_corpus_and_nothing_else(tmp_path, fake_espeak):
    out = tmp_path / "corpus"
    old = synth(out, ["fr", "sw"], per_lang=10, seed=0, quiet=True)
    (out / "notes.txt").write_text("mine")
    (out / "fr" / "mine.flac").write_bytes(b"mine")
    (tmp_path / "outside.flac").write_bytes(b"outside")
    with open(out / "valid.tsv", "a") as f:  # a row added by hand, pointing out of the folder
        f.write(f"{tmp_path / 'outside.flac'}\t1\tfr\tx\tm1-low-slow\n")
    new = synth(out, ["pl"], per_lang=10, seed=1, quiet=True, overwrite=True)
    assert all(not u.path.exists() for rows in old.values() for u in rows)
    assert not (out / "sw").exists() and (out / "fr" / "mine.flac").read_bytes() == b"mine"
    assert (out / "notes.txt").read_text() == "mine" and (tmp_path / "outside.flac").read_bytes() == b"outside"
    listed = {
        u.path.relative_to(out).as_posix()
        for split in ("train", "valid", "test")
        for u in read_manifest(out / f"{split}.tsv")
    }
    assert listed == {u.path.relative_to(out).as_posix() for rows in new.values() for u in rows}
    assert set(snapshot(out)) == listed | {"train.tsv", "valid.tsv", "test.tsv", "notes.txt", "fr/mine.flac"}
    assert {u.lang for rows in new.values() for u in rows} == {"pl"}
    again = synth(out, ["pl"], per_lang=10, seed=1, quiet=True, overwrite=True)  # the same corpus, made anew
    assert snapshot(out).keys() == set(listed | {"train.tsv", "valid.tsv", "test.tsv", "notes.txt", "fr/mine.flac"})
    assert [u.path for u in again["train"]] == [u.path for u in new["train"]]


def test_an_interrupted_run_resumes_and_another_plan_is_refused(tmp_path, fake_espeak, monkeypatch):
    out = tmp_path / "corpus"
    speak = synth_module.speak

    def dies_after_5(binary, clip, path):
        if len(fake_espeak) >= 5:
            raise KeyboardInterrupt
        return speak(binary, clip, path)

    monkeypatch.setattr(synth_module, "speak", dies_after_5)
    with pytest.raises(KeyboardInterrupt):
        synth(out, ["fr"], per_lang=10, seed=0, quiet=True)
    monkeypatch.setattr(synth_module, "speak", speak)
    assert (out / ".synth-plan.json").exists() and not (out / "train.tsv").exists()
    spoken = len(fake_espeak)
    with pytest.raises(ConfigError, match="unfinished corpus made with other settings"):
        synth(out, ["fr"], per_lang=10, seed=1, quiet=True)
    made = synth(out, ["fr"], per_lang=10, seed=0, quiet=True)  # the same plan: the spoken clips are kept
    assert (
        spoken >= 5 and len(fake_espeak) == len(set(fake_espeak)) == 10 and not (out / ".synth-plan.json").exists()
    )  # none twice
    assert sum(len(rows) for rows in made.values()) == 10 and all(u.path.exists() for u in made["train"])
