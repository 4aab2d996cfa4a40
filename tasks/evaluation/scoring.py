"""Accuracy against ground truth: CER and WER, and the alignment a report shows.

The only rapidfuzz module. Runs wherever a read is scored: `submit.py eval`, a job
that carries ground truth (pool children), the nightly golden-set audit.

The metric is dinglehopper's and ocrevalUAtion's: both texts are NFC-normalised, every
run of whitespace becomes one space and the ends are stripped; then

    CER = Levenshtein distance between the characters / the ground truth's characters
    WER = Levenshtein distance between the words / the ground truth's words

Characters are Unicode code points after NFC (`e` + U+0301 and `é` are one character
and equal). Words are the whitespace-separated tokens, except that each Han, Hiragana
and Katakana character is a word of its own (those scripts put no space between words;
sacreBLEU's Chinese tokenizer counts the same way), so WER on a CJK line counts
characters where a spaced language counts words.

Empty ground truth follows dinglehopper: the rate is 0.0 when the hypothesis is empty
too, infinite when it is not (every character read is an insertion over nothing);
JSON carries an infinite rate as null. Totals over many pages or documents add the
edits and the lengths, so the inserted characters of a blank page still count.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

from rapidfuzz.distance import Levenshtein

__all__ = ["ZERO", "Line", "Score", "align_lines", "normalize", "score", "score_pages", "total",
           "words"]

_SPACES = re.compile(r"\s+")
# Han (with its extensions and compatibility block), Hiragana, Katakana: one word each.
_CJK = re.compile("([\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
                  "\U00020000-\U0003ffff])")


def normalize(text: str, *, ignore_case: bool = False,
              ignore_punctuation: bool = False) -> str:
    """NFC, whitespace runs as one space, ends stripped.

    Case is folded and punctuation (Unicode category P*) dropped when asked.
    """
    text = unicodedata.normalize("NFC", text)
    if ignore_case:
        text = unicodedata.normalize("NFC", text.casefold())
    if ignore_punctuation:
        text = "".join(c for c in text if not unicodedata.category(c).startswith("P"))
    return _SPACES.sub(" ", text).strip()


def words(normalized: str) -> list[str]:
    """The words of a normalised text: whitespace tokens, each CJK character one."""
    return _CJK.sub(r" \1 ", normalized).split()


def _rate(edits: int, length: int) -> float:
    if length:
        return edits / length
    return 0.0 if edits == 0 else float("inf")


@dataclass(frozen=True)
class Score:
    """Edits and lengths of one comparison, or of a total of several."""

    char_edits: int
    chars: int
    word_edits: int
    words: int

    @property
    def cer(self) -> float:
        return _rate(self.char_edits, self.chars)

    @property
    def wer(self) -> float:
        return _rate(self.word_edits, self.words)

    def __add__(self, other: Score) -> Score:
        return Score(self.char_edits + other.char_edits, self.chars + other.chars,
                     self.word_edits + other.word_edits, self.words + other.words)

    def to_json(self) -> dict[str, float | int | None]:
        """`{"cer", "wer", "chars", "words"}`, rates rounded to 6 places (null: infinite)."""
        def shown(rate: float) -> float | None:
            return None if rate == float("inf") else round(rate, 6)
        return {"cer": shown(self.cer), "wer": shown(self.wer), "chars": self.chars,
                "words": self.words}


ZERO = Score(0, 0, 0, 0)


def score(truth: str, hypothesis: str, *, ignore_case: bool = False,
          ignore_punctuation: bool = False) -> Score:
    """The hypothesis scored against the ground truth (see the module's docstring)."""
    ref = normalize(truth, ignore_case=ignore_case, ignore_punctuation=ignore_punctuation)
    hyp = normalize(hypothesis, ignore_case=ignore_case,
                    ignore_punctuation=ignore_punctuation)
    ref_words, hyp_words = words(ref), words(hyp)
    return Score(Levenshtein.distance(ref, hyp), len(ref),
                 Levenshtein.distance(ref_words, hyp_words), len(ref_words))


def score_pages(truth: list[str], hypothesis: list[str], **options: bool) -> list[Score]:
    """Page by page where the counts agree; else the joined texts as one comparison."""
    if len(truth) == len(hypothesis):
        return [score(t, h, **options) for t, h in zip(truth, hypothesis, strict=True)]
    return [score("\n".join(truth), "\n".join(hypothesis), **options)]


def total(scores: Iterable[Score]) -> Score:
    """The sum of the edits over the sum of the lengths."""
    result = ZERO
    for one in scores:
        result = result + one
    return result


# --- the alignment a report shows ----------------------------------------------------

@dataclass(frozen=True)
class Line:
    """One ground-truth line and what the hypothesis reads there.

    `pieces`: (kind, ground truth, hypothesis) with kind `equal`, `delete` (in the
    ground truth, not read), `insert` (read, not in the ground truth) or `replace`.
    """

    pieces: tuple[tuple[str, str, str], ...]
    edits: int
    chars: int

    @property
    def cer(self) -> float:
        return _rate(self.edits, self.chars)


def _lines_text(text: str) -> str:
    lines = (normalize(line) for line in unicodedata.normalize("NFC", text).splitlines())
    return "\n".join(line for line in lines if line)


def align_lines(truth: str, hypothesis: str) -> list[Line]:
    """The ground truth's lines, each with the hypothesis aligned to it, in order.

    Both texts are normalised line by line (blank lines dropped) and aligned as a
    whole, so a line the engine joined to or split from its neighbour still aligns;
    each edit belongs to the ground-truth line it falls on (an insertion, to the line
    it follows). The edits of all lines add up to the Levenshtein distance between the
    texts with their line breaks.
    """
    ref, hyp = _lines_text(truth), _lines_text(hypothesis)
    lines: list[Line] = []
    pieces: list[tuple[str, str, str]] = []

    def add(kind: str, a: str, b: str) -> None:
        if pieces and pieces[-1][0] == kind:
            last = pieces.pop()
            a, b = last[1] + a, last[2] + b
        pieces.append((kind, a, b))

    def close() -> None:
        edits = sum(max(len(a), len(b)) for kind, a, b in pieces if kind != "equal")
        chars = sum(len(a) for _, a, _ in pieces)
        lines.append(Line(tuple(pieces), edits, chars))
        pieces.clear()

    for op in Levenshtein.opcodes(ref, hyp):
        a, b = ref[op.src_start:op.src_end], hyp[op.dest_start:op.dest_end]
        if op.tag == "insert":
            add("insert", "", b)
            continue
        for i, char in enumerate(a):
            if op.tag == "equal" and char == "\n":
                close()
            elif op.tag == "equal":
                add("equal", char, char)
            elif op.tag == "delete":
                add("delete", char, "")
            else:
                add("replace", char, b[i])
    close()
    return lines
