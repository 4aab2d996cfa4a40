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
"""

from __future__ import annotations

import threading
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

# A language is told when its probability is at least MIN_PROBABILITY and RUNNER_UP
# times the next one's (py3langid's probabilities are calibrated by the text's length:
# short texts spread them). Measured on the corpus: told 0.47-1.00 at >= 2.2 times the
# runner-up; untold (page numbers, a word) 0.05-0.15.
MIN_PROBABILITY = 0.4
RUNNER_UP = 2.0
# Fewer letters than this tell nothing (a page number, a heading word).
MIN_LETTERS = 15

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
    if sum(ch.isalpha() for ch in text) < MIN_LETTERS:
        return Identified(None, None, 0.0, 0.0)
    ranked = _load().rank(text)
    (best, probability), runner_up = ranked[0], ranked[1][1] if len(ranked) > 1 else 0.0
    told = probability >= MIN_PROBABILITY and probability >= RUNNER_UP * runner_up
    return Identified(TESSERACT_CODES[best] if told else None, best,
                      round(float(probability), 3), round(float(runner_up), 3))
