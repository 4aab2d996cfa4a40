"""One page image as one job: what is sent, and the page read that comes back.

Runs in OCRmyPDF's page workers. Standard library only (and Pillow, an OCRmyPDF
dependency, for the page image's size and resolution).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_PAGE_TITLE = re.compile(r"""(class=['"]ocr_page['"][^>]*?title=)(['"])(.*?)\2""")
_SCAN_RES = re.compile(r";?\s*scan_res \d+ \d+")
_LEADING_NUMBER = re.compile(r"^0*(\d+)")


@dataclass(frozen=True)
class PageJob:
    """The job options of one page.

    `lang` is `auto` unless OCRmyPDF's `-l` named one; `engine` None: the service's
    routing; `deadline` the seconds the page may take; `output` hocr or text.
    """

    output: str
    lang: str
    engine: str | None
    deadline: float


@dataclass(frozen=True)
class PageRead:
    """What the service returned for one page.

    Its text, its hOCR (output=hocr) and the rotation the service's own orientation
    check turned it by (counter-clockwise degrees).
    """

    text: str
    hocr: bytes | None
    rotation: int


def page_label(path: Path) -> str:
    """`page 3` for OCRmyPDF's `000003_ocr.png`, else the file's name (for messages)."""
    found = _LEADING_NUMBER.match(path.name)
    return f"page {int(found[1])}" if found else path.name


def fitted_hocr(hocr: bytes, image: Path) -> bytes:
    """The service's hOCR with its page fitted to OCRmyPDF's image: size and resolution.

    OCRmyPDF places the text by the page's `scan_res`; the service's tesseract read the
    image without its DPI (tesseract then writes 70), so the page gets the image's own
    (none when it has none). A page the service found blank comes as an empty page
    without a size (`bbox 0 0 0 0`): it gets the image's.
    """
    from PIL import Image

    with Image.open(image) as im:
        (width, height), dpi = im.size, im.info.get("dpi")
    text = hocr.decode("utf-8")
    found = _PAGE_TITLE.search(text)
    if found is None:
        return hocr
    title = _SCAN_RES.sub("", found[3]).replace("bbox 0 0 0 0", f"bbox 0 0 {width} {height}")
    if dpi:
        title = f"{title}; scan_res {round(dpi[0])} {round(dpi[1])}"
    quote = found[2]
    return (text[:found.start()] + f"{found[1]}{quote}{title.strip('; ')}{quote}"
            + text[found.end():]).encode("utf-8")
