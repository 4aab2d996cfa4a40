"""Document results as plain dicts: assembling pages, cancellation, retries.

Pure functions, used by worker children and by clients (no engine or PDF imports).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tasks.errors import ERROR_CLASSES, PagesFailed, error_info

PAGE_SEPARATOR = "\f"


def failed_page(number: int, exc: BaseException) -> dict[str, Any]:
    return {"number": number, "text": "", "source": "ocr", "error": error_info(exc)}


def assemble(pages: Iterable[dict[str, Any]], base: dict[str, Any]) -> dict[str, Any]:
    """The document result from its pages: SUCCESS, PARTIAL, or raise when all failed."""
    ordered = sorted(pages, key=lambda p: p["number"])
    failed = [p for p in ordered if "error" in p]
    if ordered and len(failed) == len(ordered):
        codes = {p["error"]["code"] for p in failed}
        cls = ERROR_CLASSES.get(codes.pop(), PagesFailed) if len(codes) == 1 else PagesFailed
        raise cls(f"all {len(failed)} pages failed; page {failed[0]['number']}: "
                  f"{failed[0]['error']['message']}")
    return {
        **base,
        "status": "PARTIAL" if failed else "SUCCESS",
        "text": PAGE_SEPARATOR.join(p["text"] for p in ordered),
        "pages": ordered,
        "failed_pages": [{"number": p["number"], **p["error"]} for p in failed],
        "warnings": page_warnings(ordered),
    }


def page_warnings(pages: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pages whose text is not the engine's own clean read (a fallback engine's)."""
    warnings = []
    for page in pages:
        fallback = page.get("fallback")
        if fallback and "error" not in page:
            vlm = page.get("vlm") or {}
            warnings.append({
                "page": page["number"], "code": "vlm_fallback",
                "message": f"page {page['number']}: the model's read ended with "
                           f"`{fallback['reason']}` after {vlm.get('tries', 0)} tries; "
                           f"the text is {fallback['engine']}'s"})
    return warnings


def merge_previous(result: dict[str, Any], previous: dict[str, Any]) -> dict[str, Any]:
    """A retry's result completed with the pages its earlier job already had."""
    redone = {p["number"] for p in result["pages"]}
    kept = [p for p in previous["pages"] if p["number"] not in redone and "error" not in p]
    base = {k: v for k, v in result.items()
            if k not in ("pages", "text", "status", "failed_pages")}
    merged = assemble([*kept, *result["pages"]], base)
    merged["page_count"] = previous.get("page_count", result.get("page_count"))
    merged["retry_of"] = previous.get("id")
    return merged


def cancelled_result(job_id: str, pages: list[dict[str, Any]], base: dict[str, Any]
                     ) -> dict[str, Any]:
    """A cancelled document: the pages finished before the cancel, in order."""
    done = sorted((p for p in pages if "error" not in p), key=lambda p: p["number"])
    return {**base, "id": job_id, "status": "CANCELLED", "pages": done,
            "text": PAGE_SEPARATOR.join(p["text"] for p in done)}
