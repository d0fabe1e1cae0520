"""The mBART-50 target vocabulary (xlsr/text/spm_tokenizer.py).

References: transformers' MBart50Tokenizer (the TEST reference only; xlsr runs on sentencepiece) loaded on the
fixture's spm.model copied as sentencepiece.bpe.model, and fairseq's own files in tests/fixtures/fairseq_st:
dict.txt (fairseq's target dictionary) and generate.json (fairseq's prefix tokens and its decoded `*_text`).
"""

from __future__ import annotations

import json
import random
import shutil

import pytest
import sentencepiece
from conftest import FIXTURES_ROOT

from xlsr.errors import CheckpointError, ConfigError
from xlsr.text.spm_tokenizer import SentencePieceTokenizer

ST = FIXTURES_ROOT / "fairseq_st"
GENERATE = json.loads((ST / "generate.json").read_text())
TEXTS = ["the cat sat on the mat", "Ünïcode x THE qq", "hello world.", "ａｂｃ", "", "x\ty\nz", "translate a sentence"]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("mbart50")
    shutil.copy(ST / "spm.model", path / "sentencepiece.bpe.model")
    return path


@pytest.fixture(scope="module")
def reference(hf_dir):
    transformers = pytest.importorskip("transformers")
    return transformers.MBart50Tokenizer.from_pretrained(hf_dir)


@pytest.fixture(scope="module")
def fairseq_tok():
    return SentencePieceTokenizer.from_fairseq(ST / "spm.model", ST / "dict.txt")


def dict_lines():
    return [line.rsplit(" ", 1)[0] for line in (ST / "dict.txt").read_text().splitlines()]


def test_fairseq_dictionary_ids_are_line_numbers_plus_four(fairseq_tok):
    """Reference: fixture dict.txt (index = line + 4) and generate.json's language tag."""
    assert len(fairseq_tok) == 4 + len(dict_lines()) == 118
    assert fairseq_tok.tokens[4:] == dict_lines()
    assert (fairseq_tok.bos_id, fairseq_tok.pad_id, fairseq_tok.eos_id, fairseq_tok.unk_id) == (0, 1, 2, 3)
    assert fairseq_tok.tokens[GENERATE["lang_tag_id"]] == GENERATE["lang_tag"] == "<lang:en_XX>"
    assert fairseq_tok.lang_id("en_XX") == fairseq_tok.lang_id("en") == GENERATE["lang_tag_id"] == 68
    assert fairseq_tok.lang_id("<lang:en_XX>") == 68
    assert len(fairseq_tok.languages) == 52 and fairseq_tok.kind == "sentencepiece"


def test_fairseq_prefix_text_encodes_to_the_fixture_tokens(fairseq_tok):
    """Reference: generate.json prefix_tokens = </s>, the language tag, then fairseq's pieces of prefix_text."""
    assert fairseq_tok.encode(GENERATE["prefix_text"]) == GENERATE["prefix_tokens"][2:]
    assert GENERATE["prefix_tokens"][:2] == [fairseq_tok.eos_id, fairseq_tok.lang_id("en")]


@pytest.mark.parametrize("text", ["  the  cat ", *TEXTS])
def test_encode_looks_pieces_up_in_the_dictionary_as_fairseq_does(fairseq_tok, text):
    """Reference: fairseq's rule, written out: sentencepiece's pieces (the S2T bpe tokenizer), each looked up in
    dict.txt (`Dictionary.encode_line`), <unk> (3) when missing."""
    sp = sentencepiece.SentencePieceProcessor(model_file=str(ST / "spm.model"))
    lines = dict_lines()
    expected = [lines.index(p) + 4 if p in lines else 3 for p in sp.encode(text, out_type=str)]
    assert fairseq_tok.encode(text) == expected


@pytest.mark.parametrize(
    "field, tokens",
    [
        ("greedy_loop_text", "greedy_loop"),
        ("fairseq_generator_beam1_text", "fairseq_generator_beam1"),
    ],
)
def test_decode_reproduces_fairseqs_texts(fairseq_tok, field, tokens):
    """Reference: generate.json `*_text`: fairseq's tgt_dict.string + sentencepiece decode, with </s> and the
    forced language tag removed; other language tags are kept (keep_lang_tags)."""
    for ids, text in zip(GENERATE[tokens], GENERATE[field]):
        ids = [i for i in ids if i != GENERATE["lang_tag_id"]]
        assert fairseq_tok.decode(ids, keep_lang_tags=True) == text


def test_vocabulary_equals_transformers(reference, hf_dir, fairseq_tok):
    """Reference: MBart50Tokenizer on the same sentencepiece model: same entries, same language ids."""
    tok = SentencePieceTokenizer.from_hf_dir(hf_dir)
    assert len(tok) == len(reference)
    assert tok.tokens == reference.convert_ids_to_tokens(list(range(len(reference))))
    assert {code: tok.lang_id(code) for code in tok.languages} == reference.lang_code_to_id
    assert {code: fairseq_tok.lang_id(code) for code in fairseq_tok.languages} == reference.lang_code_to_id
    assert reference.convert_tokens_to_ids(["<pad>", "</s>", "<unk>", "<mask>"]) == [
        tok.pad_id,
        tok.eos_id,
        tok.unk_id,
        tok.tokens.index("<mask>"),
    ]


