"""CTC decoding: greedy, or beam search with a KenLM n-gram model; character and word timestamps.

Greedy decoding gives the text transformers' `processor.batch_decode(logits.argmax(-1))` gives. Beam
search goes through flashlight-text's lexicon decoder (the decoder behind torchaudio's `ctc_decoder`
and fairseq's `W2lKenLMDecoder`): words come from a lexicon (the LM's own vocabulary for an ARPA file,
or `lexicon` for a binary one), scored by KenLM, with an LM weight and a word insertion score. Hotwords
are added to the lexicon and get a bonus on top of the LM score.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError, XlsrError
from ..text.ctc_tokenizer import CTCTokenizer


@dataclass(slots=True)  # a long recording holds one per character (json) or word: no __dict__ each
class Token:
    text: str
    start: float  # seconds
    end: float
    confidence: float


@dataclass(slots=True)
class Word:
    word: str
    start: float
    end: float
    confidence: float  # geometric mean of the frame probabilities of its characters (greedy) or of its path


@dataclass
class Hypothesis:
    text: str
    words: list[Word] = field(default_factory=list)
    chars: list[Token] = field(default_factory=list)
    score: float | None = None  # beam search: acoustic + weighted LM score


class Alignment:
    """A frame-level CTC path, given piece by piece -> text, words (and characters) with times and confidences.

    `add(path, frame_probs)` takes the next frames' token ids (t,) and the probability of each (t,); a
    character spans its run of frames (start = first frame * frame_seconds, end = (last frame + 1) *
    frame_seconds, as transformers' `output_char_offsets`), its confidence is the geometric mean of its frames'
    probabilities, a word's that of its characters' frames. Only the current run and the current word are held
    between calls, so a recording's memory is its words, never its frames: windows are decoded as they complete.
    """

    def __init__(self, tokenizer: CTCTokenizer, frame_seconds: float, keep_chars: bool = False):
        self.tok, self.frame_seconds = tokenizer, frame_seconds
        self.frames = 0  # frames seen so far
        self.run: list = []  # the open run: [token id, first frame, sum of log-probabilities]
        self.word: list = []  # the open word: [first frame, end frame, log-prob sum, frames, text pieces]
        self.text = io.StringIO()  # tokenizer.decode's text, before the final strip
        self.last_piece: str | None = None  # decode groups repeats by token text
        self.words: list[Word] = []
        self.chars: list[Token] | None = [] if keep_chars else None

    def add(self, path: np.ndarray, frame_probs: np.ndarray) -> None:
        if len(path) == 0:
            return
        log_probs = np.log(np.clip(frame_probs.astype(np.float64), 1e-12, 1.0))
        change = np.flatnonzero(np.diff(path)) + 1
        starts = np.concatenate([[0], change]).tolist()
        sums = np.add.reduceat(log_probs, starts).tolist()
        for s, logp in zip(starts, sums):
            token = int(path[s])
            if self.run and self.run[0] == token:  # the open run continues into these frames
                self.run[2] += logp
            else:
                self._close_run(self.frames + s)
                self.run = [token, self.frames + s, logp]
        self.frames += len(path)

    def _close_run(self, end: int) -> None:
        """The open run ends before frame `end`."""
        if not self.run:
            return
        token_id, start, logp = self.run
        self.run = []
        tok = self.tok
        token = tok.tokens[token_id] if 0 <= token_id < len(tok) else tok.unk_token
        if token != self.last_piece and token != tok.pad_token:
            self.text.write(" " if token == tok.word_delimiter_token else token)
        self.last_piece = token
        if token_id == tok.blank_id:
            return
        text = " " if token == tok.word_delimiter_token else token
        if self.chars is not None:
            fs = self.frame_seconds
            self.chars.append(Token(text, start * fs, end * fs, math.exp(logp / (end - start))))
        if text == " ":
            self._close_word()
        else:
            if not self.word:
                self.word = [start, end, 0.0, 0, io.StringIO()]
            self.word[1] = end
            self.word[2] += logp  # the same additions, in the same order, as summing the characters at the end
            self.word[3] += end - start
            self.word[4].write(text)

    def _close_word(self) -> None:
        if not self.word:
            return
        s, e, logp, n, pieces = self.word
        word = pieces.getvalue()
        fs = self.frame_seconds
        self.words.append(Word(word.lower() if self.tok.do_lower_case else word, s * fs, e * fs, math.exp(logp / n)))
        self.word = []

    def finish(self) -> Hypothesis:
        self._close_run(self.frames)
        self._close_word()
        text = self.text.getvalue().strip()
        return Hypothesis(text.lower() if self.tok.do_lower_case else text, self.words, self.chars or [])


def align(path: np.ndarray, frame_probs: np.ndarray, tokenizer: CTCTokenizer, frame_seconds: float) -> Hypothesis:
    """A whole frame-level CTC path -> text, characters and words with times and confidences (`Alignment`)."""
    alignment = Alignment(tokenizer, frame_seconds, keep_chars=True)
    alignment.add(np.asarray(path), np.asarray(frame_probs))
    return alignment.finish()


def best_path(log_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log_probs: (T, V) -> the argmax path (T,) and each frame's probability of it (T,)."""
    path = log_probs.argmax(-1)
    return path, np.exp(np.take_along_axis(log_probs, path[:, None], -1)[:, 0])


def greedy(log_probs: np.ndarray, tokenizer: CTCTokenizer, frame_seconds: float) -> Hypothesis:
    """log_probs: (T, V) -> the best path's hypothesis (argmax per frame)."""
    return align(*best_path(log_probs), tokenizer, frame_seconds)


class GreedyStream:
    """Greedy decoding of one recording, window by window: `add((t, V) log-probs)`, then `finish()`."""

    def __init__(self, tokenizer: CTCTokenizer, frame_seconds: float):
        self.alignment = Alignment(tokenizer, frame_seconds)

    def add(self, log_probs: np.ndarray) -> None:
        self.alignment.add(*best_path(log_probs))

    def finish(self) -> Hypothesis:
        return self.alignment.finish()


# -- beam search with an n-gram LM -----------------------------------------------------------------------


@dataclass(frozen=True)
class BeamSearchOptions:
    """Options of the KenLM beam search (flashlight `LexiconDecoderOptions`; names as torchaudio's ctc_decoder)."""

    lm: str  # KenLM model: ARPA text or binary
    lexicon: str | None = None  # words (one per line, optionally followed by their spelling); default: the ARPA's
    lm_weight: float = 2.0  # weight of the LM score (fairseq --lm-weight, torchaudio lm_weight)
    word_score: float = 0.0  # added per word: the word insertion score (fairseq --word-score)
    beam_size: int = 50
    beam_size_token: int | None = None  # tokens considered per frame (default: all)
    beam_threshold: float = 25.0
    unk_score: float = float("-inf")  # score of words outside the lexicon (-inf: never)
    hotwords: tuple[str, ...] = ()
    hotword_weight: float = 5.0  # bonus added to a hotword's LM score (same log10 units as the LM)


def arpa_words(path: Path) -> list[str]:
    """The unigrams of an ARPA file, without <s>, </s>, <unk>."""
    words, in_unigrams = [], False
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if line == "\\1-grams:":
                in_unigrams = True
            elif line.startswith("\\") and in_unigrams:
                break
            elif in_unigrams and line:
                parts = line.split("\t") if "\t" in line else line.split()
                if len(parts) >= 2 and parts[1] not in ("<s>", "</s>", "<unk>"):
                    words.append(parts[1])
    return words


def is_arpa(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4096)
    return b"\\data\\" in head


class BeamSearchDecoder:
    """Lexicon-constrained CTC beam search with KenLM (flashlight-text)."""

    def __init__(self, tokenizer: CTCTokenizer, options: BeamSearchOptions):
        try:
            from flashlight.lib.text.decoder import (
                LexiconDecoder,
                LexiconDecoderOptions,
                SmearingMode,
                Trie,
            )
            from flashlight.lib.text.decoder.kenlm import KenLM
            from flashlight.lib.text.dictionary import Dictionary, create_word_dict
        except ImportError:
            raise XlsrError("LM decoding needs flashlight-text: pip install 'xlsr[lm]'") from None
        lm_path = Path(options.lm)
        if not lm_path.is_file():
            raise ConfigError(f"{lm_path}: no such language model file")
        self.tokenizer, self.options = tokenizer, options
        words = self._lexicon_words(lm_path, options.lexicon)
        words = list(dict.fromkeys([*words, *options.hotwords]))
        lexicon, unspellable = {}, 0
        for word in words:
            spelling = self._spell(word)
            if spelling is None:
                unspellable += 1
            else:
                lexicon[word] = [spelling]
        if not lexicon:
            raise ConfigError(f"{lm_path}: none of the LM's words can be spelled with the model's vocabulary")
        self.unspellable = unspellable
        token_dict = Dictionary(list(tokenizer.tokens))
        self.word_dict = create_word_dict({"<unk>": [], **lexicon})  # flashlight wants an <unk> word
        try:
            with _quiet_native_output():  # KenLM prints its loading progress from C++
                base_lm = KenLM(str(lm_path), self.word_dict)
        except Exception as e:  # KenLM raises plain RuntimeErrors for unreadable files
            raise ConfigError(f"{lm_path}: KenLM cannot read it ({e})") from None
        bonus = {self.word_dict.get_index(w): options.hotword_weight for w in options.hotwords}
        self.lm = _HotwordLM(base_lm, bonus) if bonus else base_lm
        silence = tokenizer.delimiter_id
        trie = Trie(len(tokenizer), silence)
        start = self.lm.start(False)
        for word, spellings in lexicon.items():  # <unk> has no spelling: it never enters the trie
            index = self.word_dict.get_index(word)
            _, score = self.lm.score(start, index)
            for spelling in spellings:
                trie.insert([token_dict.get_index(t) for t in spelling], index, score)
        trie.smear(SmearingMode.MAX)
        decoder_options = LexiconDecoderOptions(
            beam_size=options.beam_size,
            beam_size_token=options.beam_size_token or len(tokenizer),
            beam_threshold=options.beam_threshold,
            lm_weight=options.lm_weight,
            word_score=options.word_score,
            unk_score=options.unk_score,
            sil_score=0.0,
            log_add=False,
            criterion_type=_ctc_criterion(),
        )
        unk = self.word_dict.get_index("<unk>")
        # a decoder per recording (they share the trie and the LM): recordings' windows interleave in batches
        self.new_decoder = lambda: LexiconDecoder(
            decoder_options, trie, self.lm, silence, tokenizer.blank_id, unk, [], False
        )

    @staticmethod
    def _lexicon_words(lm_path: Path, lexicon: str | None) -> list[str]:
        if lexicon:
            try:
                lines = Path(lexicon).read_text(encoding="utf-8").splitlines()
            except OSError as e:
                raise ConfigError(f"{lexicon}: cannot read the lexicon ({e.strerror})") from None
            return [line.split()[0] for line in lines if line.strip()]
        if not is_arpa(lm_path):
            raise ConfigError(f"{lm_path}: a binary KenLM needs --lexicon (its word list, one word per line)")
        return arpa_words(lm_path)

    def _spell(self, word: str) -> list[str] | None:
        """A word as the model's tokens, ending with the word delimiter; None if a character is missing."""
        tok = self.tokenizer
        for form in (word, word.upper(), word.lower()):
            if all(c in tok.index for c in form):
                return [*form, tok.word_delimiter_token]
        return None

    def decode(self, log_probs: np.ndarray, frame_seconds: float) -> Hypothesis:
        """log_probs: (T, V) float -> the best hypothesis with its frame-level alignment."""
        stream = self.stream(frame_seconds)
        stream.add(log_probs)
        return stream.finish()

    def stream(self, frame_seconds: float) -> BeamStream:
        """An incremental decode of one recording (flashlight's decode_begin / decode_step / decode_end)."""
        return BeamStream(self, frame_seconds)


class BeamStream:
    """Beam search over one recording, window by window, through the decoder's incremental API.

    Each window's emissions go to `decode_step` as soon as they are computed, and to a temporary file; the best
    path is known only at the end, when the file is read back block by block for the path's frame probabilities
    (the word confidences). So Python memory holds no frame outputs; flashlight keeps its own hypotheses, as its
    whole-utterance `decode` does.
    """

    def __init__(self, search: BeamSearchDecoder, frame_seconds: float):
        self.tokenizer, self.frame_seconds = search.tokenizer, frame_seconds
        self.frames, self.width = 0, len(search.tokenizer)
        self.spill = tempfile.TemporaryFile()
        self.decoder = search.new_decoder()
        self.decoder.decode_begin()

    def _step(self, emissions: np.ndarray) -> None:
        emissions = np.ascontiguousarray(emissions, dtype=np.float32)
        self.decoder.decode_step(emissions.ctypes.data, len(emissions), self.width)

    def add(self, log_probs: np.ndarray) -> None:
        log_probs = np.ascontiguousarray(log_probs, dtype=np.float32)
        self._step(log_probs)
        self.spill.write(log_probs.tobytes())
        self.frames += len(log_probs)

    def finish(self) -> Hypothesis:
        tok, decoder, T = self.tokenizer, self.decoder, self.frames
        # One extra frame where the word delimiter is certain: the lexicon decoder only completes a word at a
        # delimiter, and an utterance need not end with one.
        end = np.full((1, self.width), -1e4, np.float32)
        end[0, tok.delimiter_id] = 0.0
        self._step(end)
        decoder.decode_end()
        results = decoder.get_all_final_hypothesis()
        if not results:
            self.spill.close()
            return Hypothesis("")
        best = results[0]
        # result.tokens is the frame-level path with one padding entry at each end (as torchaudio reads it)
        path = np.array(list(best.tokens)[1 : T + 1], dtype=np.int64)
        alignment = Alignment(tok, self.frame_seconds)
        self.spill.seek(0)
        block = 4096  # frames read back at a time
        for start in range(0, T, block):
            frames = np.frombuffer(self.spill.read(block * self.width * 4), np.float32).reshape(-1, self.width)
            piece = path[start : start + len(frames)]
            alignment.add(piece, np.exp(frames[np.arange(len(piece)), piece]))
        self.spill.close()
        hyp = alignment.finish()
        hyp.score = float(best.score)
        return hyp


@contextlib.contextmanager
def _quiet_native_output():
    """Silence what native code writes to file descriptors 1 and 2."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, "wb") as null:
        os.dup2(null.fileno(), 1)
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _ctc_criterion():
    from flashlight.lib.text.decoder import CriterionType

    return CriterionType.CTC


def _hotword_lm_class():
    from flashlight.lib.text.decoder import LM

    class HotwordLM(LM):
        """KenLM's scores plus a bonus for hotwords (a Python LM in flashlight, as torchaudio's CTCDecoderLM)."""

        def __init__(self, base, bonus: dict[int, float]):
            LM.__init__(self)
            self.base, self.bonus = base, bonus

        def start(self, start_with_nothing: bool):
            return self.base.start(start_with_nothing)

        def score(self, state, token_index: int):
            out, score = self.base.score(state, token_index)
            return out, score + self.bonus.get(token_index, 0.0)

        def finish(self, state):
            return self.base.finish(state)

    return HotwordLM


def _HotwordLM(base, bonus):  # noqa: N802 (a class made on first use: flashlight is optional)
    return _hotword_lm_class()(base, bonus)
