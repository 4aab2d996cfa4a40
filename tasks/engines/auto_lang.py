"""`lang=auto`: a page's languages and engine from the script its orientation check found.

Runs in worker pool children: the pipeline (tasks/pipeline/documents.py) asks
`page_language` for each page of a job whose `lang` is `auto`, with the `ScriptGuess`
of the page's script check: a line probe (a few lines read with one language of each
script, `script_probes`), or, where no probe reads them well, tesseract's orientation
check. No engine is loaded here: the engine classes only say which languages they read
(tesseract: the traineddata found on this worker).

The script's languages come from OCR_AUTO_LANGS (Latin=eng+vie, Greek=ell+eng,
Han=chi_sim, ...), less the codes this worker lacks; their engine from
OCR_LANG_ENGINES (`tasks.engines.lang_routing`) unless the job named its engine. A page
whose script is uncertain, unmapped, or whose script's language is lacking is read with
the worker's default set (the engine's `default_language`: OCR_TESSERACT_LANG), and its
`ScriptFound` says why (a page warning in the result). A Latin page found by the probe
is read in the one language of its set the probe's text shows (`_probed_codes`).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tasks.engines import engine_class
from tasks.engines.lang_routing import routed_engine
from tasks.records.results import ScriptFound

if TYPE_CHECKING:
    from tasks.engines.base import ScriptGuess
    from tasks.settings import Settings

# Below this script confidence the script is uncertain. Tesseract's confidence is
# (best votes / next votes - 1) / 0.3: 0.5 means 15 % more votes than the runner-up.
# Measured on the corpus (at 100 characters): Latin pages 3-35, the Greek page with
# English words 0.67, the Chinese page (Han) 1.3.
MIN_SCRIPT_CONFIDENCE = 0.5
# A probe read whose letters are at least this share non-ASCII shows its language's own
# letters (Vietnamese read by `vie`: ~25 % on the corpus; an English scan read by `vie`:
# ~5 %, stray `ø`, `Ỷ` for specks). Below it, the Latin set's probe language is left out.
MIN_OWN_LETTERS = 0.12


def script_probes(settings: Settings, reads: Collection[str] | None
                  ) -> list[tuple[str, str]]:
    """(script, language) pairs a line probe reads with, in OCR_AUTO_LANGS order.

    Each script's language is its set's last one found in no other script's set (a
    language written in that script: `vie` for Latin=eng+vie, `ell` for Greek=ell+eng),
    else the set's first; only languages in `reads` (None: any).
    """
    sets = {script: langs.split("+") for script, langs in settings.auto_lang_map.items()}
    probes = []
    for script, codes in sets.items():
        others = {code for other, langs in sets.items() if other != script for code in langs}
        own = [code for code in codes if code not in others] or codes[:1]
        lang = own[-1]
        if reads is None or lang in reads:
            probes.append((script, lang))
    return probes


def _own_letters(text: str) -> bool:
    """Whether enough of `text`'s letters are non-ASCII (MIN_OWN_LETTERS)."""
    letters = [ch for ch in text if ch.isalpha()]
    if not letters:
        return False
    return sum(not ch.isascii() for ch in letters) / len(letters) >= MIN_OWN_LETTERS


def _probed_codes(codes: list[str], guess: ScriptGuess) -> list[str]:
    """The set's codes the line probe found the page in.

    A probe language that is not the set's first (`vie` of Latin=eng+vie) reads the
    page alone when its read shows its own (non-ASCII) letters (a Vietnamese page: `vie`,
    which has every ASCII letter too), and is left out when it does not (an English
    page: `eng`). Reading both cost time for nothing on the corpus: tesseract retries
    each word the first language is unsure of in the next, so `eng+vie` took an English
    page ~1.5 times as long as `eng` (and `vie+eng` a Vietnamese page 1.08 times `vie`),
    with the same or a worse CER.
    """
    lang = guess.probe_lang
    if lang is None or lang not in codes or lang == codes[0]:
        return codes
    if _own_letters(guess.probe_text):
        return [lang]
    return [code for code in codes if code != lang]


@dataclass(frozen=True)
class PageLanguage:
    """The language set and engine that read an `auto` page, and what was found on it."""

    lang: str
    engine: str
    found: ScriptFound


def page_language(guess: ScriptGuess | None, engine: str, engine_named: bool,
                  settings: Settings, failed: Collection[str] = ()) -> PageLanguage:
    """The languages and engine of a page whose script check gave `guess`.

    `engine` is the job's engine (its own or the worker's); when the job did not name
    it (`engine_named` False), the script's languages may route the page to another
    one (`routed_engine`, skipping the engines in `failed`).
    """
    default = engine_class(engine, settings).default_language(settings)
    if guess is None:
        return PageLanguage(default, engine, ScriptFound(None, None, "uncertain"))
    confidence = round(guess.confidence, 2)
    if guess.probe_lang is None and guess.confidence < MIN_SCRIPT_CONFIDENCE:
        return PageLanguage(default, engine,
                            ScriptFound(guess.script, confidence, "uncertain"))
    wanted = settings.auto_lang_map.get(guess.script)
    if not wanted:
        return PageLanguage(default, engine,
                            ScriptFound(guess.script, confidence, "unmapped"))
    name = engine if engine_named else routed_engine(wanted, engine, settings, failed)
    reads = engine_class(name, settings).languages(settings)
    codes = wanted.split("+")
    have = [code for code in codes if reads is None or code in reads]
    if not have or have[0] != codes[0]:
        lacking = tuple(code for code in codes if code not in have)
        return PageLanguage(default, engine,
                            ScriptFound(guess.script, confidence, "missing", lacking))
    return PageLanguage("+".join(_probed_codes(have, guess)), name,
                        ScriptFound(guess.script, confidence, "found"))