@pytest.mark.parametrize("text", TEXTS)
def test_encode_equals_transformers(reference, hf_dir, text):
    """Reference: MBart50Tokenizer(text, add_special_tokens=False). (transformers differs on texts with leading,
    trailing or repeated spaces, where it keeps a piece that sentencepiece and fairseq drop, and on language
    codes written in the text, which it reads as tags.)"""
    tok = SentencePieceTokenizer.from_hf_dir(hf_dir)
    assert tok.encode(text) == reference(text, add_special_tokens=False)["input_ids"]


def test_decode_equals_transformers_on_random_ids(reference, hf_dir):
    """Reference: MBart50Tokenizer.decode with skip_special_tokens True and False, on random id sequences
    (pieces, specials, language codes, <mask> mixed)."""
    tok = SentencePieceTokenizer.from_hf_dir(hf_dir)
    rng = random.Random(0)
    for _ in range(300):
        ids = [rng.randrange(len(tok)) for _ in range(rng.randrange(12))]
        assert tok.decode(ids) == reference.decode(ids, skip_special_tokens=True), ids
        assert tok.decode(ids, skip_special=False) == reference.decode(ids, skip_special_tokens=False), ids


@pytest.mark.parametrize("source", ["hf", "fairseq"])
def test_written_hf_files_load_in_transformers_with_the_same_ids(tmp_path, hf_dir, fairseq_tok, source):
    """Reference: transformers' AutoTokenizer on the folder hf_files() writes: MBart50Tokenizer, same entries,
    same encoding, same language ids; xlsr reads the folder back unchanged."""
    transformers = pytest.importorskip("transformers")
    tok = SentencePieceTokenizer.from_hf_dir(hf_dir) if source == "hf" else fairseq_tok
    files = tok.hf_files()
    assert set(files) == {"sentencepiece.bpe.model", "tokenizer_config.json", "special_tokens_map.json"}
    assert json.loads(files["tokenizer_config.json"])["tokenizer_class"] == "MBart50Tokenizer"
    for name, content in files.items():
        (tmp_path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    loaded = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert type(loaded).__name__ == "MBart50Tokenizer"
    assert loaded.convert_ids_to_tokens(list(range(len(loaded)))) == SentencePieceTokenizer.from_hf_dir(hf_dir).tokens
    assert loaded.lang_code_to_id == {code: tok.lang_id(code) for code in tok.languages}
    for text in TEXTS:
        assert loaded(text, add_special_tokens=False)["input_ids"] == tok.encode(text)
    ids = GENERATE["fairseq_generator_beam4"][1]
    assert loaded.decode(ids, skip_special_tokens=True) == tok.decode(ids)
    assert SentencePieceTokenizer.from_hf_dir(tmp_path).tokens == SentencePieceTokenizer.from_hf_dir(hf_dir).tokens


def subset_dict(tmp_path, tags):
    """dict.txt with the fixture's pieces and only `tags` as language tags."""
    path = tmp_path / "dict.txt"
    pieces = [line for line in (ST / "dict.txt").read_text().splitlines() if not line.startswith("<")]
    path.write_text("\n".join([*pieces, *(f"<lang:{t}> 1" for t in tags)]) + "\n")
    return path


def test_languages_are_the_dictionarys_and_unknown_ones_are_a_one_line_error(tmp_path):
    tok = SentencePieceTokenizer.from_fairseq(ST / "spm.model", subset_dict(tmp_path, ["de_DE", "en_XX"]))
    assert tok.languages == ["de_DE", "en_XX"]
    assert tok.lang_id("de") == len(tok) - 2
    with pytest.raises(ConfigError) as e:
        tok.lang_id("fr")
    assert "'fr'" in str(e.value) and "de_DE, en_XX" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match="mBART-50's layout"):
        tok.hf_files()  # MBart50Tokenizer always has all 52 codes
    two = SentencePieceTokenizer.from_fairseq(ST / "spm.model", subset_dict(tmp_path, ["pt_XX", "pt_BR"]))
    assert two.lang_id("pt_BR") == len(two) - 1
    with pytest.raises(ConfigError, match="'pt' is ambiguous: give one of pt_XX, pt_BR"):
        two.lang_id("pt")


def test_bad_files_are_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no sentencepiece.bpe.model"):
        SentencePieceTokenizer.from_hf_dir(tmp_path)
    (tmp_path / "sentencepiece.bpe.model").write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="not a sentencepiece model"):
        SentencePieceTokenizer.from_hf_dir(tmp_path)
    bad = tmp_path / "dict.txt"
    bad.write_text("a 1\nno-count-here\n")
    with pytest.raises(CheckpointError, match=r"dict.txt:2: expected 'symbol count'"):
        SentencePieceTokenizer.from_fairseq(ST / "spm.model", bad)
    with pytest.raises(CheckpointError, match="cannot read"):
        SentencePieceTokenizer.from_fairseq(ST / "spm.model", tmp_path / "missing.txt")
    (tmp_path / "tokenizer_config.json").write_text('{"tokenizer_class": "T5Tokenizer"}')
    with pytest.raises(CheckpointError, match="T5Tokenizer is not MBart50Tokenizer"):
        SentencePieceTokenizer.from_hf_dir(tmp_path)
