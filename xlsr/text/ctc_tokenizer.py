"""Character vocabulary for CTC, compatible with transformers' `Wav2Vec2CTCTokenizer` files.

A Hugging Face CTC model directory holds `vocab.json` (token -> id) and `tokenizer_config.json`
(special tokens, word delimiter, case). The CTC blank is the padding token, as in transformers.
fairseq letter dictionaries (`dict.ltr.txt`) are imported as transformers' conversion script does:
fairseq's blank `<s>` (index 0) becomes `<pad>`, and its `<pad>` (index 1) becomes `<s>`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Any, ClassVar

from ..errors import CheckpointError
from . import read_fairseq_dict

VOCAB_FILE = "vocab.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"


@dataclass
class CTCTokenizer:
    kind: ClassVar[str] = "ctc"
    tokens: list[str]  # id -> token
    pad_token: str = "<pad>"  # also the CTC blank
    unk_token: str = "<unk>"
    bos_token: str | None = "<s>"
    eos_token: str | None = "</s>"
    word_delimiter_token: str = "|"
    do_lower_case: bool = False  # transformers: the vocabulary is upper case; output is lowered
    index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self):
        self.index = {t: i for i, t in enumerate(self.tokens)}
        if len(self.index) != len(self.tokens):
            dup = sorted({t for t in self.tokens if self.tokens.count(t) > 1})
            raise CheckpointError(f"vocabulary has duplicate tokens: {dup}")
        for name in ("pad_token", "unk_token", "word_delimiter_token"):
            token = getattr(self, name)
            if token not in self.index:
                raise CheckpointError(f"vocabulary has no {name} {token!r}")

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def blank_id(self) -> int:
        return self.index[self.pad_token]

    @property
    def delimiter_id(self) -> int:
        return self.index[self.word_delimiter_token]

    @property
    def special_tokens(self) -> set[str]:
        return {t for t in (self.pad_token, self.unk_token, self.bos_token, self.eos_token) if t is not None}

    def encode(self, text: str) -> list[int]:
        """Characters -> ids; spaces become the word delimiter, unknown characters the unknown token."""
        if self.do_lower_case:
            text = text.upper()
        unk = self.index[self.unk_token]
        return [self.index.get(c, unk) for c in text.replace(" ", self.word_delimiter_token)]

    def decode(self, ids: list[int], group: bool = True) -> str:
        """CTC ids -> text exactly as transformers' `Wav2Vec2CTCTokenizer.decode` produces it: merge
        repeats, drop blanks, the delimiter becomes a space, strip the ends."""
        tokens = [self.tokens[i] if 0 <= i < len(self.tokens) else self.unk_token for i in ids]
        if group:
            tokens = [t for t, _ in groupby(tokens)]
        text = "".join(" " if t == self.word_delimiter_token else t for t in tokens if t != self.pad_token).strip()
        return text.lower() if self.do_lower_case else text

    def to_dict(self) -> dict[str, Any]:
        """Plain data for an xlsr checkpoint (see `xlsr.text.tokenizer_from_dict`)."""
        return {
            "kind": self.kind,
            "tokens": list(self.tokens),
            "pad_token": self.pad_token,
            "unk_token": self.unk_token,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "word_delimiter_token": self.word_delimiter_token,
            "do_lower_case": self.do_lower_case,
        }

    # -- Hugging Face files ------------------------------------------------------------------
    @classmethod
    def from_hf_dir(cls, path: str | Path) -> CTCTokenizer:
        path = Path(path)
        try:
            vocab = json.loads((path / VOCAB_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{path / VOCAB_FILE}: cannot read the vocabulary ({e})") from None
        config = {}
        if (path / TOKENIZER_CONFIG_FILE).exists():
            config = json.loads((path / TOKENIZER_CONFIG_FILE).read_text(encoding="utf-8"))
        if config.get("target_lang") or (vocab and isinstance(next(iter(vocab.values())), dict)):
            lang = config.get("target_lang")
            if lang is None or lang not in vocab:
                raise CheckpointError(
                    f"{path / VOCAB_FILE}: a per-language vocabulary needs tokenizer_config target_lang"
                )
            vocab = vocab[lang]
        ids = sorted(vocab.values())
        if ids != list(range(len(ids))):
            raise CheckpointError(f"{path / VOCAB_FILE}: ids are not 0..{len(ids) - 1}")
        tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]

        def special(name: str, default: str | None) -> str | None:
            value = config.get(name, default)
            return value.get("content") if isinstance(value, dict) else value

        return cls(
            tokens,
            pad_token=special("pad_token", "<pad>"),
            unk_token=special("unk_token", "<unk>"),
            bos_token=special("bos_token", "<s>"),
            eos_token=special("eos_token", "</s>"),
            word_delimiter_token=special("word_delimiter_token", "|"),
            do_lower_case=bool(config.get("do_lower_case", False)),
        )

    def hf_files(self) -> dict[str, str]:
        """File name -> content of the tokenizer files transformers' AutoProcessor reads."""
        vocab = {t: i for i, t in enumerate(self.tokens)}
        specials = {"pad_token": self.pad_token, "unk_token": self.unk_token}
        specials.update({k: v for k, v in (("bos_token", self.bos_token), ("eos_token", self.eos_token)) if v})
        config = {
            "tokenizer_class": "Wav2Vec2CTCTokenizer",
            "processor_class": "Wav2Vec2Processor",
            **specials,
            "word_delimiter_token": self.word_delimiter_token,
            "replace_word_delimiter_char": " ",
            "do_lower_case": self.do_lower_case,
            "clean_up_tokenization_spaces": False,
        }
        return {
            VOCAB_FILE: json.dumps(vocab, ensure_ascii=False, indent=1),
            TOKENIZER_CONFIG_FILE: json.dumps(config, ensure_ascii=False, indent=2),
            SPECIAL_TOKENS_FILE: json.dumps(specials, ensure_ascii=False, indent=2),
        }

    # -- fairseq dictionaries ------------------------------------------------------------------
    @classmethod
    def from_fairseq_dict(cls, path: str | Path) -> CTCTokenizer:
        """`dict.ltr.txt` ("symbol count" per line) -> tokenizer with fairseq's ids.

        fairseq's Dictionary puts <s>, <pad>, </s>, <unk> first (ids 0..3) and uses <s> as the CTC blank;
        we name id 0 `<pad>` and id 1 `<s>`, as transformers' converter does, so the blank is the pad token.
        """
        symbols = read_fairseq_dict(path)
        return cls(["<pad>", "<s>", "</s>", "<unk>", *symbols], word_delimiter_token="|")
