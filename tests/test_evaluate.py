"""xlsr evaluate on a CTC model: the report equals jiwer on the normalised transcripts, per language."""

import json

import jiwer
import pytest
import soundfile as sf
from conftest import speechlike
from test_transcribe import local_ctc_model

from xlsr.errors import DataError
from xlsr.evaluate import evaluate
from xlsr.text.normalize import normalize_text
from xlsr.transcribe import transcribe


@pytest.fixture
def manifest(tmp_path):
    rows = [
        ("a.wav", "en", "Eat ten, it's so!"),
        ("b.wav", "fr", "On a toit."),
        ("c.wav", "en", "Tie it on"),
        ("d.wav", "fr", "..."),
    ]
    for i, (name, _, _) in enumerate(rows):
        sf.write(tmp_path / name, speechlike(1.0 + i / 3, seed=i), 16000)
    (tmp_path / "broken.wav").write_bytes(b"junk")
    lines = ["path\tlang\ttext", *("\t".join(r) for r in rows), "broken.wav\ten\tnothing"]
    (tmp_path / "m.tsv").write_text("\n".join(lines) + "\n")
    return tmp_path / "m.tsv"


def test_report_equals_jiwer_on_normalised_text(manifest, tmp_path):
    model = local_ctc_model()
    report = evaluate(model, manifest, json_path=tmp_path / "r.json", quiet=True)
    hyps = {t.path: normalize_text(t.text) for t in transcribe(model, [manifest], quiet=True)}
    refs = {"a.wav": "eat ten it's so", "b.wav": "on a toit", "c.wav": "tie it on"}
    paths = {name: str(manifest.parent / name) for name in refs}
    for lang, names in (("en", ["a.wav", "c.wav"]), ("fr", ["b.wav"])):
        r = [refs[n] for n in names]
        h = [hyps[paths[n]] for n in names]
        assert report.per_language[lang].wer == pytest.approx(jiwer.wer(r, h))
        assert report.per_language[lang].cer == pytest.approx(jiwer.cer(r, h))
    all_names = ["a.wav", "b.wav", "c.wav"]
    assert report.overall.wer == pytest.approx(
        jiwer.wer([refs[n] for n in all_names], [hyps[paths[n]] for n in all_names])
    )
    assert report.overall.words == 10 and report.skipped_empty == 1  # "..." normalises to nothing
    assert [f["path"] for f in report.failed] == [str(manifest.parent / "broken.wav")]
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["overall"]["wer"] == report.overall.wer and len(data["utterances"]) == 3
    table = report.table().splitlines()
    assert table[0].split() == ["language", "utts", "words", "WER", "%", "CER", "%"]
    assert [line.split()[0] for line in table[1:]] == ["en", "fr", "all"]


def test_manifest_without_text_is_a_clear_error(tmp_path):
    sf.write(tmp_path / "a.wav", speechlike(0.5), 16000)
    (tmp_path / "m.tsv").write_text("path\na.wav\n")
    with pytest.raises(DataError, match="needs a 'text' column"):
        evaluate(local_ctc_model(), tmp_path / "m.tsv", quiet=True)


def test_a_translation_model_gets_sacrebleus_bleu_and_chrf_per_language_pair(st_fixtures, tmp_path, capsys):
    """The fairseq fixture (tests/fixtures/fairseq_st): each row translated into its tgt_lang as `xlsr translate`
    does it, scored with sacrebleu 2.6's corpus_bleu / corpus_chrf, overall and per pair."""
    import numpy as np
    import sacrebleu

    from xlsr.cli import main
    from xlsr.errors import ConfigError
    from xlsr.translate import translate

    rows = [("a", "fr", "en", "the right to life"), ("b", "fr", "de", "das Recht auf Leben"),
            ("c", "es", "en", "everyone has the right")]  # fmt: skip
    for name, *_ in rows:
        sf.write(tmp_path / f"{name}.wav", np.load(st_fixtures / f"wave_{name}.npy"), 16000, subtype="FLOAT")
    lines = ["path\tlang\ttranslation\ttgt_lang", *(f"{n}.wav\t{s}\t{r}\t{t}" for n, s, t, r in rows)]
    (tmp_path / "m.tsv").write_text("\n".join([*lines, "d.wav\tfr\t\ten"]) + "\n")  # d: no audio, empty reference
    report = evaluate(st_fixtures / "st.pt", tmp_path / "m.tsv", output_dir=tmp_path / "out", max_len_b=10,
                      beam_size=2, quiet=True)  # fmt: skip
    hyps = {n: translate(st_fixtures / "st.pt", [tmp_path / f"{n}.wav"], target_lang=t, max_len_b=10, beam_size=2,
                         quiet=True)[0].text for n, _, t, _ in rows}  # fmt: skip
    refs = {n: r for n, *_, r in rows}
    for pair, names in (("fr-en", "a"), ("fr-de", "b"), ("es-en", "c")):
        expected = sacrebleu.corpus_bleu([hyps[n] for n in names], [[refs[n] for n in names]]).score
        assert report.per_pair[pair].bleu == pytest.approx(expected) and report.per_pair[pair].sentences == 1
    names = ["a", "b", "c"]
    assert report.overall.bleu == pytest.approx(sacrebleu.corpus_bleu([hyps[n] for n in names],
                                                                       [[refs[n] for n in names]]).score)  # fmt: skip
    assert report.overall.chrf == pytest.approx(sacrebleu.corpus_chrf([hyps[n] for n in names],
                                                                       [[refs[n] for n in names]]).score)  # fmt: skip
    assert len(report.failed) == 1 and "d.wav" in report.failed[0]["path"]
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["overall"]["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    assert [u["hypothesis"] for u in saved["utterances"]] == [hyps[n] for n in names]
    assert main(["evaluate", str(st_fixtures / "st.pt"), str(tmp_path / "m.tsv"), "--max-len-b", "5", "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "fr-de" in out and "BLEU: sacrebleu nrefs:1" in out and "chrF: sacrebleu" in out
    with pytest.raises(ConfigError, match="--lm: not an option for a translation model .*; it applies to CTC models"):
        evaluate(st_fixtures / "st.pt", tmp_path / "m.tsv", lm="x.arpa")
    with pytest.raises(ConfigError, match="--max-len-b: not an option for a CTC model .*translation models"):
        evaluate(None, tmp_path / "m.tsv", max_len_b=5)
    (tmp_path / "n.tsv").write_text("path\tlang\na.wav\tfr\n")
    with pytest.raises(DataError, match="n.tsv: no 'translation' column"):
        evaluate(st_fixtures / "st.pt", tmp_path / "n.tsv", quiet=True)
