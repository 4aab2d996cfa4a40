"""The wording of a result's page warnings: pages whose text is not what was asked for.

Pure; runs where a result's JSON is written (worker pool children), through
`DocumentResult.to_json`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from tasks.records.languages import adding


class ScriptFound(Protocol):
    """What the wording reads of a page's script finding (results.ScriptFound)."""

    @property
    def name(self) -> str | None: ...
    @property
    def outcome(self) -> str: ...
    @property
    def missing(self) -> Any: ...
    @property
    def confidence(self) -> Any: ...


class PageRecord(Protocol):
    """What the wording reads of a page record (results.PageRecord has these fields).

    Structural types, so this module needs nothing from results.py, which imports it.
    """

    @property
    def number(self) -> int: ...
    @property
    def lang(self) -> str | None: ...
    @property
    def script(self) -> Any: ...
    @property
    def error(self) -> Any: ...
    @property
    def structure_error(self) -> Any: ...
    @property
    def fallback(self) -> Any: ...
    @property
    def vlm(self) -> Any: ...
    @property
    def text(self) -> str: ...
    @property
    def source(self) -> str: ...


# What a page read in the worker's default languages asks of its sender.
NAME_THEM = "name its languages (`--lang`, the API's `lang`) to read it in them"


def _script_warning(page: PageRecord, script: ScriptFound) -> dict[str, Any]:
    """The page warning of an `auto` page not read in its script's languages.

    One line: what was found, what the page was read with, and what to do.
    """
    name, lang = script.name, page.lang or "the default languages"
    lacking = list(script.missing or ())
    if script.outcome == "missing":
        return {"page": page.number, "code": "lang_missing",
                "message": f"page {page.number}: its script is {name}, whose language "
                           f"{'+'.join(lacking)} this worker lacks; read with {lang}; "
                           f"{adding(lacking)}"}
    if script.outcome == "language_missing":
        return {"page": page.number, "code": "lang_missing",
                "message": f"page {page.number}: its script is {name} and its words are "
                           f"{'+'.join(lacking)}, which this worker lacks; read with "
                           f"{lang}; {adding(lacking)}"}
    if script.outcome == "language_uncertain":
        return {"page": page.number, "code": "lang_uncertain",
                "message": f"page {page.number}: its script is {name}, but its words tell "
                           f"no language; read with the worker's default languages {lang}; "
                           f"{NAME_THEM}"}
    if script.outcome == "unmapped":
        return {"page": page.number, "code": "lang_missing",
                "message": f"page {page.number}: its script is {name}, for which this "
                           f"worker has no languages; read with {lang}; name its "
                           f"languages for {name} in OCR_AUTO_LANGS where the workers run, "
                           f"or {NAME_THEM}"}
    seen = "too little text to tell its script" if name is None else \
        f"its script is uncertain ({name}, confidence {script.confidence})"
    return {"page": page.number, "code": "lang_uncertain",
            "message": f"page {page.number}: {seen}; read with the worker's default "
                       f"languages {lang}; {NAME_THEM}"}


def page_warnings(pages: Iterable[PageRecord]) -> list[dict[str, Any]]:
    """Pages whose text is not what was asked for, as the result's `warnings`.

    A fallback engine's text (`vlm_fallback`), plain text where the page's layout
    analysis failed (`layout_failed`), and a page neither blank nor failed that gave
    no text (`text_missing`): a result never answers an empty page in silence.
    """
    warnings = []
    for page in pages:
        if page.error is None and page.source != "blank" and not page.text.strip():
            warnings.append({"page": page.number, "code": "text_missing",
                             "message": f"page {page.number}: no text was read from it, "
                                        "though it is not blank"})
        if page.script is not None and page.script.outcome != "found" and page.error is None:
            warnings.append(_script_warning(page, page.script))
        if page.structure_error is not None and page.error is None:
            warnings.append({"page": page.number, "code": page.structure_error.code,
                             "message": page.structure_error.message})
        if page.fallback is not None and page.error is None:
            tries = page.vlm.tries if page.vlm is not None else 0
            warnings.append({
                "page": page.number, "code": "vlm_fallback",
                "message": f"page {page.number}: the model's read ended with "
                           f"`{page.fallback.reason}` after {tries} tries; "
                           f"the text is {page.fallback.engine}'s"})
    return warnings
