"""Text normalisation before building a vocabulary or scoring WER/CER.

Steps, in order (each can be switched off): Unicode NFC, lower case, punctuation to spaces (an
apostrophe or hyphen between two letters is kept: "don't", "peut-être"), whitespace collapsed.
Punctuation is every character of a Unicode "P" category, and the symbols of the "S" categories.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class TextNormalization:
    nfc: bool = True
    lowercase: bool = True
    remove_punctuation: bool = True
    keep_inside_words: str = "'’-"  # kept between two letters when punctuation is removed


def _is_punctuation(c: str) -> bool:
    return unicodedata.category(c)[0] in "PS"


def normalize_text(text: str, options: TextNormalization = TextNormalization()) -> str:
    if options.nfc:
        text = unicodedata.normalize("NFC", text)
    if options.lowercase:
        text = text.lower()
    if options.remove_punctuation:
        chars = []
        for i, c in enumerate(text):
            if not _is_punctuation(c):
                chars.append(c)
            elif (
                c in options.keep_inside_words
                and 0 < i < len(text) - 1
                and text[i - 1].isalnum()
                and text[i + 1].isalnum()
            ):
                chars.append("'" if c == "’" else c)
            else:
                chars.append(" ")
        text = "".join(chars)
    return _SPACES.sub(" ", text).strip()
