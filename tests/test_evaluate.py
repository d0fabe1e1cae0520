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
