"""The mBART-50 target vocabulary of the XLS-R speech-translation models, on sentencepiece alone.

Ids follow fairseq's `Dictionary` (and transformers' `MBart50Tokenizer`, which copies it):

    <s>=0  <pad>=1  </s>=2  <unk>=3
    sentencepiece piece i -> i + 1 for i >= 3 (pieces 0..2 are sentencepiece's own <unk>, <s>, </s>)
    then the 52 mBART-50 language codes (`ar_AR` ... `sl_SI`), then <mask>       # 250054 ids for mBART-50

Two sources spell the same vocabulary. A Hugging Face directory holds `sentencepiece.bpe.model` and
`tokenizer_config.json` (tokenizer_class MBart50Tokenizer): the layout above is implied, the language codes are
written `en_XX`. A fairseq checkpoint comes with `dict.txt` ("symbol count" per line, index = line + 4) and the
sentencepiece model: there the language codes are tags, `<lang:en_XX>`, and the pieces are looked up by name, as
fairseq's `Dictionary.encode_line` does. `tokens` keeps each source's spelling; `languages` and `lang_id` use
the bare codes for both.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import sentencepiece

from ..errors import CheckpointError, ConfigError
from . import read_fairseq_dict

SPM_FILE = "sentencepiece.bpe.model"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"

BOS, PAD, EOS, UNK, MASK = "<s>", "<pad>", "</s>", "<unk>", "<mask>"
SPECIALS = (BOS, PAD, EOS, UNK)  # ids 0..3, fairseq's Dictionary order
SPM_CONTROL = 3  # sentencepiece ids 0..2 (<unk>, <s>, </s>) are not dictionary lines

# transformers' MBart50Tokenizer.FAIRSEQ_LANGUAGE_CODES, in id order
MBART50_LANGUAGES = (
    "ar_AR cs_CZ de_DE en_XX es_XX et_EE fi_FI fr_XX gu_IN hi_IN it_IT ja_XX kk_KZ ko_KR lt_LT lv_LV my_MM ne_NP "
    "nl_XX ro_RO ru_RU si_LK tr_TR vi_VN zh_CN af_ZA az_AZ bn_IN fa_IR he_IL hr_HR id_ID ka_GE km_KH mk_MK ml_IN "
    "mn_MN mr_IN pl_PL ps_AF pt_XX sv_SE sw_KE ta_IN te_IN th_TH tl_XX uk_UA ur_PK xh_ZA gl_ES sl_SI"
).split()

# `<lang:en_XX>` (fairseq speech_to_text), `[en_XX]` (fairseq multilingual mBART), `en_XX` (transformers)
_LANG_TAG = re.compile(r"<lang:(?P<a>[^>]+)>|\[(?P<b>[a-z]{2,3}_[A-Z]{2})\]|(?P<c>[a-z]{2,3}_[A-Z]{2})")


def _lang_code(token: str) -> str | None:
    """The language code a vocabulary entry stands for, or None when it is not a language tag."""
    m = _LANG_TAG.fullmatch(token)
    return None if m is None else (m["a"] or m["b"] or m["c"])


class SentencePieceTokenizer:
    """Text <-> fairseq/mBART-50 ids, with sentencepiece splitting the text into pieces.

    tokens: id -> entry, specials first (`<s>`, `<pad>`, `</s>`, `<unk>` = ids 0..3). Every other entry is a
    sentencepiece piece, a language tag or `<mask>`.
    """

    kind = "sentencepiece"

    def __init__(self, spm_model: bytes, tokens: list[str], source: str = "<memory>"):
        if list(tokens[:4]) != list(SPECIALS):
            raise CheckpointError(f"{source}: the vocabulary must start with {' '.join(SPECIALS)}")
        self.spm_model = spm_model
        self.sp = _load_spm(spm_model, source)
        self.tokens = list(tokens)
        self.index = {t: i for i, t in enumerate(self.tokens)}
        if len(self.index) != len(self.tokens):
            dup = sorted({t for t in self.tokens if self.tokens.count(t) > 1})
            raise CheckpointError(f"{source}: the vocabulary has duplicate entries: {dup[:5]}")
        self._lang_ids = {}  # code -> id, for the entries that are language tags and not pieces
        for i, t in enumerate(self.tokens[4:], 4):
            code = _lang_code(t)
            if code is not None and self.sp.piece_to_id(t) == self.sp.unk_id():
                self._lang_ids[code] = i
        self._skipped = {self.bos_id, self.pad_id, self.eos_id}  # never text
        self._special = self._skipped | {self.unk_id, *self._lang_ids.values(), self.index.get(MASK, -1)}

    def __len__(self) -> int:
        return len(self.tokens)

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer({len(self)} tokens, {len(self._lang_ids)} languages)"

    bos_id = property(lambda self: 0, doc="`<s>`")
    pad_id = property(lambda self: 1, doc="`<pad>`")
    eos_id = property(lambda self: 2, doc="`</s>`: also the decoder start of fairseq and mBART")
    unk_id = property(lambda self: 3, doc="`<unk>`")

    @property
    def languages(self) -> list[str]:
        """The language codes of the vocabulary, in id order (`ar_AR`, `cs_CZ`, ...)."""
        return list(self._lang_ids)

    def lang_id(self, code: str) -> int:
        """Id of a target-language token, from the mBART-50 code (`de_DE`), ISO 639-1 (`de`) or the tag itself."""
        key = _lang_code(code) or code
        if key in self._lang_ids:
            return self._lang_ids[key]
        matches = [c for c in self._lang_ids if c.split("_")[0] == key.lower()]
        if len(matches) == 1:
            return self._lang_ids[matches[0]]
        if matches:
            raise ConfigError(f"target language {code!r} is ambiguous: give one of {', '.join(matches)}")
        known = ", ".join(self._lang_ids) or "none"
        raise ConfigError(f"unknown target language {code!r}; this model's languages: {known}")

    def encode(self, text: str) -> list[int]:
        """Text -> ids of its sentencepiece pieces (no language tag, no `</s>`), as fairseq's dictionary maps
        them (a piece missing from the vocabulary becomes `<unk>`). transformers' MBart50Tokenizer gives the same
        ids except where the text has leading, trailing or repeated spaces (sentencepiece drops them, it keeps
        a `▁`) or language codes as words (it reads them as tags)."""
        return [self.index.get(p, self.unk_id) for p in self.sp.encode(text, out_type=str)]

    def decode(self, ids: list[int], skip_special: bool = True, keep_lang_tags: bool = False) -> str:
        """Ids -> text.

        skip_special: drop `<s>`, `<pad>`, `</s>`, language tags, `<mask>` and `<unk>`: the text transformers'
        `MBart50Tokenizer.decode(ids, skip_special_tokens=True)` gives. keep_lang_tags: drop only `<s>`, `<pad>`,
        `</s>` and keep every other entry as written, with both ends stripped: fairseq's `tgt_dict.string(ids)`
        followed by its sentencepiece decoding (the `*_text` of fairseq's generate output, once the caller has
        removed the forced language tag). Pieces are joined and `▁` becomes a space; the first one's space is
        dropped, as sentencepiece and transformers drop it.
        """
        drop = self._skipped if keep_lang_tags else self._special if skip_special else set()
        text = "".join(self.tokens[i] if 0 <= i < len(self.tokens) else UNK for i in ids if i not in drop)
        text = text.replace("\u2581", " ")
        return text.strip() if keep_lang_tags else text.removeprefix(" ")

    # -- Hugging Face files ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain data for an xlsr checkpoint: the sentencepiece model's bytes and the id -> entry list."""
        return {"kind": self.kind, "spm_model": bytes(self.spm_model), "tokens": list(self.tokens)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SentencePieceTokenizer:
        return cls(bytes(d["spm_model"]), list(d["tokens"]), source="xlsr checkpoint")

    @classmethod
    def from_hf_dir(cls, path: str | Path) -> SentencePieceTokenizer:
        """A transformers MBart50Tokenizer directory (`sentencepiece.bpe.model`, `tokenizer_config.json`)."""
        path = Path(path)
        config = {}
        if (path / TOKENIZER_CONFIG_FILE).exists():
            try:
                config = json.loads((path / TOKENIZER_CONFIG_FILE).read_text(encoding="utf-8"))
            except ValueError as e:
                raise CheckpointError(f"{path / TOKENIZER_CONFIG_FILE}: not JSON ({e})") from None
        name = config.get("tokenizer_class")
        if name is not None and name not in ("MBart50Tokenizer", "MBart50TokenizerFast"):
            raise CheckpointError(f"{path / TOKENIZER_CONFIG_FILE}: tokenizer_class {name} is not MBart50Tokenizer")
        if not (path / SPM_FILE).exists():
            raise CheckpointError(
                f"{path}: no {SPM_FILE}; xlsr reads the mBART-50 vocabulary from the sentencepiece model "
                "(copy it from the original model directory)"
            )
        return cls.from_spm_model((path / SPM_FILE).read_bytes(), str(path))

    @classmethod
    def from_spm_model(cls, spm_model: bytes, source: str = "<memory>") -> SentencePieceTokenizer:
        """A sentencepiece model's bytes -> the vocabulary MBart50Tokenizer builds on it (the mBART-50 layout)."""
        return cls(spm_model, _mbart50_tokens(_load_spm(spm_model, source)), source=source)

    def hf_files(self) -> dict[str, str | bytes]:
        """File name -> content of a directory transformers' AutoTokenizer loads as MBart50Tokenizer with these
        ids. Only a vocabulary in the mBART-50 layout can be written (MBart50Tokenizer implies it)."""
        normalised = [t if i not in self._lang_ids.values() else _lang_code(t) for i, t in enumerate(self.tokens)]
        if normalised != _mbart50_tokens(self.sp):
            raise CheckpointError(
                "the target vocabulary is not in mBART-50's layout (specials, sentencepiece pieces, 52 language "
                "codes, <mask>), so transformers' MBart50Tokenizer cannot represent it"
            )
        specials = {
            "bos_token": BOS,
            "eos_token": EOS,
            "unk_token": UNK,
            "sep_token": EOS,
            "pad_token": PAD,
            "cls_token": BOS,
            "mask_token": {"content": MASK, "lstrip": True, "normalized": True, "rstrip": False, "single_word": False},
        }
        config = {
            "tokenizer_class": "MBart50Tokenizer",
            "processor_class": "Wav2Vec2Processor",
            **specials,
            "src_lang": None,
            "tgt_lang": None,
            "clean_up_tokenization_spaces": False,
        }
        return {
            SPM_FILE: self.spm_model,
            TOKENIZER_CONFIG_FILE: json.dumps(config, ensure_ascii=False, indent=2),
            SPECIAL_TOKENS_FILE: json.dumps(
                {**specials, "additional_special_tokens": MBART50_LANGUAGES}, ensure_ascii=False, indent=2
            ),
        }

    # -- fairseq dictionaries ------------------------------------------------------------------
    @classmethod
    def from_fairseq(cls, spm_path: str | Path, dict_path: str | Path) -> SentencePieceTokenizer:
        """fairseq's target dictionary (`dict.txt`, "symbol count" per line, index = line + 4) and the
        sentencepiece model of its data config."""
        spm_path, dict_path = Path(spm_path), Path(dict_path)
        try:
            spm_model = spm_path.read_bytes()
        except OSError as e:
            raise CheckpointError(f"{spm_path}: cannot read it ({e.strerror})") from None
        symbols = read_fairseq_dict(dict_path)
        _load_spm(spm_model, str(spm_path))
        return cls(spm_model, [*SPECIALS, *symbols], source=str(dict_path))


def train_sentencepiece(
    texts: list[str], vocab_size: int, model_type: str = "unigram", source: str = "the training targets"
) -> SentencePieceTokenizer:
    """A new target vocabulary: a sentencepiece model trained on `texts` (as fairseq's speech_to_text data
    preparation trains one: unigram, full character coverage), in mBART-50's layout (specials, its pieces, the
    52 mBART-50 language codes, `<mask>`), so that the language tags work as in the published models and
    transformers' MBart50Tokenizer reads it. `vocab_size` counts sentencepiece's pieces and is an upper bound
    (a small corpus yields fewer). DataError, naming `source`, when sentencepiece cannot train on the texts."""
    import io

    from ..errors import DataError

    model = io.BytesIO()
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size, model_type=model_type,
            character_coverage=1.0, hard_vocab_limit=False, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            minloglevel=2,
        )  # fmt: skip
    except RuntimeError as e:
        raise DataError(f"{source}: cannot train a sentencepiece model ({e}); check spm_vocab_size") from None
    return SentencePieceTokenizer.from_spm_model(model.getvalue(), source)


def _load_spm(spm_model: bytes, source: str) -> sentencepiece.SentencePieceProcessor:
    try:
        return sentencepiece.SentencePieceProcessor(model_proto=spm_model)
    except (RuntimeError, TypeError, OSError) as e:
        raise CheckpointError(f"{source}: not a sentencepiece model ({e})") from None


def _mbart50_tokens(sp: sentencepiece.SentencePieceProcessor) -> list[str]:
    """The vocabulary transformers' MBart50Tokenizer builds on a sentencepiece model."""
    pieces = [sp.id_to_piece(i) for i in range(SPM_CONTROL, len(sp))]
    return [*SPECIALS, *pieces, *MBART50_LANGUAGES, MASK]
