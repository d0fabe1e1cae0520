"""The `xlsr` command line: parses, calls the library function of the same name, prints.

Errors a user can cause are printed on one line (`xlsr: error: ...`) with a non-zero exit code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Callable

from . import __version__
from .errors import ConfigError, OldSpelling, XlsrError

MODEL_HELP = (
    "a Hugging Face model directory, a fairseq .pt checkpoint, an xlsr checkpoint, or a hub id "
    "(downloaded only if huggingface_hub is installed and the network allows)"
)
AUDIO_HELP = (
    "audio files (wav, flac, ogg, opus, mp3; m4a/webm/video with PyAV), folders (searched recursively) "
    "or manifests (.tsv with a 'path' column)"
)
DATA_HELP = (
    "a TSV manifest (xlsr's, fairseq's, or a Common Voice train.tsv/dev.tsv/test.tsv), a Common Voice release folder "
    "(clips/ and its TSVs), a Hugging Face dataset saved with save_to_disk, or parquet files (a file or a folder)"
)
COLUMN_HELP = {
    "audio": "the audio column of a data source (default: 'path' in a TSV; 'audio' or the Audio feature in a "
    "dataset): encoded bytes or file paths",
    "text": "the transcripts' column (default: 'text', else 'sentence' as in Common Voice, or 'transcription')",
}
USE_MODEL_HELP = (
    f"the model: {MODEL_HELP}. Left out, the bundled reference model. (The model may also come first among "
    "the inputs when it is a model directory or checkpoint file that exists.)"
)


def cmd_info(args: argparse.Namespace) -> int:
    from .checkpoints import info

    data = info(args.model)
    if args.json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
        return 0
    pre = data["preprocessing"]
    print(f"source        {data['source']}")
    print(f"head          {data['head']}")
    print(f"layout        {data['layout']}")
    print(f"transformer   {data['layers']} layers, dim {data['dim']}, FFN {data['ffn_dim']}, {data['heads']} heads")
    print(f"conv layers   {len(data['conv_layers'])} x (dim, kernel, stride) = {data['conv_layers']}")
    print(f"frame         {data['frame_ms']:g} ms")
    print(f"parameters    {data['parameters']:,} ({data['encoder_parameters']:,} in the encoder)")
    if "codebook" in data:
        print(f"codebook      {data['codebook']}")
    norm = "zero mean, unit variance" if pre["do_normalize"] else "none"
    print(f"input         {pre['sample_rate']} Hz mono, normalisation: {norm}")
    if "adapter" in data:
        print(f"adapter       {data['adapter']}")
        print(f"decoder       {data['decoder']}")
        print(f"vocabulary    {data['vocabulary_size']:,} tokens")
    if "languages" in data:
        print(f"languages     {len(data['languages'])}: {' '.join(data['languages'])}")
    if "vocabulary" in data:
        vocab = data["vocabulary"]
        print(f"vocabulary    {len(vocab)} tokens: {' '.join(vocab)}")
    if "labels" in data:
        print(f"labels        {len(data['labels'])}: {' '.join(data['labels'])}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .checkpoints import convert

    done = convert(args.src, args.dst, dict_path=args.dict_path, spm_path=args.spm_path, encoder_only=args.encoder_only)
    what = f"{done.model.cfg.head} head" if hasattr(done.model.cfg, "head") else type(done.model).__name__
    print(f"wrote {args.dst} ({what}, {done.model.num_parameters():,} parameters)")
    if done.left_out:
        print(f"xlsr: note: left out {done.left_out}", file=sys.stderr)
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from .checkpoints import init

    model = init(args.out, preset=args.preset, seed=args.seed)
    print(f"wrote {args.out}: a new {args.preset} model, {model.num_parameters():,} parameters (random weights)")
    return 0


def model_and_audio(args: argparse.Namespace, kind: str) -> tuple[str | None, list[str]]:
    """--model and the audio inputs (`checkpoints.model_and_inputs` decides; `kind` names the work for its error)."""
    from .checkpoints import model_and_inputs

    model, items = model_and_inputs(args.model, list(args.audio), kind)
    if not items:
        raise ConfigError("no audio given")
    return model, items


def cmd_features(args: argparse.Namespace) -> int:
    from .driver import is_main_process, summarize
    from .features import features

    model, audio = model_and_audio(args, "extracted")
    names = WINDOW_OPTIONS + HARDWARE_OPTIONS + DATA_OPTIONS + ("skip_existing", "quiet")
    results = features(model, audio, output_dir=args.output_dir, layer=args.layer, pool=args.pool, out=args.out,
                       **options(args, names))  # fmt: skip
    if not args.quiet:
        for r in results:
            if r.output:
                print(f"{r.path} -> {r.output}")
    return summarize(results, "feature files", quiet=not is_main_process())


def cmd_transcribe(args: argparse.Namespace) -> int:
    from .driver import check_stdout_format, is_main_process, summarize
    from .transcribe import print_transcripts, transcribe

    model, audio = model_and_audio(args, "transcribed")
    check_stdout_format(args.format, args.output_dir, audio)
    names = OUTPUT_OPTIONS + SPEECH_OPTIONS + WINDOW_OPTIONS + CTC_OPTIONS + HARDWARE_OPTIONS + DATA_OPTIONS
    results = transcribe(model, audio, **options(args, names))
    if args.output_dir is None and is_main_process():
        print_transcripts(results, args.format)
    return summarize(results, "transcripts", quiet=not is_main_process())


def cmd_identify(args: argparse.Namespace) -> int:
    from .driver import check_stdout_format, is_main_process, summarize
    from .identify import identify, print_identifications

    model, audio = model_and_audio(args, "identified")
    check_stdout_format(args.format, args.output_dir, audio)
    names = OUTPUT_OPTIONS + SPEECH_OPTIONS + ("chunk_seconds", "batch_seconds") + HARDWARE_OPTIONS + DATA_OPTIONS
    results = identify(model, audio, top_k=args.top_k, **options(args, names))
    if args.output_dir is None and is_main_process():
        print_identifications(results, args.format)
    return summarize(results, "files", quiet=not is_main_process())


def cmd_translate(args: argparse.Namespace) -> int:
    from .driver import check_stdout_format, is_main_process, summarize
    from .translate import print_translations, translate

    model, audio = model_and_audio(args, "translated")
    check_stdout_format(args.format, args.output_dir, audio)
    names = OUTPUT_OPTIONS + GENERATION_OPTIONS + ("target_lang", "segment_seconds", "batch_seconds") + HARDWARE_OPTIONS
    names += DATA_OPTIONS
    results = translate(model, audio, **options(args, names))
    if args.output_dir is None and is_main_process():
        print_translations(results, args.format)
    return summarize(results, "translations", quiet=not is_main_process())


def cmd_serve(args: argparse.Namespace) -> int:
    from .server import serve

    serve(**{k: v for k, v in vars(args).items() if k not in ("func", "command")})
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate

    if len(args.audio) > 2 or (len(args.audio) == 2 and args.model is not None):
        raise ConfigError("evaluate takes one manifest (and the model with --model)")
    model, manifest = (args.audio[0], args.audio[1]) if len(args.audio) == 2 else (args.model, args.audio[0])
    report = evaluate(model, manifest, output_dir=args.output_dir, json_path=args.json_path, plot=args.plot,
                      label_column=args.label_column, crops=args.crops, crop_seconds=args.crop_seconds, seed=args.seed,
                      text_column=args.text_column, audio_column=args.audio_column,
                      **options(args, WINDOW_OPTIONS + CTC_OPTIONS + HARDWARE_OPTIONS + ("quiet",)),
                      **options(args, GENERATION_OPTIONS[1:] + ("target_lang", "segment_seconds")))  # fmt: skip
    print(report.table())
    for f in report.failed:
        print(f"xlsr: error: {f['path']}: {f['error']}", file=sys.stderr)
    if report.failed:
        print(f"xlsr: {len(report.failed)} utterances could not be scored", file=sys.stderr)
    return 1 if report.failed else 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from .pretraining.task import pretrain

    result = pretrain(args.train, args.out, valid=args.valid, config=args.config, preset=args.preset, init=args.init,
                      set=args.set, quiet=args.quiet, audio_column=args.audio_column,
                      **options(args, TRAIN_HARDWARE))  # fmt: skip
    print(f"done: {result['update']} updates; checkpoints in {result['out_dir']}/checkpoints")
    return 0


def cmd_finetune_ctc(args: argparse.Namespace) -> int:
    from .finetuning.ctc import finetune_ctc

    result = finetune_ctc(args.init, args.train, args.valid, args.out, config=args.config, vocab=args.vocab,
                          set=args.set, quiet=args.quiet, text_column=args.text_column,
                          audio_column=args.audio_column, **options(args, TRAIN_HARDWARE))  # fmt: skip
    print(f"done: {result['update']} updates; best validation WER {_percent(result['best'])}; model in {args.out}/best")
    return 0


def cmd_finetune_st(args: argparse.Namespace) -> int:
    from .finetuning.st import finetune_st

    result = finetune_st(args.init, args.train, args.valid, args.out, decoder=args.decoder, config=args.config,
                         set=args.set, quiet=args.quiet, audio_column=args.audio_column,
                         **options(args, TRAIN_HARDWARE))  # fmt: skip
    best = "n/a" if result["best"] is None else f"{result['best']:.2f}"
    print(f"done: {result['update']} updates; best validation score {best}; model in {args.out}/best")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from .synth import synth

    langs = [x.strip() for x in args.langs.split(",") if x.strip()] if args.langs else None
    made = synth(args.out, langs, per_lang=args.per_lang, seed=args.seed, speakers=args.speakers,
                 parallel=args.parallel, quiet=args.quiet, overwrite=args.overwrite)  # fmt: skip
    counts = ", ".join(f"{len(rows)} {split}" for split, rows in made.items())
    print(f"wrote {args.out}: {counts} clips; manifests {args.out}/train.tsv, valid.tsv, test.tsv")
    return 0


def cmd_finetune_classify(args: argparse.Namespace) -> int:
    from .finetuning.classify import finetune_classify

    result = finetune_classify(args.init, args.train, args.valid, args.out, label_column=args.label_column,
                               config=args.config, set=args.set, quiet=args.quiet,
                               audio_column=args.audio_column, **options(args, TRAIN_HARDWARE))  # fmt: skip
    print(f"done: {result['update']} updates; best validation accuracy {_percent(result['best'])}; "
          f"model in {args.out}/best")  # fmt: skip
    return 0


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


class _PrintConfig(argparse.Action):
    """--print-config: every configuration key of the command with its default and help, then exit."""

    def __init__(self, option_strings, dest, task: str, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)
        self.task = task

    def __call__(self, parser, namespace, values, option_string=None):
        from .training.config import describe_config

        print(describe_config(self.task), end="")
        parser.exit()


class _OldSpelling(argparse.Action):
    """An option's old spelling: it stores its value as the new one does, with a warning naming the new one."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        warnings.warn(f"{option_string} is now {self.new}", OldSpelling, stacklevel=1)
        setattr(namespace, self.dest, values)


