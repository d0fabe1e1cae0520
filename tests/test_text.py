"""Text normalisation (xlsr/text/normalize.py) and the CTC tokenizer's file formats."""

import unicodedata

from xlsr.text.ctc_tokenizer import CTCTokenizer
from xlsr.text.normalize import TextNormalization, normalize_text


def test_normalisation_steps():
    assert normalize_text("  Hello, World!  ¿Qué tal?  ") == "hello world qué tal"
    assert normalize_text("Don't stop — peut-être «demain»…") == "don't stop peut-être demain"
    assert normalize_text("l’homme") == "l'homme"  # typographic apostrophe inside a word
    assert normalize_text("'quoted' - dash") == "quoted dash"  # not between letters: removed
    decomposed = unicodedata.normalize("NFD", "Café")
    assert normalize_text(decomposed) == "café" and len(normalize_text(decomposed)) == 4
    assert normalize_text("A.B", TextNormalization(remove_punctuation=False, lowercase=False)) == "A.B"
    assert normalize_text("100% $5") == "100 5"


def test_fairseq_dictionary_becomes_transformers_vocabulary(tmp_path):
    (tmp_path / "dict.ltr.txt").write_text("| 10\nE 5\nT 4\n' 1\n")
    tok = CTCTokenizer.from_fairseq_dict(tmp_path / "dict.ltr.txt")
    assert tok.tokens == ["<pad>", "<s>", "</s>", "<unk>", "|", "E", "T", "'"] and tok.blank_id == 0
    files = tok.hf_files()
    (tmp_path / "hf").mkdir()
    for name, text in files.items():
        (tmp_path / "hf" / name).write_text(text)
    assert CTCTokenizer.from_hf_dir(tmp_path / "hf") == tok
    assert tok.encode("TE ET") == [6, 5, 4, 5, 6] and tok.encode("X") == [3]
    assert tok.decode([0, 6, 6, 0, 5, 4, 4, 0, 7]) == "TE '"
