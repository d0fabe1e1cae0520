"""Tokenizers: what turns model outputs into text, one class per kind.

Every tokenizer has `kind` (the family's tokenizer kind: "ctc", "sentencepiece"), `tokens` (id -> string),
`__len__`, `encode(text) -> ids`, `decode(ids) -> text` and `hf_files()` (the files a Hugging Face directory
holds for it). `to_dict` / `tokenizer_from_dict` store it inside an xlsr checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Tokenizer(Protocol):
    kind: str
    tokens: list[str]

    def __len__(self) -> int: ...
    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...
    def hf_files(self) -> dict[str, str | bytes]: ...
    def to_dict(self) -> dict[str, Any]: ...


def tokenizer_from_dict(d: dict[str, Any] | None) -> Tokenizer | None:
    """The inverse of `Tokenizer.to_dict` (xlsr checkpoints); a dict without `kind` is a CTC vocabulary."""
    if not d:
        return None
    d = dict(d)
    kind = d.pop("kind", "ctc")
    if kind == "ctc":
        from .ctc_tokenizer import CTCTokenizer

        return CTCTokenizer(**d)
    if kind == "sentencepiece":
        from .spm_tokenizer import SentencePieceTokenizer

        return SentencePieceTokenizer.from_dict(d)
    raise ValueError(f"unknown tokenizer kind {kind!r}")


def read_fairseq_dict(path: str | Path) -> list[str]:
    """A fairseq `Dictionary` file ("symbol count" per line: dict.ltr.txt, dict.txt) -> its symbols, in file
    order (fairseq puts its 4 specials before them: a symbol's index is its line number + 4)."""
    from ..errors import CheckpointError

    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the fairseq dictionary ({e.strerror})") from None
    symbols = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.rstrip().rsplit(" ", 1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise CheckpointError(f"{path}:{n}: expected 'symbol count', got {line!r}")
        symbols.append(parts[0].removesuffix(" #fairseq:overwrite"))
    return symbols