def add_training_options(p: argparse.ArgumentParser, task: str, valid_required: bool = False) -> None:
    p.add_argument("--train", required=True, help=f"training data: {DATA_HELP} (a folder holding splits: its train)")
    p.add_argument("--valid", required=valid_required,
                   help="validation data, as --train (a folder holding splits: its validation, valid or "
                   "dev)")  # fmt: skip
    out = p.add_mutually_exclusive_group(required=True)  # --output-dir, or its old spelling
    out.add_argument("--output-dir", dest="out", metavar="DIR",
                     help="output directory; re-running with the same one resumes")  # fmt: skip
    out.add_argument("--out", dest="out", action=_OldSpelling, new="--output-dir", help=argparse.SUPPRESS)
    p.add_argument("--print-config", action=_PrintConfig, task=task,
                   help="print every key with its default and help (YAML for --config), and exit")  # fmt: skip
    p.add_argument("--config", help="YAML file of training options (keys as in the resolved config.yaml)")
    p.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override options, e.g. --set lr=1e-4 max_update=20000 model.dropout=0.0",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar, warnings only")
    add_columns(p, text=task == "ctc")
    g = p.add_argument_group("hardware (precision: --set precision=auto|fp32|bf16|fp16, mixed precision)")
    g.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available; torchrun: cuda:LOCAL_RANK)")
    g.add_argument("--threads", type=int, help="CPU threads of each process (default: PyTorch's choice)")


