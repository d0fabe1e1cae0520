"""Data where users keep it (`xlsr/data/sources.py`, `tables.py`): Common Voice releases (mp3 clips) and Hugging
Face datasets (parquet files, `save_to_disk` folders) with their bad rows, column choice by name, and commands end
to end on each format.

The datasets are written here with pyarrow alone, in the layout of the reference, Hugging Face `datasets` (checked
against datasets 5.2.0, which is not a test dependency: its `load_from_disk` reads the folders `save_to_disk` below
writes, features and ClassLabel names included; and xlsr reads what its own `save_to_disk`, `DatasetDict.save_to_disk`
and `to_parquet` write): Arrow IPC streams `data-0000i-of-0000n.arrow` + dataset_info.json + state.json, parquet with
the `huggingface` schema metadata, audio as the Audio feature's {bytes, path} struct."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import in_ci, speechlike

from xlsr.audio import load_audio
from xlsr.checkpoints import bundled_model, init
from xlsr.cli import main
from xlsr.data.manifest import BadRow, Columns, Utterance, output_names
from xlsr.data.sources import expand_inputs, read_source
from xlsr.errors import AudioError, DataError

try:
    import pyarrow as pa
    import pyarrow.parquet as pq
except ImportError:  # the [datasets] extra, in the [test] extra: under CI its tests run (and fail) without it
    pa = pq = None
needs_pyarrow = pytest.mark.skipif(
    pa is None and not in_ci(), reason="pyarrow not installed: pip install 'xlsr[datasets]'"
)

CV_HEADER = ("client_id\tpath\tsentence_id\tsentence\tsentence_domain\tup_votes\tdown_votes\tage\tgender\taccents\t"
             "variant\tlocale\tsegment")  # fmt: skip
WORDS = ["ba", "di", "ku", "lo", "me", "na", "pi", "ro"]


def mp3(path: Path, seconds: float, seed: int) -> None:
    sf.write(path, speechlike(seconds, seed=seed), 16000, format="MP3")


def cv_row(clip: str, sentence: str, client: str = "c1", locale: str = "fr") -> str:
    return "\t".join([client, clip, "s1", sentence, "", "2", "0", "twenties", "", "", "", locale, ""])


@pytest.fixture(scope="module")
def common_voice(tmp_path_factory) -> Path:
    """A Common Voice release folder: clips/*.mp3 and train/dev/test.tsv, with bad rows in train and test."""
    root = tmp_path_factory.mktemp("cv") / "fr"
    (root / "clips").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = {"train": [], "dev": [], "test": []}
    for i in range(12):
        name = f"common_voice_fr_{i}.mp3"
        mp3(root / "clips" / name, 1.0 + (i % 3) * 0.4, seed=i)
        split = "train" if i < 8 else "dev" if i < 10 else "test"
        rows[split].append(cv_row(name, " ".join(rng.choice(WORDS, 3)).capitalize() + ".", f"c{i % 2}"))
    (root / "clips" / "broken.mp3").write_bytes(np.random.default_rng(1).bytes(2000))
    rows["train"] += [
        cv_row("common_voice_fr_404.mp3", "ba di ku"),  # line 10: no such clip
        cv_row("common_voice_fr_0.mp3", ""),  # line 11: empty sentence
        "c1\tcommon_voice_fr_1.mp3\ts1\tba di",  # line 12: missing fields
        cv_row("broken.mp3", "lo me na"),  # line 13: undecodable
    ]
    rows["test"].append(cv_row("broken.mp3", "lo me na"))
    for split, lines in rows.items():
        (root / f"{split}.tsv").write_text("\n".join([CV_HEADER, *lines]) + "\n", encoding="utf-8")
    (root / "validated.tsv").write_text(CV_HEADER + "\n", encoding="utf-8")
    return root


def test_a_common_voice_folder_gives_the_split_of_the_role_with_its_bad_rows_named(common_voice):
    rows = read_source(common_voice, Columns(need_text=True), "train")
    assert rows.origin == common_voice / "train.tsv"
    first = rows.utterances[0]
    assert first.path == common_voice / "clips" / "common_voice_fr_0.mp3" and first.lang == "fr"
    assert first.speaker == "c0" and first.text and first.extra["age"] == "twenties"
    assert first.get("sentence") == first.text and first.get("locale") == "fr"
    train = common_voice / "train.tsv"
    assert [str(b) for b in rows.bad] == [f"{train}:11: empty sentence",
                                          f"{train}:12: expected 13 tab-separated columns, got 4"]  # fmt: skip
    assert len(rows.utterances) == 10  # the missing and the broken clip are for the decoder to name
    assert read_source(common_voice, Columns(), "train").bad == rows.bad[1:]  # no text needed: the empty one stays
    assert read_source(common_voice, role="valid").origin == common_voice / "dev.tsv"
    assert read_source(common_voice).origin == common_voice / "test.tsv"
    direct = read_source(common_voice / "dev.tsv", Columns(need_text=True))
    assert [u.path.name for u in direct.utterances] == ["common_voice_fr_8.mp3", "common_voice_fr_9.mp3"]


def test_a_wrong_column_name_is_one_line_listing_the_columns(common_voice):
    with pytest.raises(DataError) as e:
        read_source(common_voice / "dev.tsv", Columns(text="sentense"))
    message = str(e.value)
    assert "\n" not in message and message.startswith(
        f"{common_voice / 'dev.tsv'}: no column 'sentense' (--text-column)"
    )
    assert message.endswith("its columns: " + CV_HEADER.replace("\t", ", "))
    with pytest.raises(DataError, match=r"no column 'gendre' \(--label-column\); its columns: client_id, path"):
        read_source(common_voice, Columns(label="gendre"), "train")
    (common_voice.parent / "plain.tsv").write_text("path\tlang\na.wav\tfr\n")
    with pytest.raises(DataError, match="needs a 'text' column .*; its columns: path, lang$"):
        read_source(common_voice.parent / "plain.tsv", Columns(need_text=True))


def test_mp3_clips_and_a_common_voice_test_split_through_transcribe(common_voice, capsys):
    code = main(["transcribe", str(common_voice), "--quiet"])
    out, err = capsys.readouterr()
    assert code == 1  # the broken clip
    clips = common_voice / "clips"
    assert [line.split("\t")[0] for line in out.splitlines()] == [
        str(clips / f"common_voice_fr_{i}.mp3") for i in (10, 11)
    ]
    assert err.splitlines()[0].startswith(f"xlsr: error: {common_voice / 'clips' / 'broken.mp3'}: ")


# -- Hugging Face datasets ---------------------------------------------------------------------------------------
FEATURES = {
    "audio": {"sampling_rate": 16000, "_type": "Audio"},
    "transcription": {"dtype": "string", "_type": "Value"},
    "language": {"names": ["de", "fr"], "_type": "ClassLabel"},
    "speaker_id": {"dtype": "int64", "_type": "Value"},
}


def flac_bytes(seconds: float, seed: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, speechlike(seconds, seed=seed), 16000, format="FLAC")
    return buf.getvalue()


def dataset_table(folder: Path, n: int = 6, seed: int = 0):
    """n rows: audio as embedded bytes (mp3 and flac), one as a path to a clip beside the table, one with no audio
    at all, one with undecodable bytes, one with an empty transcription."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    audio, text, lang = [], [], []
    for i in range(n):
        if i == 1:  # a path, relative to the table's folder, no bytes
            mp3(folder / "clip1.mp3", 1.2, seed=seed + i)
            audio.append({"bytes": None, "path": "clip1.mp3"})
        elif i % 2 == 0:
            mp3(folder / "tmp.mp3", 1.0 + i / 5, seed=seed + i)
            audio.append({"bytes": (folder / "tmp.mp3").read_bytes(), "path": f"utt{i}.mp3"})
        else:
            audio.append({"bytes": flac_bytes(1.0 + i / 5, seed + i), "path": None})
        text.append(" ".join(rng.choice(WORDS, 3)))
        lang.append(i % 2)
    (folder / "tmp.mp3").unlink(missing_ok=True)
    audio += [
        None,
        {"bytes": b"not audio at all" * 50, "path": "junk.mp3"},
        {"bytes": flac_bytes(1.0, 99), "path": None},
    ]
    text += ["di ku", "lo me", ""]
    lang += [0, 1, 1]
    return pa.table(
        {
            "audio": pa.array(audio, type=pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
            "transcription": pa.array(text),
            "language": pa.array(lang, type=pa.int64()),
            "speaker_id": pa.array(list(range(len(text))), type=pa.int64()),
        }
    ).replace_schema_metadata({"huggingface": json.dumps({"info": {"features": FEATURES}})})


def save_to_disk(folder: Path, table, shards: int = 1) -> None:
    """`Dataset.save_to_disk`'s layout: data-0000i-of-0000n.arrow (Arrow IPC streams), dataset_info.json, state.json."""
    folder.mkdir(parents=True, exist_ok=True)
    cuts = np.linspace(0, table.num_rows, shards + 1).astype(int)
    names = [f"data-{i:05d}-of-{shards:05d}.arrow" for i in range(shards)]
    for name, a, b in zip(names, cuts[:-1], cuts[1:]):
        with pa.OSFile(str(folder / name), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table.slice(a, b - a))
    info = {"citation": "", "description": "", "features": FEATURES, "homepage": "", "license": ""}
    (folder / "dataset_info.json").write_text(json.dumps(info, indent=2))
    state = {"_data_files": [{"filename": n} for n in names], "_fingerprint": "0123456789abcdef",
             "_format_columns": None, "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False,
             "_split": None}  # fmt: skip
    (folder / "state.json").write_text(json.dumps(state, indent=2))


@pytest.fixture(scope="module")
def parquet_file(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pq")
    table = dataset_table(root)
    pq.write_table(table, root / "test-00000-of-00001.parquet", row_group_size=4)
    return root / "test-00000-of-00001.parquet"


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    """A DatasetDict.save_to_disk folder: dataset_dict.json, train/ (two shards) and test/."""
    root = tmp_path_factory.mktemp("hf") / "ds"
    save_to_disk(root / "train", dataset_table(root / "train", n=8, seed=10), shards=2)
    save_to_disk(root / "test", dataset_table(root / "test", n=4, seed=20))
    (root / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    return root


@needs_pyarrow
def test_parquet_rows_with_audio_as_bytes_or_paths_labels_by_name_and_bad_rows(parquet_file):
    rows = read_source(parquet_file, Columns(need_text=True, label="language"))
    name = str(parquet_file)
    assert [str(b) for b in rows.bad] == [f"{name}[6]: no audio (neither bytes nor a path in column 'audio')",
                                          f"{name}[8]: empty transcription"]  # fmt: skip
    us = rows.utterances
    assert len(us) == 7 and str(us[0].path) == f"{name}[0]" and us[1].path == parquet_file.parent / "clip1.mp3"
    assert [u.get("language") for u in us[:3]] == ["de", "fr", "de"]  # ClassLabel ids -> names
    assert us[0].text and us[0].get("speaker_id") == "0" and us[0].speaker == "0"
    a = load_audio(us[0].path)
    assert len(a) == pytest.approx(16000, abs=1200)  # mp3 bytes, decoded from memory
    np.testing.assert_allclose(load_audio(us[3].path), speechlike(1.6, seed=3), atol=1e-4)  # flac bytes
    with pytest.raises(AudioError) as e:
        load_audio(us[6].path)
    assert str(e.value).startswith(f"{name}[7]: not a readable audio file")
    assert output_names([us[0].path, us[1].path, us[3].path]) == ["utt0", "clip1", "3"]  # own names, else the row
    unlabelled = parquet_file.parent / "unlabelled.parquet"  # ClassLabel -1: datasets' "no label"
    pq.write_table(dataset_table(parquet_file.parent / "u", n=1).slice(0, 1).set_column(2, "language", pa.array([-1])),
                   unlabelled)  # fmt: skip
    assert read_source(unlabelled, Columns(label="language")).bad == [BadRow(f"{unlabelled}[0]", "empty language")]
    with pytest.raises(DataError, match=r"no column 'sound' \(--audio-column\); its columns: audio, transcription"):
        read_source(parquet_file, Columns(audio="sound"))
    with pytest.raises(DataError, match="column 'speaker_id' holds int64, not audio"):
        read_source(parquet_file, Columns(audio="speaker_id"))


@needs_pyarrow
def test_a_save_to_disk_folder_reads_as_datasets_loads_it(dataset_dir):
    rows = read_source(dataset_dir, Columns(need_text=True), "train")  # dataset_dict.json: the train split
    assert rows.origin == dataset_dir / "train"
    train = dataset_dir / "train"
    assert [str(b) for b in rows.bad] == [f"{train}[8]: no audio (neither bytes nor a path in column 'audio')",
                                          f"{train}[10]: empty transcription"]  # fmt: skip
    assert [str(u.path) for u in rows.utterances if not isinstance(u.path, Path)][:3] == [f"{train}[0]", f"{train}[2]",
                                                                                          f"{train}[3]"]  # fmt: skip
    shard2 = next(u.path for u in rows.utterances if str(u.path) == f"{train}[7]")  # named by its row in the dataset
    assert shard2.row == 7 - 5 and shard2.file.name == "data-00001-of-00002.arrow"
    assert len(load_audio(shard2)) > 0
    assert read_source(dataset_dir).origin == dataset_dir / "test"
    with pytest.raises(DataError, match=r"no validation or valid or dev split \(it has: test, train\)"):
        read_source(dataset_dir, role="valid")
    single = read_source(dataset_dir / "test", Columns(text="transcription", label="language"))
    assert [u.get("language") for u in single.utterances][:2] == ["de", "fr"]


@needs_pyarrow
def test_expand_inputs_gives_one_input_error_per_bad_row_in_order(parquet_file):
    entries = expand_inputs([parquet_file, parquet_file.parent / "missing.parquet"])
    kinds = [type(e).__name__ for e in entries]
    assert kinds == ["Utterance"] * 6 + ["InputError"] + ["Utterance"] * 2 + ["InputError"]
    assert entries[6].path == f"{parquet_file}[6]" and entries[-1].cause == "no such file or directory"
    assert isinstance(expand_inputs([Utterance(Path("a.wav"))])[0], Utterance)


@needs_pyarrow
def test_evaluate_on_parquet_names_the_bad_rows_and_scores_the_others(parquet_file, capsys):
    code = main(["evaluate", str(parquet_file), "--text-column", "transcription", "--quiet"])
    out, err = capsys.readouterr()
    assert (
        code == 1 and out.splitlines()[0].split()[0] == "language" and out.splitlines()[-1].split()[:2] == ["all", "6"]
    )
    name = str(parquet_file)
    lines = err.splitlines()
    assert lines[:2] == [f"xlsr: error: {name}[6]: no audio (neither bytes nor a path in column 'audio')",
                         f"xlsr: error: {name}[8]: empty transcription"]  # fmt: skip
    assert lines[2].startswith(f"xlsr: error: {name}[7]: not a readable audio file") and len(lines) == 4
    assert lines[3] == "xlsr: 3 utterances could not be scored"
    assert main(["evaluate", str(parquet_file), "--text-column", "text"]) == 1
    assert capsys.readouterr().err.strip() == (
        f"xlsr: error: {name}: no column 'text' (--text-column); its columns: audio, transcription, language, "
        "speaker_id"
    )


@needs_pyarrow
def test_identify_and_evaluate_a_classifier_on_a_save_to_disk_folder(dataset_dir, capsys):
    test = dataset_dir / "test"
    assert main(["identify", str(dataset_dir), "--format", "json", "--quiet"]) == 1  # the test split
    results = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["path"] for r in results][:2] == [f"{test}[0]", str(test / "clip1.mp3")]
    code = main(["evaluate", "--model", str(bundled_model("lid")), str(test), "--label-column", "language", "--quiet"])
    captured = capsys.readouterr()
    assert code == 1 and "accuracy" in captured.out.lower()
    assert f"xlsr: error: {test}[4]: no audio" in captured.err


@needs_pyarrow
def test_finetune_ctc_on_a_common_voice_folder_and_pretrain_on_a_save_to_disk_folder(common_voice, dataset_dir,
                                                                                       tmp_path, capsys):  # fmt: skip
    from xlsr.finetuning.ctc import finetune_ctc
    from xlsr.pretraining.task import pretrain

    init(tmp_path / "init", preset="tiny", seed=0)
    args = ["num_workers=0", "max_tokens=200000", "freeze_finetune_updates=0", "max_update=2", "log_interval=1",
            "validate_interval_updates=2", "save_interval_updates=2"]  # fmt: skip
    result = finetune_ctc(str(tmp_path / "init"), common_voice, common_voice, tmp_path / "ctc", set=args, quiet=True)
    assert result["update"] == 2 and (tmp_path / "ctc" / "best" / "vocab.json").exists()
    train = common_voice / "train.tsv"
    logged = capsys.readouterr().err
    assert f"train: {train}:11: empty sentence (skipped)" in logged
    assert f"train: {train}:12: expected 13 tab-separated columns, got 4 (skipped)" in logged
    assert "common_voice_fr_404.mp3: no such file" in logged and "broken.mp3" in logged
    tiny = ["max_tokens=100000", "max_sample_size=48000", "num_workers=1", "warmup_updates=1", "num_negatives=5",
            "max_update=2", "min_sample_size=8000"]  # fmt: skip
    result = pretrain(dataset_dir, tmp_path / "pt", valid=dataset_dir / "test", preset="tiny", set=tiny, quiet=True)
    assert result["update"] == 2


@needs_pyarrow
def test_without_pyarrow_the_error_says_what_to_install(parquet_file, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name.startswith("pyarrow"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(DataError, match=r"needs pyarrow: pip install pyarrow \(or pip install 'xlsr\[datasets\]'\)"):
        read_source(parquet_file)
    assert BadRow("a", "b").where == "a"
