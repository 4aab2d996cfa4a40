"""The language codes a job's `lang` may name: tesseract's (its tessdata models).

Pure data. A client checks a job's codes against these before sending (submit.py
`--lang`); a code outside them is refused unless a live worker says it reads it (an
operator's own traineddata). Whether a worker has a code's traineddata is the worker's
to say (`language_unavailable`, tasks/engines/tessdata.py).
"""

from __future__ import annotations

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


def unknown_codes(lang: str | None) -> list[str]:
    """The codes of a language set (`ell+eng`) that are no tesseract language."""
    if not lang or lang == AUTO_LANG:
        return []
    return [code for code in lang.split("+") if code not in TESSERACT_LANGUAGES]
