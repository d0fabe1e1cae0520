"""Datasets and batches (`xlsr/data/dataset.py`): the batch legend against what each task's collate returns,
and unreadable audio left out of a batch."""

from __future__ import annotations

import re

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import speechlike

import xlsr.data.dataset as dataset
from xlsr.checkpoints import init
from xlsr.data.dataset import ReadableOnly
from xlsr.finetuning.classify import ClassificationTask, ClassifyConfig
from xlsr.finetuning.ctc import CTCConfig, CTCTask
from xlsr.pretraining.task import PretrainConfig, PretrainTask
from xlsr.training.config import build_config
from xlsr.training.distributed import World


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    rows = ["path\tsamples\tlang\ttext"]
    for i in range(6):
        x = speechlike(1.0 + 0.25 * i, seed=i)
        sf.write(root / f"u{i}.wav", x, 16000)
        rows.append(f"u{i}.wav\t{len(x)}\t{['fr', 'sw'][i % 2]}\tba di ku")
    (root / "train.tsv").write_text("\n".join(rows) + "\n")
    init(root / "init", preset="tiny", seed=0)
    return root


def legend() -> dict[str, set[str]]:
    """The batch keys the module docstring documents, per task ('every task', 'pretraining', ...)."""
    text = dataset.__doc__.split("A collated batch")[1].split("The sampler")[0]
    groups: dict[str, set[str]] = {}
    for line in text.splitlines():
        if group := re.fullmatch(r" {4}(\w[\w ]*):", line):
            current = groups.setdefault(group.group(1), set())
        elif re.match(r" {8}\w", line):  # (continuation lines are indented further)
            current.update(re.findall(r"\b(\w+)(?=(?:, \w+)*: )", line))
    return groups


def test_the_batch_legend_documents_exactly_what_each_task_collates(corpus):
    documented = legend()
    assert set(documented) == {"every task", "pretraining", "CTC", "classification"}
    common = documented["every task"] - {"empty"}
    base = ["num_workers=0", "max_tokens=200000", "mask_channel_length=4"]
    data, start = (corpus / "train.tsv", corpus / "train.tsv"), str(corpus / "init")
    tasks = {
        "pretraining": PretrainTask(build_config(PretrainConfig, None, ["num_negatives=5"]), data[0], None, start),
        "CTC": CTCTask(build_config(CTCConfig, None, base), *data, start),
        "classification": ClassificationTask(
            build_config(ClassifyConfig, None, [*base, "crop_seconds=1.0"]), *data, start
        ),  # fmt: skip
    }
    for name, task in tasks.items():
        torch.manual_seed(0)
        train, *_ = task.datasets(task.build_model(), World())
        batch = ReadableOnly(task.collate)([train[(i, 0)] for i in range(3)])
        assert set(batch) == common | documented[name], name
        assert batch["audio"].shape[0] == 3 and batch["unreadable"] == []


def test_unreadable_items_are_left_out_of_their_batch_and_listed(corpus, tmp_path):
    (tmp_path / "bad.wav").write_bytes(b"RIFF" + np.random.default_rng(0).bytes(2000))
    rows = (corpus / "train.tsv").read_text().splitlines()
    rows = [rows[0], f"{corpus / 'u0.wav'}\t16000\tfr\tba", f"{tmp_path / 'bad.wav'}\t16000\tfr\tdi"]
    (tmp_path / "m.tsv").write_text("\n".join(rows) + "\n")
    task = PretrainTask(build_config(PretrainConfig, None, ["num_negatives=5"]), tmp_path / "m.tsv", None,
                        str(corpus / "init"))  # fmt: skip
    train, *_ = task.datasets(task.build_model(), World())
    bad = train[(1, 0)]
    assert "audio" not in bad and str(tmp_path / "bad.wav") in bad["error"]
    collate = ReadableOnly(task.collate)
    batch = collate([train[(0, 0)], bad])
    assert batch["audio"].shape[0] == 1 and batch["unreadable"] == [(str(tmp_path / "bad.wav"), bad["error"])]
    assert collate([bad]) == {"unreadable": [(str(tmp_path / "bad.wav"), bad["error"])], "empty": True}
