"""checkpoints/io.py: the safe loader's answer to every file it cannot read is one line that says what the
file is not and which formats xlsr reads (never PyTorch's advice to load unsafely), and a pickle that asks
for code is refused by name without running it; atomic writes leave the old file or the new one."""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from xlsr import load_model
from xlsr.checkpoints.io import atomic_torch_save, safe_torch_load
from xlsr.errors import CheckpointError

FORMATS = ("Hugging Face model directory", "fairseq .pt checkpoint", "xlsr checkpoint")


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-checkpoint",))


class _SomeClass:
    pass


def _random(seed: int, first: bytes = b"") -> bytes:
    rng = np.random.default_rng(seed)
    return first + rng.bytes(int(rng.integers(1, 5000)))


def _torch_bytes(tmp_path: Path, legacy: bool = False) -> bytes:
    obj = {"model": {"w": torch.arange(300.0)}, "cfg": {"a": 1}}
    torch.save(obj, tmp_path / "src.pt", _use_new_zipfile_serialization=not legacy)
    return (tmp_path / "src.pt").read_bytes()


def _not_torch_zip(tmp_path: Path) -> bytes:
    with zipfile.ZipFile(tmp_path / "src.zip", "w") as z:
        z.writestr("notes/readme.txt", "a zip, but no torch file")
    return (tmp_path / "src.zip").read_bytes()


UNREADABLE = {  # name -> (bytes, what the message says the file is)
    "empty": (lambda t: b"", "the file is empty"),
    "text": (lambda t: b"not a checkpoint at all\n" * 10, "neither a PyTorch zip archive nor a pickle"),
    # random bytes that PyTorch's unpickler once answered with a 30-line IndexError traceback
    **{
        f"random-{s}": (lambda t, s=s: _random(s), "neither a PyTorch zip archive nor a pickle") for s in (64, 122, 151)
    },
    "random-after-zip-magic": (lambda t: _random(1, b"PK\x03\x04"), "a truncated or damaged zip archive"),
    "random-after-pickle-magic": (lambda t: _random(2, b"\x80\x02"), "a pickle that is not a PyTorch checkpoint"),
    "truncated-zip": (lambda t: _torch_bytes(t)[:700], "a truncated or damaged zip archive"),
    "truncated-legacy-pickle": (lambda t: _torch_bytes(t, legacy=True)[:400], "or a damaged one"),
    "zip-not-torch": (_not_torch_zip, "a zip archive, but not a PyTorch file"),
    "plain-pickle": (lambda t: pickle.dumps({"model": [1, 2]}, protocol=4), "a pickle that is not a PyTorch"),
}


@pytest.mark.parametrize("name", list(UNREADABLE))
@pytest.mark.parametrize("read", [safe_torch_load, load_model], ids=["safe_torch_load", "load_model"])
def test_an_unreadable_checkpoint_is_one_line_naming_the_formats_xlsr_reads(tmp_path, name, read):
    make, what = UNREADABLE[name]
    path = tmp_path / "model.pt"
    path.write_bytes(make(tmp_path))
    with pytest.raises(CheckpointError) as e:
        read(path)
    message = str(e.value)
    assert message.startswith(f"{path}: not a readable PyTorch checkpoint: ") and "\n" not in message
    assert what in message and all(f in message for f in FORMATS), message
    assert "weights_only" not in message and "Weights only" not in message and "trust" not in message


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize(
    "payload, named",
    [(_RunsCode(), r"(posix|os)\.system"), (_SomeClass(), "test_io._SomeClass")],
    ids=["code", "class"],
)
def test_a_disallowed_global_is_named_and_not_run(tmp_path, monkeypatch, legacy, payload, named):
    monkeypatch.chdir(tmp_path)
    torch.save({"model": {}, "x": payload}, tmp_path / "evil.pt", _use_new_zipfile_serialization=not legacy)
    for read in (safe_torch_load, load_model):
        with pytest.raises(CheckpointError, match=rf"evil.pt: refused to load: the file asks to run or build {named}"):
            read(tmp_path / "evil.pt")
        with pytest.raises(CheckpointError) as e:
            read(tmp_path / "evil.pt")
        assert "it was not run" in str(e.value) and "\n" not in str(e.value) and "weights_only" not in str(e.value)
    assert not (tmp_path / "pwned-by-checkpoint").exists()


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_readable_torch_files_still_load(tmp_path, legacy):
    torch.save({"w": torch.arange(5.0), "n": 3}, tmp_path / "ok.pt", _use_new_zipfile_serialization=not legacy)
    loaded = safe_torch_load(tmp_path / "ok.pt")
    assert torch.equal(loaded["w"], torch.arange(5.0)) and loaded["n"] == 3


def test_loading_raises_no_warnings(tmp_path):
    """PyTorch warns about pickle protocols it did not write; that is about the file, not for the user."""
    (tmp_path / "p4.pt").write_bytes(pickle.dumps({"model": {}}, protocol=4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(CheckpointError):
            safe_torch_load(tmp_path / "p4.pt")
    assert [str(w.message) for w in caught] == []


def test_atomic_save_replaces_the_file_in_one_step(tmp_path):
    atomic_torch_save({"v": 1}, tmp_path / "c.pt")
    atomic_torch_save({"v": 2}, tmp_path / "c.pt")
    assert safe_torch_load(tmp_path / "c.pt") == {"v": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]  # no temporary left behind
