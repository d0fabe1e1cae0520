"""The Python API and the command line agree: every command's options are its function's arguments, with the
same names and defaults; every public function stays callable in any order, any number of times; a model that
was named and cannot be found stops the command before any work."""

from __future__ import annotations

import argparse
import inspect
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from conftest import speechlike

import xlsr
from xlsr.cli import build_parser, main

FUNCTIONS = {
    "info": xlsr.info,
    "convert": xlsr.convert,
    "init": xlsr.init,
    "features": xlsr.features,
    "transcribe": xlsr.transcribe,
    "identify": xlsr.identify,
    "translate": xlsr.translate,
    "evaluate": xlsr.evaluate,
    "synth": xlsr.synth,
    "pretrain": xlsr.pretrain,
    "finetune ctc": xlsr.finetune_ctc,
    "finetune classify": xlsr.finetune_classify,
    "finetune st": xlsr.finetune_st,
    "serve": xlsr.serve,
}
CLI_ONLY = {
    "help",
    "json",
    "json_path",
    "out",
    "print_config",
}  # info's table-or-JSON switch; the old spellings (aliases)
RENAMED = {("evaluate", "audio"): "manifest", ("convert", "src"): "src"}  # positional names shown to the user


def subcommands():
    def choices(parser):
        return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices

    top = choices(build_parser())
    return {**top, **{f"finetune {name}": p for name, p in choices(top["finetune"]).items()}}


@pytest.mark.parametrize("command", sorted(FUNCTIONS))
def test_every_option_is_an_argument_of_the_function_with_the_same_default(command):
    params = inspect.signature(FUNCTIONS[command]).parameters
    for action in subcommands()[command]._actions:
        name = RENAMED.get((command, action.dest), action.dest)
        if name in CLI_ONLY and not (name == "out" and "out" in params):  # `out`: the training commands' own
            continue
        if command == "synth" and name == "langs":
            continue
        assert name in params, f"{command} --{name}: no such argument of xlsr.{command}"
        default = params[name].default
        if default is not inspect.Parameter.empty and action.default is not None:
            cli = tuple(action.default) if isinstance(action.default, list) else action.default
            assert cli == default, f"{command} --{name}: CLI default {action.default!r}, Python {default!r}"
        if default is not inspect.Parameter.empty and action.default is None and action.const is None:
            assert default is None or action.option_strings == [], f"{command} --{name}: Python default {default!r}"


# Python arguments that no command line can give (objects, callbacks), each with why
PYTHON_ONLY = {
    ("evaluate", "normalization"): "a TextNormalization object (the CLI scores with the default normalisation)",
    ("transcribe", "on_result"): "a callback called with each file's result as soon as it is done",
}


@pytest.mark.parametrize("command", sorted(FUNCTIONS))
def test_every_argument_of_the_function_is_an_option_of_the_command(command):
    dests = {RENAMED.get((command, a.dest), a.dest) for a in subcommands()[command]._actions}
    for name in inspect.signature(FUNCTIONS[command]).parameters:
        assert name in dests or (command, name) in PYTHON_ONLY, f"xlsr.{command}({name}=...): no option of {command}"


