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
`ScriptFound` says why (a page warning in the result).

A Latin page found by the probe is read in the language its probe's words are in
(`tasks.engines.lang_id`: py3langid), any Latin language this worker has (`fra` where
`fra.traineddata` is installed), whatever its set names; where the words tell no
language (too few, mixed) the page is read with the worker's default set
(`language_uncertain`), and where they tell one this worker lacks, with the script's
set (`language_missing`, naming it; not for a language printed in the basic letters
alone, such as lorem ipsum's `lat`: the set reads every letter of it). A page whose
probe lines each name a language surely, two or more of them, is read with all the
languages its lines rank highest that this worker has (`deu+fra`; `lang_id.line_votes`).
The probe ends after its first line where that line's words are sure (`Probes.tells`).

A probe reads three lines; a page in more languages than its probe saw (a notice in six
Latin languages, whose inkiest line was German) is found by its own read: where that
read's lines, and its sentences that run over lines, name surely languages it was not
read with (`shown_languages`), the pipeline reads it again with every language they
name that this worker has.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tasks.engines import engine_class, lang_id
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
# Scripts whose page is read in the language its probe's words are in (lang_id), among
# the languages of that script this worker has; probed with their set's first code.
IDENTIFIED_SCRIPTS = {"Latin": lang_id.LATIN_LANGUAGES}


class Probes(list[tuple[str, str]]):
    """The (script, language) pairs a line probe reads with, and when it may stop early.

    A list of pairs (the engines' `detect_script` contract); `tells` lets the tesseract
    adapter end a Latin page's probe after its first line when that line's words
    already tell their language surely (`lang_id.Identified.sure`), instead of reading
    two more: on the corpus' short English pages that line is most of the probe's cost.
    """

    def tells(self, script: str, text: str) -> bool:
        """Whether a sure read of one line of `script`, `text`, says enough on its own."""
        return script in IDENTIFIED_SCRIPTS and lang_id.identify(text).sure


def script_probes(settings: Settings, reads: Collection[str] | None) -> Probes:
    """(script, language) pairs a line probe reads with, in OCR_AUTO_LANGS order.

    A script whose language is told from the probe's words (Latin) is probed with its
    set's first code (`eng`: the language its pages are read in unless the words say
    otherwise; its read of a French, German or Vietnamese line keeps enough of the words
    to tell their language). Any other script's language is its set's last one found in
    no other script's set (a language written in that script: `ell` for
    Greek=ell+eng), else the set's first; only languages in `reads` (None: any).
    """
    sets = {script: langs.split("+") for script, langs in settings.auto_lang_map.items()}
    probes = Probes()
    for script, codes in sets.items():
        others = {code for other, langs in sets.items() if other != script for code in langs}
        own = [code for code in codes if code not in others] or codes[:1]
        lang = codes[0] if script in IDENTIFIED_SCRIPTS else own[-1]
        if reads is None or lang in reads:
            probes.append((script, lang))
    return probes


def trial_probe(lang: str, scripts: Mapping[str, str]) -> tuple[str, str] | None:
    """The (script, language) an orientation check's trial read of a `lang` page reads with.

    `lang`'s first code and the OCR_AUTO_LANGS script (`scripts`) whose set holds it;
    None where no script there names that code (no trial read: OSD alone, as before).
    """
    code = lang.split("+")[0]
    script = next((name for name, langs in scripts.items() if code in langs.split("+")),
                  None)
    return None if script is None else (script, code)


def choosable(settings: Settings, reads: Collection[str] | None) -> dict[str, list[str]]:
    """Per script of OCR_AUTO_LANGS, the languages an `auto` page of it may be read in here.

    A set's codes this worker has (none: the set's first is lacking, its pages are read
    with the default set); for Latin, its set's first code then every other Latin
    language this worker has (`submit.py langs` shows these).
    """
    out: dict[str, list[str]] = {}
    for script, langs in settings.auto_lang_map.items():
        codes = langs.split("+")
        if reads is not None and codes[0] not in reads:
            continue
        have = [code for code in codes if reads is None or code in reads]
        extra = IDENTIFIED_SCRIPTS.get(script)
        if extra is not None and reads is not None:
            have = [have[0], *sorted(code for code in reads
                                     if code in extra and code != have[0])]
        out[script] = have
    return out


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
    if guess.script in IDENTIFIED_SCRIPTS and guess.probe_lang is not None:
        return _told_language(guess, confidence, "+".join(have), name, default, engine,
                              reads)
    return PageLanguage("+".join(have), name,
                        ScriptFound(guess.script, confidence, "found"))


def _told_language(guess: ScriptGuess, confidence: float, script_set: str, name: str,
                   default: str, engine: str, reads: Collection[str] | None
                   ) -> PageLanguage:
    """A page of an identified script (Latin): the language its probe's words are in.

    Read in that language alone where engine `name` has it; with the script's set
    (`script_set`, e.g. `eng`) where it lacks it (`language_missing`, naming it, unless
    the language is printed in the basic letters alone: `lang_id.PLAIN_LETTERS`); with
    the worker's default set where the words tell no language (`language_uncertain`).
    """
    votes = lang_id.line_votes(guess.probe_text)
    if votes.mixed:
        return _mixed_languages(votes, guess, confidence, script_set, name, reads)
    told = lang_id.identify(guess.probe_text)
    if told.code is None:
        return PageLanguage(default, engine,
                            ScriptFound(guess.script, confidence, "language_uncertain"))
    if reads is not None and told.code not in reads:
        if told.code in lang_id.PLAIN_LETTERS:  # lorem ipsum's `lat`: nothing lost
            return PageLanguage(script_set, name,
                                ScriptFound(guess.script, confidence, "found"))
        return PageLanguage(script_set, name, ScriptFound(
            guess.script, confidence, "language_missing", (told.code,)))
    return PageLanguage(told.code, name, ScriptFound(guess.script, confidence, "found"))


def _mixed_languages(votes: lang_id.LineVotes, guess: ScriptGuess, confidence: float,
                     script_set: str, name: str, reads: Collection[str] | None
                     ) -> PageLanguage:
    """A page whose probe lines name two or more languages: read with them all.

    The languages engine `name` has that the lines rank highest (`LineVotes.ranked`,
    two or three: `deu+fra`); a language a line named that it lacks is named in a
    `language_missing` warning (not one printed in the basic letters alone). With none
    of them here, the script's set reads it.
    """
    chosen = votes.ranked(reads)
    lacking = tuple(code for code in votes.sure if reads is not None and code not in reads
                    and code not in lang_id.PLAIN_LETTERS)
    outcome = "language_missing" if lacking else "found"
    return PageLanguage("+".join(chosen) or script_set, name,
                        ScriptFound(guess.script, confidence, outcome, lacking))


# The outcomes of a Latin page whose own read may show more languages than its probe:
# read in a language told, the default set (words untold) or the script's set.
RECHECKED = frozenset({"found", "language_uncertain", "language_missing"})


def shown_languages(text: str, lang: str, found: ScriptFound, engine: str,
                    settings: Settings) -> PageLanguage | None:
    """The languages an `auto` page's own read shows, where it was read without some.

    `text` is the page read with `lang` by `engine`; `found` what its script check
    said. A Latin page whose lines and sentences, one by one (`lang_id.line_votes`),
    name two or more languages surely, any of them missing from `lang`, is to be read
    again with every one of them `engine` has: those of `lang` first, in its order,
    then the others best first (`LineVotes.named`); a language a line named that it
    lacks is named in a `language_missing` warning (not one printed in the basic
    letters alone). None: the read stands (one language, or none new here).
    """
    if found.name not in IDENTIFIED_SCRIPTS or found.outcome not in RECHECKED:
        return None
    reads = engine_class(engine, settings).languages(settings)
    votes = lang_id.line_votes(text, reads, sentences=True)
    if not votes.mixed:
        return None
    named = votes.named(reads)
    read = lang.split("+")
    if len(named) < 2 or set(named) <= set(read):
        return None
    # The set it was read with keeps its order (its first is tesseract's main language:
    # `deu+fra` reads `großen` where `fra` first reads `groBen`), the others after it.
    chosen = [code for code in read if code in named] + \
        [code for code in named if code not in read]
    lacking = tuple(code for code in votes.sure if reads is not None and code not in reads
                    and code not in lang_id.PLAIN_LETTERS)
    outcome = "language_missing" if lacking else "found"
    return PageLanguage("+".join(chosen), engine,
                        ScriptFound(found.name, found.confidence, outcome, lacking))