# Option groups: the same flag, name and default in every command that has it (and in the Python function).
OUTPUT_OPTIONS = ("output_dir", "format", "skip_existing", "quiet")
SPEECH_OPTIONS = ("speech_check",)
WINDOW_OPTIONS = ("chunk_seconds", "stride_seconds", "batch_seconds")
CTC_OPTIONS = ("lm", "lexicon", "lm_weight", "word_score", "beam_size", "hotwords", "hotword_weight")
HARDWARE_OPTIONS = ("device", "dtype", "threads")
TRAIN_HARDWARE = ("device", "threads")  # training's dtype is the mixed-precision config key `precision`
DATA_OPTIONS = ("audio_column",)  # the inputs' data sources (data/sources.py)
GENERATION_OPTIONS = ("beam_size", "max_new_tokens", "max_len_a", "max_len_b", "min_len", "length_penalty",
                      "no_repeat_ngram_size")  # fmt: skip


def options(args: argparse.Namespace, names: tuple[str, ...]) -> dict:
    return {k: getattr(args, k) for k in names}


def add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="MODEL", help=USE_MODEL_HELP)


def add_outputs(p: argparse.ArgumentParser, formats: list[str], help: str, suffix: str | None = None) -> None:
    g = p.add_argument_group("outputs")
    if formats:
        g.add_argument("--format", default=formats[0], choices=formats, help=help)
    g.add_argument("--output-dir", metavar="DIR",
                   help=f"write one <name>.{suffix or '<format>'} per input here, atomically (default: print to "
                   "stdout: one line per file for txt, JSON Lines for json)")  # fmt: skip
    g.add_argument("--skip-existing", action="store_true", help="with --output-dir: skip inputs already written")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_speech_check(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--no-speech-check", dest="speech_check", action="store_false",
                   help=f"{what} every file, even one the speech detector finds no speech in (default: such a file "
                   "is reported as 'no speech')")  # fmt: skip