def test_public_functions_stay_callable_after_their_modules_are_imported():
    code = (
        "import importlib, xlsr\n"
        "for name in ('transcribe', 'evaluate', 'synth', 'identify', 'features', 'translate'):\n"
        "    importlib.import_module('xlsr.' + name)\n"
        "    assert callable(getattr(xlsr, name)), name\n"
        "for name in ('pretrain', 'finetune_ctc', 'finetune_classify', 'finetune_st'):\n"
        "    assert callable(getattr(xlsr, name)) and callable(getattr(xlsr, name)), name\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_transcribe_twice_and_the_bundled_model_when_none_is_named(tmp_path):
    sf.write(tmp_path / "a.wav", speechlike(1.0), 16000)
    first = xlsr.transcribe(None, [tmp_path / "a.wav"], quiet=True)
    second = xlsr.transcribe(None, [tmp_path / "a.wav"], quiet=True)
    assert first[0].text == second[0].text and "assets/model/asr" in first[0].model
    assert xlsr.identify(None, [tmp_path / "a.wav"], quiet=True)[0].top
    assert "assets/model/st" in xlsr.translate(None, [tmp_path / "a.wav"], quiet=True)[0].model


@pytest.mark.parametrize("command", ["transcribe", "identify", "features", "translate"])
def test_a_mistyped_model_stops_the_command_before_any_work(command, tmp_path, capsys):
    sf.write(tmp_path / "clip.wav", speechlike(1.0), 16000)
    out = ["--output-dir", str(tmp_path / "out")]
    for argv in ([command, "/mistyped/model", str(tmp_path / "clip.wav"), *out],
                 [command, "--model", "/mistyped/model", str(tmp_path / "clip.wav"), *out]):  # fmt: skip
        assert main(argv) == 1
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and "/mistyped/model" in err[0] and "no such" in err[0] and "model" in err[0]
        assert not (tmp_path / "out").exists()


def test_a_mistyped_model_stops_evaluate_before_any_work(tmp_path, capsys):
    sf.write(tmp_path / "clip.wav", speechlike(1.0), 16000)
    (tmp_path / "m.tsv").write_text("path\ttext\nclip.wav\ta\n")
    out = ["--output-dir", str(tmp_path / "out")]
    for argv in (["evaluate", "/mistyped/model", str(tmp_path / "m.tsv"), *out],
                 ["evaluate", "--model", "/mistyped/model", str(tmp_path / "m.tsv"), *out]):  # fmt: skip
        assert main(argv) == 1
        captured = capsys.readouterr()
        err = captured.err.splitlines()
        assert len(err) == 1 and "/mistyped/model" in err[0] and "no such" in err[0] and captured.out == ""
        assert not (tmp_path / "out").exists()


def test_print_config_lists_each_training_commands_own_keys_with_their_defaults(capsys):
    for command, has_cache in (("ctc", True), ("st", True), ("classify", False)):
        with pytest.raises(SystemExit) as e:
            main(["finetune", command, "--print-config"])
        out = capsys.readouterr().out
        assert e.value.code == 0 and out.startswith(f"# xlsr finetune {command}: configuration keys and defaults\n")
        assert "\nmax_update: " in out and "\nthreads: null" in out
        assert ("\nfeature_cache_gb: 4.0" in out) == has_cache, (command, out)


def test_a_missing_data_file_first_is_a_missing_input_not_a_missing_model(tmp_path, capsys):
    sf.write(tmp_path / "clip.wav", speechlike(1.0), 16000)
    for name in ("test.parquet", "train.arrow", "dev.tsv"):
        code = main(["transcribe", str(tmp_path / name), str(tmp_path / "clip.wav"), "--quiet"])
        captured = capsys.readouterr()
        assert code == 1 and "no such model" not in captured.err and "no such file" in captured.err
        assert "clip.wav" in captured.out  # the bundled model did the other input


def test_features_of_a_folder_with_a_corrupt_file_writes_the_others(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    sf.write(tmp_path / "in" / "good.wav", speechlike(1.0), 16000)
    (tmp_path / "in" / "bad.mp3").write_bytes(np.random.default_rng(0).bytes(3000))
    code = main(["features", str(tmp_path / "in"), "--output-dir", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.splitlines()
    assert code == 1 and (tmp_path / "out" / "good.npy").exists() and not (tmp_path / "out" / "bad.npy").exists()
    assert err[0].startswith(f"xlsr: error: {tmp_path / 'in' / 'bad.mp3'}: ") and len(err) == 2


def test_evaluate_refuses_the_options_of_the_other_kind_of_model(tmp_path):
    (tmp_path / "m.tsv").write_text("path\ttext\nx.wav\thello\n")
    with pytest.raises(xlsr.XlsrError, match="--lexicon, --beam-size: not an option for a classification model"):
        xlsr.evaluate(xlsr.checkpoints.bundled_model("lid"), tmp_path / "m.tsv", beam_size=5, lexicon="w.txt")
    with pytest.raises(xlsr.XlsrError, match="--crops: not an option for a CTC model"):
        xlsr.evaluate(None, tmp_path / "m.tsv", crops=3)
