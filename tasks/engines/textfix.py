"""Language-aware clean-up of recognised text, where tesseract is wrong in a way users see.

Pure functions (no engine import), applied by the tesseract adapter in worker children
to the page text and to each word. Two fixes, both chosen from measured errors on the
corpus pages (docs/languages.md, "Clean-up"):

- Greek (`ell` in the language set): tesseract's Greek model writes the micro sign
  U+00B5 `µ` for the Greek small letter mu U+03BC `μ`; every `µ` becomes `μ`.
- Chinese and Japanese (`chi_sim`, `chi_tra`, `jpn`, ...): tesseract puts spaces between
  CJK characters that were drawn without any; a space run (not a line break) whose both
  neighbours are CJK characters or full-width punctuation is removed. Punctuation is
  kept as drawn: full-width `，。：` stays full-width (no NFKC folding, which would turn it
  into ASCII `,.:`); and since tesseract's chi_sim model writes the ASCII form of
  full-width `，：；？！（）` drawn beside CJK text, an ASCII `,:;?!()` with a CJK character
  next to it (spaces between allowed) becomes the full-width form. `.` is left alone
  (`1. 标题`: the CJK full stop `。` is a different glyph, which tesseract reads).
"""

from __future__ import annotations

import re

MICRO_SIGN = "\u00b5"
GREEK_MU = "\u03bc"
CJK_LANGS = ("chi_sim", "chi_tra", "chi_sim_vert", "chi_tra_vert", "jpn", "jpn_vert")

# CJK ideographs, kana, CJK/full-width punctuation and full-width forms.
_CJK = (r"\u2e80-\u2fdf\u3000-\u303f\u3040-\u30ff\u3100-\u312f\u31a0-\u31ff"
        r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\ufe30-\ufe4f\uff00-\uffef")
_CJK_CHAR = re.compile(rf"[{_CJK}]")
_CJK_GAP = re.compile(rf"(?<=[{_CJK}])[ \t\u3000]+(?=[{_CJK}])")
_FULL_WIDTH = {",": "\uff0c", ":": "\uff1a", ";": "\uff1b", "?": "\uff1f", "!": "\uff01",
               "(": "\uff08", ")": "\uff09"}
_AFTER_CJK = re.compile(rf"(?<=[{_CJK}])([ \t]*)([,:;?!()])")
_BEFORE_CJK = re.compile(rf"([,:;?!()])(?=[ \t]*[{_CJK}])")


def codes(lang: str) -> tuple[str, ...]:
    """The codes of a tesseract language set such as `ell+eng`."""
    return tuple(code for code in lang.split("+") if code)


def needs_fix(lang: str) -> bool:
    """Whether `fix_text` changes anything for this language set."""
    langs = codes(lang)
    return "ell" in langs or any(code in CJK_LANGS for code in langs)


def is_cjk(char: str) -> bool:
    """Whether `char` is a CJK character or full-width punctuation (drawn unspaced)."""
    return bool(char) and _CJK_CHAR.match(char) is not None


def fix_words(words: list[str], lang: str) -> list[str]:
    """`fix_text` for the words of a page in reading order.

    Across word boundaries too: an ASCII `,:;?!()` that starts a word after a CJK word,
    or ends a word before one (tesseract often boxes `?` alone), becomes full-width.
    """
    out = [fix_text(word, lang) for word in words]
    if not any(code in CJK_LANGS for code in codes(lang)):
        return out
    for index, word in enumerate(out):
        before = out[index - 1][-1:] if index else ""
        after = out[index + 1][:1] if index + 1 < len(out) else ""
        if word[:1] in _FULL_WIDTH and is_cjk(before):
            word = _FULL_WIDTH[word[0]] + word[1:]
        if word[-1:] in _FULL_WIDTH and is_cjk(after):
            word = word[:-1] + _FULL_WIDTH[word[-1]]
        out[index] = word
    return out


def fix_text(text: str, lang: str) -> str:
    """`text` with the clean-up of the languages in `lang` applied."""
    langs = codes(lang)
    if "ell" in langs:
        text = text.replace(MICRO_SIGN, GREEK_MU)
    if any(code in CJK_LANGS for code in langs):
        text = _AFTER_CJK.sub(lambda m: m.group(1) + _FULL_WIDTH[m.group(2)], text)
        text = _BEFORE_CJK.sub(lambda m: _FULL_WIDTH[m.group(1)], text)
        text = _CJK_GAP.sub("", text)
    return text