def add_columns(p: argparse.ArgumentParser, text: bool = False) -> None:
    """--audio-column (and --text-column): which columns of a data source (data/sources.py) hold what."""
    g = p.add_argument_group("data columns (Hugging Face datasets, parquet, TSV manifests)")
    g.add_argument("--audio-column", metavar="NAME", help=COLUMN_HELP["audio"])
    if text:
        g.add_argument("--text-column", metavar="NAME", help=COLUMN_HELP["text"])


def add_windows(p: argparse.ArgumentParser, chunk: float = 20.0, stride: bool = True, help_extra: str = "") -> None:
    g = p.add_argument_group("long audio and batching")
    g.add_argument("--chunk-seconds", type=float, default=chunk,
                   help=f"windows this long (default {chunk:g}; 0: whole files){help_extra}")  # fmt: skip
    if stride:
        g.add_argument("--stride-seconds", type=float, default=3.0,
                       help="context on each side of a window, dropped when stitching (default 3)")  # fmt: skip
    g.add_argument("--batch-seconds", type=float, default=60.0,
                   help="audio per batch, across files sorted by length (default 60)")  # fmt: skip


def add_ctc_decoding(p: argparse.ArgumentParser, defaults: bool = True) -> None:
    """`defaults=False` (evaluate): None, so that an option given to the wrong kind of model can be refused."""
    d = (lambda v: v) if defaults else (lambda v: None)  # noqa: E731
    g = p.add_argument_group("CTC decoding (greedy unless --lm is given)")
    g.add_argument("--lm", help="KenLM n-gram model (ARPA, or binary with --lexicon) for beam search")
    g.add_argument("--lexicon", help="word list for the LM (default: the ARPA file's words)")
    g.add_argument("--lm-weight", type=float, default=d(2.0), help="weight of the LM score (default 2.0)")
    g.add_argument("--word-score", type=float, default=d(0.0), help="word insertion score (default 0)")
    g.add_argument("--beam-size", type=int, default=d(50), help="beam size (default 50)")
    g.add_argument(
        "--hotwords", nargs="+", default=d(()), metavar="WORD", help="words to favour (added to the lexicon)"
    )
    g.add_argument("--hotword-weight", type=float, default=d(5.0), help="bonus per hotword, in LM units (default 5)")


