"""Tesseract language codes as the language tags documents carry (BCP 47, `xml:lang`).

Pure; used by worker children that write hOCR, ALTO (tasks/pipeline/layouts.py) and the
searchable PDF (tasks/pipeline/pdf) with each page's language (`PageRecord.lang`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

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
