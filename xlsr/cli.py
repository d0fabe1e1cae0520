"""The `xlsr` command line: parses, calls the library function of the same name, prints.

Errors a user can cause are printed on one line (`xlsr: error: ...`) with a non-zero exit code.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

from . import __version__
from .errors import ConfigError, XlsrError

HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
MODEL_HELP = (
    "a Hugging Face model directory, a fairseq .pt checkpoint, an xlsr checkpoint, or a hub id "
    "(downloaded only if huggingface_hub is installed and the network allows)"
)
AUDIO_HELP = (
    "audio files (wav, flac, ogg, opus, mp3; m4a/webm/video with PyAV), folders (searched recursively) "
    "or manifests (.tsv with a 'path' column)"
)
INPUTS_HELP = f"MODEL: {MODEL_HELP}; left out, the bundled reference model. AUDIO: {AUDIO_HELP}"


def _print_failures(results, what: str, skipped: int = 0) -> int:
    """One line per failed input, then a summary; the exit code says whether anything failed."""
    failed = [r for r in results if r.error]
    for r in failed:
        print(f"xlsr: error: {getattr(r, 'input', None) or r.path}: {r.error}", file=sys.stderr)
    done = len(results) - len(failed) - skipped
    if failed or skipped:
        extra = f", {skipped} skipped (output exists)" if skipped else ""
        print(f"xlsr: {done} {what} done, {len(failed)} failed{extra}", file=sys.stderr)
    return 1 if failed else 0


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
    if "vocabulary" in data:
        vocab = data["vocabulary"]
        print(f"vocabulary    {len(vocab)} tokens: {' '.join(vocab)}")
    if "labels" in data:
        print(f"labels        {len(data['labels'])}: {' '.join(data['labels'])}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .checkpoints import convert

    done = convert(args.src, args.dst, dict_path=args.dict_path, encoder_only=args.encoder_only)
    print(f"wrote {args.dst} ({done.model.cfg.head} head, {done.model.num_parameters():,} parameters)")
    if done.left_out:
        print(f"xlsr: note: left out {done.left_out}", file=sys.stderr)
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from .checkpoints import init

    model = init(args.out, preset=args.preset, seed=args.seed)
    print(f"wrote {args.out}: a new {args.preset} model, {model.num_parameters():,} parameters (random weights)")
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    from .features import features

    results = features(args.model, args.audio, args.out, layer=args.layer, device=args.device, quiet=args.quiet)
    if not args.quiet:
        for r in results:
            if r.output:
                print(f"{r.input} -> {r.output}")
    return _print_failures(results, "feature files")


def split_model(items: list[str], kind: str) -> tuple[str, list[str]]:
    """`[MODEL] AUDIO...`: the first item is the model unless it is audio, a manifest or a folder that is not a
    model directory; then the bundled reference model is used."""
    from .checkpoints import bundled_model

    first = Path(items[0])
    is_model = (first.is_dir() and (first / "config.json").exists()) or first.suffix in (".pt", ".safetensors")
    if is_model or (not first.exists() and HUB_ID.match(items[0]) and len(items) > 1):
        return items[0], items[1:]
    return str(bundled_model(kind)), items


def cmd_transcribe(args: argparse.Namespace) -> int:
    from .transcribe import print_transcripts, transcribe

    options = {k: getattr(args, k) for k in TRANSCRIBE_OPTIONS}
    model, audio = split_model(args.inputs, "asr")
    if not audio:
        raise ConfigError("no audio given")
    results = transcribe(
        model,
        audio,
        output_dir=args.output_dir,
        format=args.format,
        skip_existing=args.skip_existing,
        quiet=args.quiet,
        **options,
    )
    if args.output_dir is None:
        print_transcripts(results, args.format)
    return _print_failures(results, "transcripts", skipped=sum(r.skipped for r in results))


def cmd_identify(args: argparse.Namespace) -> int:
    from .classify import identify, print_identifications

    model, audio = split_model(args.inputs, "lid")
    if not audio:
        raise ConfigError("no audio given")
    results = identify(model, audio, top_k=args.top_k, output_dir=args.output_dir, format=args.format,
                       chunk_seconds=args.chunk_seconds, batch_seconds=args.batch_seconds, device=args.device,
                       dtype=args.dtype, threads=args.threads, skip_existing=args.skip_existing,
                       quiet=args.quiet)  # fmt: skip
    if args.output_dir is None:
        print_identifications(results, args.format)
    return _print_failures(results, "files", skipped=sum(r.skipped for r in results))


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate

    options = {k: getattr(args, k) for k in TRANSCRIBE_OPTIONS}
    report = evaluate(args.model, args.manifest, json_path=args.json, quiet=args.quiet, label_column=args.label_column,
                      crops=args.crops, crop_seconds=args.crop_seconds, plot=args.plot, **options)  # fmt: skip
    print(report.table())
    for f in report.failed:
        print(f"xlsr: error: {f['path']}: {f['error']}", file=sys.stderr)
    if report.failed:
        print(f"xlsr: {len(report.failed)} utterances could not be scored", file=sys.stderr)
    return 1 if report.failed else 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from .pretraining.task import pretrain

    result = pretrain(args.train, args.out, valid=args.valid, config=args.config, preset=args.preset, init=args.init,
                      set=args.set, quiet=args.quiet)  # fmt: skip
    print(f"done: {result['update']} updates; checkpoints in {result['out_dir']}/checkpoints")
    return 0


def cmd_finetune_ctc(args: argparse.Namespace) -> int:
    from .finetuning.ctc import finetune_ctc

    result = finetune_ctc(args.init, args.train, args.valid, args.out, config=args.config, vocab=args.vocab,
                          set=args.set, quiet=args.quiet)  # fmt: skip
    print(f"done: {result['update']} updates; best validation WER {_percent(result['best'])}; model in {args.out}/best")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from .synth import synth

    langs = [x.strip() for x in args.langs.split(",") if x.strip()] if args.langs else None
    made = synth(args.out, langs, per_lang=args.per_lang, seed=args.seed, quiet=args.quiet)
    counts = ", ".join(f"{len(rows)} {split}" for split, rows in made.items())
    print(f"wrote {args.out}: {counts} clips; manifests {args.out}/train.tsv, valid.tsv, test.tsv")
    return 0


def cmd_finetune_classify(args: argparse.Namespace) -> int:
    from .finetuning.classify import finetune_classify

    result = finetune_classify(args.init, args.train, args.valid, args.out, label_column=args.label_column,
                               config=args.config, set=args.set, quiet=args.quiet)  # fmt: skip
    print(f"done: {result['update']} updates; best validation accuracy {_percent(result['best'])}; "
          f"model in {args.out}/best")  # fmt: skip
    return 0


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def add_training_options(p: argparse.ArgumentParser, valid_required: bool = False) -> None:
    p.add_argument("--train", required=True, help="training manifest (TSV: path, samples, lang, ...; or fairseq's)")
    p.add_argument("--valid", required=valid_required, help="validation manifest")
    p.add_argument("--out", required=True, help="output directory; re-running with the same one resumes")
    p.add_argument("--config", help="YAML file of training options (keys as in the resolved config.yaml)")
    p.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override options, e.g. --set lr=1e-4 max_update=20000 model.dropout=0.0",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar, warnings only")


TRANSCRIBE_OPTIONS = (
    "chunk_seconds",
    "stride_seconds",
    "batch_seconds",
    "lm",
    "lexicon",
    "lm_weight",
    "word_score",
    "beam_size",
    "hotwords",
    "hotword_weight",
    "device",
    "dtype",
    "threads",
)


def add_transcribe_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("long audio and batching")
    g.add_argument(
        "--chunk-seconds",
        type=float,
        default=20.0,
        help="cut recordings into windows this long (default 20; 0: whole files)",
    )
    g.add_argument(
        "--stride-seconds",
        type=float,
        default=3.0,
        help="context on each side of a window, dropped when stitching (default 3)",
    )
    g.add_argument(
        "--batch-seconds", type=float, default=60.0, help="audio per batch, across files sorted by length (default 60)"
    )
    g = p.add_argument_group("decoding (greedy unless --lm is given)")
    g.add_argument("--lm", help="KenLM n-gram model (ARPA, or binary with --lexicon) for beam search")
    g.add_argument("--lexicon", help="word list for the LM (default: the ARPA file's words)")
    g.add_argument("--lm-weight", type=float, default=2.0, help="weight of the LM score (default 2.0)")
    g.add_argument("--word-score", type=float, default=0.0, help="word insertion score (default 0)")
    g.add_argument("--beam-size", type=int, default=50, help="beam size (default 50)")
    g.add_argument("--hotwords", nargs="+", default=(), metavar="WORD", help="words to favour (added to the lexicon)")
    g.add_argument("--hotword-weight", type=float, default=5.0, help="bonus per hotword, in LM units (default 5)")
    g = p.add_argument_group("hardware")
    g.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    g.add_argument("--dtype", help="float32 (CPU default), float16 (GPU default) or bfloat16")
    g.add_argument("--threads", type=int, help="CPU threads (default: PyTorch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xlsr",
        description="XLS-R / wav2vec 2.0: transcribe, identify, extract features, fine-tune and pretrain.",
    )
    parser.add_argument("--version", action="version", version=f"xlsr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, func: Callable, help: str, description: str | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=description or help)
        p.set_defaults(func=func)
        return p

    p = command("info", cmd_info, "describe a model: architecture, size, vocabulary, origin")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = command(
        "convert",
        cmd_convert,
        "convert a model into a Hugging Face directory",
        "Convert a fairseq .pt (its dict.ltr.txt beside it, or --dict), an xlsr checkpoint or a Hugging Face "
        "directory into a Hugging Face model directory (safetensors) that transformers loads.",
    )
    p.add_argument("src", help=MODEL_HELP)
    p.add_argument("dst", help="output directory (replaced atomically if it is already a model directory)")
    p.add_argument("--dict", dest="dict_path", metavar="PATH", help="fairseq letter dictionary of a CTC model")
    p.add_argument(
        "--encoder-only",
        action="store_true",
        help="write the encoder alone (transformers Wav2Vec2Model), dropping any head",
    )

    p = command("init", cmd_init, "write a new randomly initialised model of a preset")
    p.add_argument("out", help="output directory (Hugging Face format)")
    p.add_argument("--preset", default="tiny", help="xlsr-300m, xlsr-1b, xlsr-2b, wav2vec2-base, small, tiny (default)")
    p.add_argument("--seed", type=int, default=0, help="random seed for the weights")

    p = command(
        "features",
        cmd_features,
        "extract representations: one .npy of shape (frames, dim) per input",
        "Extract XLS-R representations (one vector per 20 ms). By default the encoder's final output "
        "(transformers' last_hidden_state); with --layer K the output of transformer block K "
        "(transformers' hidden_states[K], 0 = the input of the first block). Each file is processed whole.",
    )
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("audio", nargs="+", help=AUDIO_HELP)
    p.add_argument("--out", required=True, help="a .npy file for one input, or a folder for several")
    p.add_argument("--layer", type=int, metavar="K", help="output of block K instead of the final output")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no per-file lines")

    p = command(
        "transcribe",
        cmd_transcribe,
        "speech to text with a CTC model",
        "Transcribe audio with a CTC model (greedy, or beam search with a KenLM n-gram model). Files of any "
        "length are cut into overlapping windows; files are sorted by length and batched. A file that cannot be "
        "read is reported on one line and every other file is still transcribed; the exit code is 1 if any failed.",
    )
    p.add_argument("inputs", nargs="+", metavar="[MODEL] AUDIO", help=INPUTS_HELP)
    p.add_argument(
        "--format",
        default="txt",
        choices=["txt", "json", "srt", "vtt", "tsv"],
        help="txt (default), json (words with times and confidence), srt, vtt, tsv (cues)",
    )
    p.add_argument("--output-dir", help="write one <name>.<format> per input here (default: print to stdout)")
    p.add_argument("--skip-existing", action="store_true", help="with --output-dir: skip inputs already written")
    add_transcribe_options(p)

    p = command(
        "evaluate",
        cmd_evaluate,
        "score a model on a manifest: WER/CER (CTC) or accuracy (classification)",
        "CTC models: transcribe a manifest with a 'text' column and report word and character error rates "
        "(jiwer), overall and per language, after lower-casing and removing punctuation on both sides. "
        "Classification models: accuracy overall, per class and per duration (0-5 s, 5-20 s), and a confusion "
        "matrix, against the manifest's --label-column.",
    )
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("manifest", help="TSV manifest with 'path' and 'text' (CTC) or a label column, optionally 'lang'")
    p.add_argument("--json", metavar="PATH", help="also write the full report (with every utterance) as JSON")
    g = p.add_argument_group("classification models")
    g.add_argument("--label-column", default="lang", help="the manifest column holding the true label (default lang)")
    g.add_argument("--crops", type=int, nargs="?", const=10, metavar="N",
                   help="fairseq's LID procedure: N random crops per utterance (10 when N is left out), softmax per "
                   "crop, probabilities averaged (default: whole utterances, in windows)")  # fmt: skip
    g.add_argument("--crop-seconds", type=float, default=10.0, help="crop length for --crops (default 10)")
    g.add_argument("--plot", metavar="PNG", help="write the confusion matrix as a PNG image")
    add_transcribe_options(p)

    p = command(
        "identify",
        cmd_identify,
        "top-k labels (languages, speakers) of audio files with a classification model",
        "Classify audio files with a classification model (e.g. language ID): each file's class probabilities, "
        "averaged over windows of --chunk-seconds, and the top-k labels. Files of any length and number; a file "
        "that cannot be read is reported on one line and the others are still done.",
    )
    p.add_argument("inputs", nargs="+", metavar="[MODEL] AUDIO", help=INPUTS_HELP)
    p.add_argument("--top-k", type=int, default=3, help="labels to report per file (default 3)")
    p.add_argument("--format", default="txt", choices=["txt", "json", "tsv"],
                   help="txt (default: 'label probability' lines; one per file for several), json, tsv")  # fmt: skip
    p.add_argument("--output-dir", help="write one <name>.<format> per input here (default: print to stdout)")
    p.add_argument("--skip-existing", action="store_true", help="with --output-dir: skip inputs already written")
    p.add_argument("--chunk-seconds", type=float, default=10.0, help="window length for long files (default 10)")
    p.add_argument("--batch-seconds", type=float, default=60.0, help="audio per batch (default 60)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--dtype", help="float32 (CPU default), float16 (GPU default) or bfloat16")
    p.add_argument("--threads", type=int, help="CPU threads (default: PyTorch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = command(
        "pretrain",
        cmd_pretrain,
        "self-supervised pretraining with the XLS-R objective",
        "Pretrain a model from scratch (--preset) or continue from any checkpoint (--init) on unlabelled audio, "
        "with the wav2vec 2.0 / XLS-R objective. Runs on one CPU or GPU, or on many with "
        "`torchrun --nproc_per_node N -m xlsr pretrain ...` (DDP; --set fsdp=true shards big models). "
        "Writes OUT/config.yaml (every option, resolved), logs (log.jsonl, train.csv, valid.csv, tb/) and "
        "OUT/checkpoints/; a killed run resumes where its last checkpoint left off when re-run.",
    )
    add_training_options(p)
    p.add_argument(
        "--preset", help="model size from scratch: xlsr-300m (default), xlsr-1b, xlsr-2b, wav2vec2-base, small, tiny"
    )
    p.add_argument("--init", help="start from this model instead: " + MODEL_HELP)

    from .synth import languages

    p = command(
        "synth",
        cmd_synth,
        "make a multilingual speech corpus with espeak-ng",
        "Speak phrases of the Universal Declaration of Human Rights with espeak-ng (Debian package espeak-ng) in "
        "several languages, with varied voices, speeds and pitches; write 16 kHz FLAC clips and train/valid/test "
        "manifests (path, samples, lang, text; split by phrase). Deterministic for a given seed.",
    )
    p.add_argument("out", help="output folder")
    p.add_argument("--langs", help=f"comma-separated languages (default: all of {','.join(languages())})")
    p.add_argument("--per-lang", type=int, default=200, help="clips per language, over the three splits (200)")
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = command("finetune", None, "fine-tune a pretrained model: speech recognition (ctc) or classification")
    tasks = p.add_subparsers(dest="task", metavar="TASK", required=True)
    p = tasks.add_parser(
        "ctc",
        help="speech recognition with a CTC head over the characters of the transcripts",
        description="Fine-tune a pretrained model (--init) for speech recognition on manifests with a 'text' "
        "column, with the fairseq / XLS-R recipe as defaults: feature encoder frozen, only the new head trained "
        "for freeze_finetune_updates, tri-stage learning rate, time and channel masking, layer drop, CTC with "
        "zero_infinity. The vocabulary is built from the normalised training transcripts (lower case, no "
        "punctuation, NFC; --set lowercase=false remove_punctuation=false to keep them) unless --vocab is given. "
        "Validation WER/CER every validate_interval_updates; the best model goes to OUT/best/ (a Hugging Face "
        "directory: xlsr transcribe and transformers' pipeline load it). DDP with torchrun; re-run to resume.",
    )
    p.set_defaults(func=cmd_finetune_ctc)
    add_training_options(p, valid_required=True)
    p.add_argument("--init", required=True, help="the pretrained model: " + MODEL_HELP)
    p.add_argument("--vocab", help="use this vocab.json (or a model directory's) instead of building one")

    p = tasks.add_parser(
        "classify",
        help="utterance classification: language ID, speaker ID, any label column",
        description="Fine-tune a pretrained model (--init) to classify utterances by a manifest column "
        "(--label-column, default lang): mean pooling over valid frames, projection and classifier, as transformers' "
        "Wav2Vec2ForSequenceClassification (--set weighted_layer_sum=true for a learned sum of layers). Random crops "
        "of crop_seconds in training; --set balanced=true samples classes equally. Validation accuracy every "
        "validate_interval_updates; the best model goes to OUT/best/ (a Hugging Face directory with id2label).",
    )
    p.set_defaults(func=cmd_finetune_classify)
    add_training_options(p, valid_required=True)
    p.add_argument("--init", required=True, help="the pretrained model: " + MODEL_HELP)
    p.add_argument("--label-column", help="manifest column with the labels (default lang)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except XlsrError as e:
        print(f"xlsr: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("xlsr: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