def add_hardware(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("hardware")
    g.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    g.add_argument("--dtype", help="float32 (CPU default), float16 (GPU default) or bfloat16")
    g.add_argument("--threads", type=int, help="CPU threads (default: PyTorch's choice)")


def parse_info(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def parse_convert(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help=MODEL_HELP)
    p.add_argument("dst", help="output directory, Hugging Face layout (replaced atomically if it is already a model "
                   "directory); a name ending in .pt writes an xlsr checkpoint instead")  # fmt: skip
    p.add_argument("--dict", dest="dict_path", metavar="PATH", help="fairseq dictionary (dict.ltr.txt, dict.txt)")
    p.add_argument("--spm", dest="spm_path", metavar="PATH", help="a fairseq translation model's sentencepiece model")
    p.add_argument("--encoder-only", action="store_true",
                   help="write the encoder alone (transformers Wav2Vec2Model), dropping any head")  # fmt: skip


def parse_init(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="output directory (Hugging Face format)")
    p.add_argument("--preset", default="tiny", help="xlsr-300m, xlsr-1b, xlsr-2b, wav2vec2-base, small, tiny (default)")
    p.add_argument("--seed", type=int, default=0, help="random seed for the weights")


def parse_features(p: argparse.ArgumentParser) -> None:
    add_model(p)
    p.add_argument("audio", nargs="+", metavar="AUDIO", help=AUDIO_HELP)
    p.add_argument("--layer", type=int, metavar="K", help="output of block K instead of the final output")
    p.add_argument("--pool", choices=["mean"], help="mean: one vector per file, the mean over its frames (utterance "
                   "embeddings, e.g. for speaker verification by cosine similarity)")  # fmt: skip
    add_outputs(p, [], "", suffix="npy")
    p.add_argument("--out", help=argparse.SUPPRESS)  # the old spelling of --output-dir (or a .npy for one input)
    add_windows(p, help_extra="; the Transformer sees one window at a time")
    add_hardware(p)
    add_columns(p)


def parse_transcribe(p: argparse.ArgumentParser) -> None:
    add_model(p)
    p.add_argument("audio", nargs="+", metavar="AUDIO", help=AUDIO_HELP)
    add_outputs(p, ["txt", "json", "srt", "vtt", "tsv"],
                "txt (default), json (words with times and confidence), srt, vtt, tsv (cues)")  # fmt: skip
    add_speech_check(p, "transcribe")
    add_windows(p)
    add_ctc_decoding(p)
    add_columns(p)
    add_hardware(p)


def parse_identify(p: argparse.ArgumentParser) -> None:
    add_model(p)
    p.add_argument("audio", nargs="+", metavar="AUDIO", help=AUDIO_HELP)
    p.add_argument("--top-k", type=int, default=3, help="labels to report per file (default 3)")
    add_outputs(p, ["txt", "json", "tsv"], "txt (default: the top-k 'label probability' pairs), json, tsv")
    add_speech_check(p, "classify")
    add_windows(p, chunk=10.0, stride=False)
    add_columns(p)
    add_hardware(p)


def parse_translate(p: argparse.ArgumentParser) -> None:
    add_model(p)
    p.add_argument("audio", nargs="+", metavar="AUDIO", help=AUDIO_HELP)
    p.add_argument("--target-lang", metavar="LANG",
                   help="target language: mBART-50 code (de_DE) or ISO 639-1 (de); default: the model's own, "
                   "else English")  # fmt: skip
    add_outputs(p, ["txt", "json", "srt", "vtt"], "txt (default), json (text, segments with times, tokens), srt, vtt")
    g = p.add_argument_group("generation (fairseq's beam search rules)")
    g.add_argument("--beam-size", type=int, default=5, help="beam size (default 5; 1: greedy)")
    g.add_argument("--max-new-tokens", type=int, help="at most this many tokens after the language tag")
    g.add_argument("--max-len-a", type=float, default=0.0, help="max length = a * encoder frames + b (default a=0)")
    g.add_argument("--max-len-b", type=int, default=200, help="(default b=200)")
    g.add_argument("--min-len", type=int, default=1, help="no </s> before this many tokens (default 1)")
    g.add_argument("--length-penalty", type=float, default=1.0, help="score = log-prob / length ** this (default 1)")
    g.add_argument("--no-repeat-ngram-size", type=int, default=0, help="ban repeated n-grams of this size (0: off)")
    g = p.add_argument_group("long audio and batching")
    g.add_argument("--segment-seconds", type=float, default=30.0,
                   help="cut longer recordings at pauses into segments of at most this long (default 30)")  # fmt: skip
    g.add_argument("--batch-seconds", type=float, default=60.0, help="audio per batch (default 60)")
    add_hardware(p)
    add_columns(p)


def parse_evaluate(p: argparse.ArgumentParser) -> None:
    add_model(p)
    p.add_argument("audio", nargs="+", metavar="MANIFEST",
                   help=f"the test data, with a text (CTC), label or translation column: {DATA_HELP} (a folder "
                   "holding splits: its test)")  # fmt: skip
    g = p.add_argument_group("outputs")
    g.add_argument(
        "--output-dir", metavar="DIR", help="also write the full report (every utterance) as DIR/report.json"
    )
    g.add_argument("--json", dest="json_path", metavar="PATH", help=argparse.SUPPRESS)  # the old spelling
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group("long audio and batching")
    g.add_argument(
        "--chunk-seconds",
        type=float,
        help="window length (default: transcribe's 20 for CTC models, identify's 10 for classifiers)",
    )
    g.add_argument("--stride-seconds", type=float, help="CTC models: context on each side of a window (default 3)")
    g.add_argument("--batch-seconds", type=float, default=60.0, help="audio per batch (default 60)")
    add_ctc_decoding(p, defaults=False)
    add_columns(p, text=True)
    g = p.add_argument_group("classification models")
    g.add_argument("--label-column", help="the manifest column holding the true label (default lang)")
    g.add_argument("--crops", type=int, nargs="?", const=10, metavar="N",
                   help="fairseq's LID procedure: N random crops per utterance (10 when N is left out), softmax per "
                   "crop, probabilities averaged (default: whole utterances, in windows)")  # fmt: skip
    g.add_argument("--crop-seconds", type=float, help="crop length for --crops (default 10)")
    g.add_argument("--seed", type=int, help="seed of the --crops draws (default 123, as fairseq's scripts)")
    g.add_argument("--plot", metavar="PNG", help="write the confusion matrix as a PNG image")
    g = p.add_argument_group("speech-translation models (BLEU and chrF; decoding as xlsr translate, --beam-size "
                             "default 5)")  # fmt: skip
    g.add_argument("--target-lang", metavar="LANG", help="the target language of rows without a tgt_lang column "
                   "(default: the model's own, else English)")  # fmt: skip
    g.add_argument("--max-new-tokens", type=int, help="at most this many tokens after the language tag")
    g.add_argument("--max-len-a", type=float, help="max length = a * encoder frames + b (default a=0)")
    g.add_argument("--max-len-b", type=int, help="(default b=200)")
    g.add_argument("--min-len", type=int, help="no </s> before this many tokens (default 1)")
    g.add_argument("--length-penalty", type=float, help="score = log-prob / length ** this (default 1)")
    g.add_argument("--no-repeat-ngram-size", type=int, help="forbid repeating n-grams of this size (default 0: off)")
    g.add_argument("--segment-seconds", type=float, help="cut longer recordings at pauses into segments of at most "
                   "this long (default 30)")  # fmt: skip
    add_hardware(p)


COMMANDS = {  # name: (parser builder, handler, one-line help, description)
    "info": (parse_info, cmd_info, "describe a model: family, architecture, size, vocabulary, origin", None),
    "convert": (
        parse_convert,
        cmd_convert,
        "convert a model into a Hugging Face directory",
        "Convert a fairseq .pt (its dictionary beside it, or --dict), an xlsr checkpoint or a Hugging Face "
        "directory into a Hugging Face model directory (safetensors) that transformers loads.",
    ),
    "init": (parse_init, cmd_init, "write a new randomly initialised model of a preset", None),
    "features": (
        parse_features,
        cmd_features,
        "extract representations: one .npy of shape (frames, dim) per input",
        "Extract XLS-R representations (one vector per 20 ms). By default the encoder's final output "
        "(transformers' last_hidden_state); with --layer K the output of transformer block K "
        "(transformers' hidden_states[K], 0 = the input of the first block). Long recordings are cut into "
        "windows (--chunk-seconds) stitched exactly; a file that cannot be read is reported on one line and "
        "every other file is still written.",
    ),
    "transcribe": (
        parse_transcribe,
        cmd_transcribe,
        "speech to text with a CTC model",
        "Transcribe audio with a CTC model (greedy, or beam search with a KenLM n-gram model). Files of any "
        "length are cut into overlapping windows, decoded as they complete; files are sorted by length "
        "and batched. A file that cannot be read is reported on one line and every other file is still "
        "transcribed; the exit code is 1 if any failed. Under torchrun the files are shared out.",
    ),
    "identify": (
        parse_identify,
        cmd_identify,
        "top-k labels (languages, speakers) of audio files",
        "Classify audio files with a classification model (e.g. language ID): each file's class "
        "probabilities, averaged over windows of --chunk-seconds, and the top-k labels. Files of any length "
        "and number; a file that cannot be read is reported on one line and the others are still done.",
    ),
    "translate": (
        parse_translate,
        cmd_translate,
        "speech translation with an XLS-R encoder-decoder model",
        "Translate speech with a speech-translation model (XLS-R encoder + mBART-50 decoder: a Hugging Face "
        "SpeechEncoderDecoderModel directory or a fairseq xm_transformer checkpoint with its dict.txt and "
        "sentencepiece model beside it). Long recordings are cut at pauses into segments, each translated "
        "with its times (srt, vtt, json). Beam search follows fairseq's rules.",
    ),
    "evaluate": (
        parse_evaluate,
        cmd_evaluate,
        "score a model on a manifest: WER/CER (CTC), accuracy (classifier) or BLEU/chrF (translation)",
        "CTC models: transcribe a manifest with a 'text' column and report word and character error rates "
        "(jiwer), overall and per language, after lower-casing and removing punctuation on both sides. "
        "Classification models: accuracy overall, per class and per duration (0-5 s, 5-20 s), and a "
        "confusion matrix, against the manifest's --label-column. Speech-translation models: BLEU and chrF "
        "(sacrebleu, with its signature) overall and per language pair against a 'translation' column, each row "
        "translated into its 'tgt_lang'. An option of another kind of model is refused.",
    ),
}


def parse_pretrain(p: argparse.ArgumentParser) -> None:
    add_training_options(p, "pretrain")
    p.add_argument(
        "--preset", help="model size from scratch: xlsr-300m (default), xlsr-1b, xlsr-2b, wav2vec2-base, small, tiny"
    )
    p.add_argument("--init", help="start from this model instead: " + MODEL_HELP)


def parse_synth(p: argparse.ArgumentParser) -> None:
    from .synth import languages

    p.add_argument("out", help="output folder")
    p.add_argument("--langs", help=f"comma-separated languages (default: all of {','.join(languages())})")
    p.add_argument("--per-lang", type=int, default=200, help="clips per language, over the three splits (200)")
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    p.add_argument("--speakers", type=int, metavar="N", help="N fixed toy speakers say every clip, in turn (a "
                   "speaker-ID corpus; default: each clip draws its own voice)")  # fmt: skip
    p.add_argument("--parallel", action="store_true", help="a speech-translation corpus: clips say aligned UDHR "
                   "sentences; manifests add 'translation', 'tgt_lang' (X -> en, en -> the other --langs)")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace a corpus already in OUT (its clips and manifests)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def parse_finetune_ctc(p: argparse.ArgumentParser) -> None:
    add_training_options(p, "ctc", valid_required=True)
    p.add_argument("--init", required=True, help="the pretrained model: " + MODEL_HELP)
    p.add_argument("--vocab", help="use this vocab.json (or a model directory's) instead of building one")


def parse_finetune_classify(p: argparse.ArgumentParser) -> None:
    add_training_options(p, "classify", valid_required=True)
    p.add_argument("--init", required=True, help="the pretrained model: " + MODEL_HELP)
    p.add_argument("--label-column", help="the data's column with the labels (default lang; Common Voice: its locale)")


def parse_finetune_st(p: argparse.ArgumentParser) -> None:
    add_training_options(p, "st", valid_required=True)
    p.add_argument("--init", required=True, help="an XLS-R encoder (a new adapter and decoder are added) or a whole "
                   "speech-translation model (fine-tuned further): " + MODEL_HELP)  # fmt: skip
    p.add_argument("--decoder", metavar="DEC", help="the decoder of a new model: a transformers mBART directory "
                   "(MBartForConditionalGeneration, MBartForCausalLM; with its MBart50 sentencepiece tokenizer) or a "
                   "speech-translation model (default: a new random decoder over a sentencepiece vocabulary trained "
                   "on the training translations)")  # fmt: skip


COMMANDS.update(
    {
        "pretrain": (
            parse_pretrain,
            cmd_pretrain,
            "self-supervised pretraining with the XLS-R objective",
            "Pretrain a model from scratch (--preset) or continue from any checkpoint (--init) on unlabelled audio, "
            "with the wav2vec 2.0 / XLS-R objective. Runs on one CPU or GPU, or on many with "
            "`torchrun --nproc_per_node N -m xlsr pretrain ...` (DDP; --set fsdp=true shards big models). "
            "Writes OUT/config.yaml (every option, resolved), logs (log.jsonl, train.csv, valid.csv, tb/) and "
            "OUT/checkpoints/; a killed run resumes where its last checkpoint left off when re-run.",
        ),
        "synth": (
            parse_synth,
            cmd_synth,
            "make a multilingual speech corpus with espeak-ng",
            "Speak phrases of the Universal Declaration of Human Rights with espeak-ng (Debian package espeak-ng) "
            "in several languages, with varied voices, speeds and pitches; write 16 kHz FLAC clips and "
            "train/valid/test manifests (path, samples, lang, text, speaker; split by phrase). Deterministic for a "
            "given seed; an interrupted run resumes; a folder that already holds a corpus is refused unless "
            "--overwrite.",
        ),
    }
)


def parse_serve(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models (each loaded once)")
    g.add_argument("--asr", metavar="MODEL", help="CTC model for /v1/audio/transcriptions (default: the bundled one; "
                   "'none': no transcription)")  # fmt: skip
    g.add_argument("--st", metavar="MODEL", help="speech-translation model for /v1/audio/translations (default: the "
                   "bundled one; 'none': no translation)")  # fmt: skip
    g.add_argument("--lid", metavar="MODEL", help="classification model for /v1/identify (default: the bundled "
                   "language-ID model; 'none': no identification)")  # fmt: skip
    g.add_argument("--lm", help="KenLM n-gram model: beam search for every transcription (as xlsr transcribe --lm)")
    g.add_argument("--lexicon", help="with --lm: its lexicon")
    g = p.add_argument_group("network")
    g.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    g.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    g.add_argument("--api-key", metavar="KEY", help="require 'Authorization: Bearer KEY' on every endpoint but "
                   "/health and the page (default: the XLSR_API_KEY variable, else none)")  # fmt: skip
    g = p.add_argument_group("batching and limits")
    g.add_argument("--max-batch", type=int, default=16, metavar="N",
                   help="windows or segments per model batch, across requests (default 16)")  # fmt: skip
    g.add_argument("--max-wait-ms", type=float, default=10.0, metavar="T",
                   help="how long a batch waits for more requests to join it (default 10)")  # fmt: skip
    g.add_argument("--max-queue", type=int, default=64, metavar="N",
                   help="requests admitted at once; more get 503 with Retry-After (default 64)")  # fmt: skip
    g.add_argument("--max-upload-mb", type=float, default=25.0, metavar="M", help="largest upload (default 25 MB)")
    g.add_argument("--max-audio-s", type=float, default=3600.0, metavar="S",
                   help="longest recording per request (default 3600 s)")  # fmt: skip
    add_hardware(p)


COMMANDS["serve"] = (
    parse_serve,
    cmd_serve,
    "serve the models over HTTP (OpenAI's audio API) with a page to try them",
    "Serve speech recognition, translation and language ID over HTTP: OpenAI's POST /v1/audio/transcriptions and "
    "/v1/audio/translations (so its clients work unchanged), POST /v1/identify, GET /v1/models, /health, /metrics "
    "(Prometheus), and a page at / to upload or record audio. Each model is loaded once; requests from many "
    "clients are batched together; results are those of xlsr transcribe / translate / identify --format json. "
    "Needs the [serve] extra (pip install 'xlsr[serve]').",
)
FINETUNE_TASKS = {
    "ctc": (
        parse_finetune_ctc,
        cmd_finetune_ctc,
        "speech recognition with a CTC head over the characters of the transcripts",
        "Fine-tune a pretrained model (--init) for speech recognition on manifests with a 'text' "
        "column, with the fairseq / XLS-R recipe as defaults: feature encoder frozen, only the new head trained "
        "for freeze_finetune_updates, tri-stage learning rate, time and channel masking, layer drop, CTC with "
        "zero_infinity. The vocabulary is built from the normalised training transcripts (lower case, no "
        "punctuation, NFC; --set lowercase=false remove_punctuation=false to keep them) unless --vocab is given. "
        "Validation WER/CER every validate_interval_updates; the best model goes to OUT/best/ (a Hugging Face "
        "directory: xlsr transcribe and transformers' pipeline load it). DDP with torchrun; re-run to resume.",
    ),
    "classify": (
        parse_finetune_classify,
        cmd_finetune_classify,
        "utterance classification: language ID, speaker ID, any label column",
        "Fine-tune a pretrained model (--init) to classify utterances by a manifest column "
        "(--label-column, default lang): mean pooling over valid frames, projection and classifier, as "
        "transformers' Wav2Vec2ForSequenceClassification (--set weighted_layer_sum=true for a learned sum of "
        "layers). Random crops of crop_seconds in training; --set balanced=true samples classes equally. "
        "Validation accuracy every validate_interval_updates; the best model goes to OUT/best/ (a Hugging Face "
        "directory with id2label).",
    ),
    "st": (
        parse_finetune_st,
        cmd_finetune_st,
        "speech translation: XLS-R encoder + adapter + mBART-style decoder",
        "Fine-tune a speech-translation model on data with a 'translation' column (and 'tgt_lang' for several "
        "target languages) with fairseq's xm_transformer recipe as defaults: a 3-layer adapter, everything trained "
        "(--set finetune_w2v_params=layer_norm,self_attn finetune_decoder_params=encoder_attn,layer_norm,self_attn "
        "for LNA), label-smoothed cross-entropy, the target-language tag first, encoder masking and layer drop, "
        "inverse_sqrt learning rate. --init is an XLS-R encoder or a whole speech-translation model; the decoder "
        "comes from --decoder or is new. Validation BLEU and chrF (sacrebleu, beam search) every "
        "validate_interval_updates; the best model goes to OUT/best/ (a transformers SpeechEncoderDecoderModel "
        "directory: xlsr translate and transformers load it). DDP and FSDP with torchrun; re-run to resume.",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xlsr",
        description="XLS-R / wav2vec 2.0: transcribe, translate, identify, extract features, fine-tune and pretrain.",
    )
    parser.add_argument("--version", action="version", version=f"xlsr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, func: Callable | None, help: str, description: str | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=description or help)
        p.set_defaults(func=func)
        return p

    for name, (build, func, help, description) in COMMANDS.items():
        build(command(name, func, help, description))

    finetune = command("finetune", None, "fine-tune a pretrained model: speech recognition (ctc), classification "
                       "or speech translation (st)")  # fmt: skip
    tasks = finetune.add_subparsers(dest="task", metavar="TASK", required=True)
    for name, (build, func, help, description) in FINETUNE_TASKS.items():
        p = tasks.add_parser(name, help=help, description=description)
        p.set_defaults(func=func)
        build(p)
    return parser


def _one_line(message, category, filename, lineno, file=None, line=None) -> None:
    """Old spellings are one line from xlsr; other warnings keep Python's form."""
    text = f"xlsr: warning: {message}\n" if issubclass(category, OldSpelling) else None
    (file or sys.stderr).write(text or warnings.formatwarning(message, category, filename, lineno, line))


def main(argv: list[str] | None = None) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("default", OldSpelling)
        warnings.showwarning = _one_line
        return _run(build_parser().parse_args(argv))


def _run(args: argparse.Namespace) -> int:
    try:
        return args.func(args)
    except XlsrError as e:
        print(f"xlsr: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("xlsr: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `xlsr ... | head`: the reader left; say nothing more (Python's documented recipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
