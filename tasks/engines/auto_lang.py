"""`lang=auto`: a page's languages and engine from the script its orientation check found.

Runs in worker pool children: the pipeline (tasks/pipeline/documents.py) asks
`page_language` for each page of a job whose `lang` is `auto`, with the `ScriptGuess`
of the page's one orientation check. No engine is loaded here: the engine classes
only say which languages they read (tesseract: the traineddata found on this worker).

The script's languages come from OCR_AUTO_LANGS (Latin=eng+vie, Greek=ell+eng,
Han=chi_sim, ...), less the codes this worker lacks; their engine from
OCR_LANG_ENGINES (`tasks.engines.lang_routing`) unless the job named its engine. A page
whose script is uncertain, unmapped, or whose script's language is lacking is read with
the worker's default set (the engine's `default_language`: OCR_TESSERACT_LANG), and its
`ScriptFound` says why (a page warning in the result).
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
    if guess.confidence < MIN_SCRIPT_CONFIDENCE:
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
    return PageLanguage("+".join(have), name, ScriptFound(guess.script, confidence, "found"))
