"""Write the sample documents of samples/, which README's and the docs' examples read.

Every sample is drawn here, from the text below, with fonts that come with the venv
(PyMuPDF's Times and pymupdf-fonts' Noto Sans): nothing is downloaded or copied from
elsewhere. The same venv writes the same files (fixed seeds, no dates, no random ids).

- `letter.png`: a one-page letter as a 300-dpi black-and-white scan, a little skewed
  and specked; `letter.gt.txt` is its text.
- `report.pdf`: three pages. Page 1 has a text layer: a heading across the page, an
  abstract, two columns and a table. Page 2 is an image only, a scan with no text
  layer. Page 3 has a text layer: a heading, a list and a paragraph.
- `handbook.pdf`: ten pages of running text with a text layer (a job long enough to
  cancel while it runs).
- `languages.png`: a line each of English, Vietnamese and Greek, as a grey scan;
  `languages.gt.txt` is its text.
- `broken.png`: the first bytes of a PNG and then nothing (a file that cannot be decoded).

    python -m scripts.make_samples [DIR]   # default: samples/ of this checkout (`make samples`)
"""

from __future__ import annotations

import io
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pymupdf
from PIL import Image, ImageDraw, ImageFilter, ImageFont

ROOT = Path(__file__).resolve().parents[1]

LETTER = [
    "Riverside Community Library",
    "14 Mill Lane, Eastbrook",
    "",
    "Dear members,",
    "",
    "The reading room reopens on Monday after its new roof and",
    "windows. Books borrowed before the works may be returned at",
    "the front desk or through the slot beside the main door.",
    "",
    "From next month the library opens at nine in the morning and",
    "closes at seven in the evening, Saturdays included. The local",
    "history collection moves to the first floor, next to the maps.",
    "",
    "Volunteers who would like to help with the children's hour on",
    "Wednesdays are welcome to leave their names with Anna Brooks.",
    "",
    "With kind regards,",
    "Thomas Hale, librarian",
]

REPORT_TITLE = "Riverside Community Library: Annual Report"
REPORT_ABSTRACT = ("This report gives the year's loans, visitors and opening hours of "
                   "the library's three branches, and the work planned for next year.")
REPORT_LEFT = [
    "The main branch lent more books than in any year before. Most loans were novels "
    "and children's picture books, followed by travel guides and cookery.",
    "The new reading room on the ground floor seats forty readers. It stays open during "
    "the lunch hour, when many visitors come from the offices nearby.",
]
REPORT_RIGHT = [
    "The Hillside branch shortened its hours in winter and extended them in summer, "
    "when the school holidays bring more families to its garden.",
    "The mobile library visited twelve villages every fortnight. Its van was repaired "
    "in March and now carries a ramp for wheelchairs.",
]
REPORT_TABLE = [
    ("Branch", "Books lent", "Visitors", "Opening hours"),
    ("Main", "48,210", "61,300", "9:00-19:00"),
    ("Hillside", "12,875", "15,420", "10:00-17:00"),
    ("Mobile", "6,940", "8,115", "by timetable"),
]
REPORT_SCAN = [
    "Minutes of the committee meeting",
    "",
    "The committee met on the first Tuesday of the month. The",
    "treasurer reported that the accounts were in order and that",
    "the book sale had raised enough to buy new shelves for the",
    "children's corner. The chair thanked the volunteers who had",
    "sorted the donations and carried the boxes to the hall.",
    "",
    "It was agreed to hold the next book sale in the autumn and",
    "to ask the school to lend its tables for the day.",
]
REPORT_PLAN_TITLE = "Plans for next year"
REPORT_PLAN = [
    "Open the main branch on Sunday afternoons.",
    "Add a second van to the mobile library.",
    "Scan the local newspapers of the last century.",
]
REPORT_PLAN_END = ("The committee will review these plans in the spring, once the "
                   "year's budget is known.")

HANDBOOK_TITLE = "Volunteer Handbook"
HANDBOOK = [
    ("Welcome", "Thank you for giving your time to the library. This handbook explains "
     "how the branches work, what volunteers do, and whom to ask when something is "
     "unclear. Keep it at hand during your first weeks."),
    ("Opening and closing", "The first volunteer to arrive collects the keys from the "
     "front desk, switches on the lights and the catalogue computers, and checks that "
     "the returns box is empty. At closing time the last volunteer makes sure that "
     "every reader has left, the windows are shut and the alarm is set."),
    ("Lending books", "Readers show their card at the desk. Scan the card, then each "
     "book, and stamp the date of return on the slip inside the cover. A reader may "
     "borrow up to twelve books for three weeks and renew them twice."),
    ("Returns", "Returned books go on the trolley behind the desk. Check each one for "
     "damage, note any missing pages in the repair book, and shelve the books by the "
     "number on their spine before the end of your shift."),
    ("The children's hour", "On Wednesday afternoons two volunteers read to the "
     "children in the corner by the window. Choose the books the week before, and keep "
     "the session to one hour, with a short break for drawing."),
    ("Helping readers", "Many readers ask for help with the catalogue, the printers or "
     "the public computers. Show them how, rather than doing it for them, and call the "
     "librarian when a question is about a reader's account or fines."),
    ("Safety", "Know where the fire exits and the first aid box are. In an alarm, guide "
     "readers out through the nearest exit and meet at the gate of the park. Never use "
     "the lift during an alarm."),
    ("Lost property", "Items left behind go in the cupboard under the stairs with a "
     "label giving the date and the place they were found. Items not claimed after "
     "three months are given to the charity shop."),
    ("Your hours", "Write your hours in the diary at the desk. Tell the librarian a week "
     "ahead when you cannot come, so that another volunteer can take your shift."),
    ("Thank you", "The library depends on its volunteers. Every hour you give keeps the "
     "doors open for the readers of the town and the villages around it."),
]

LANGUAGES = [
    "The library opens at nine in the morning.",
    "Thư viện mở cửa lúc chín giờ sáng.",
    "Η βιβλιοθήκη ανοίγει στις εννέα το πρωί.",
]

BROKEN = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x02\x00"  # cut in its header


def font(name: str, size: int) -> ImageFont.FreeTypeFont:
    """PyMuPDF's font `name` (`tiro`: Times; `notos`: Noto Sans) for Pillow."""
    return ImageFont.truetype(io.BytesIO(pymupdf.Font(name).buffer), size)


def draw_lines(lines: list[str], size: tuple[int, int], face: ImageFont.FreeTypeFont,
               margin: tuple[int, int], leading: int) -> Image.Image:
    """Black text on white, one line of `lines` each `leading` pixels."""
    page = Image.new("L", size, 255)
    draw = ImageDraw.Draw(page)
    x, y = margin
    for line in lines:
        draw.text((x, y), line, font=face, fill=0)
        y += leading
    return page


def as_scan(page: Image.Image, seed: int, angle: float, blur: float) -> Image.Image:
    """`page` as a black-and-white scanner gives it: blurred, turned `angle` degrees, specked."""
    turned = page.filter(ImageFilter.GaussianBlur(blur)).rotate(
        angle, resample=Image.Resampling.BICUBIC, fillcolor=255)
    pixels = np.asarray(turned, dtype=np.int16)
    rng = np.random.default_rng(seed)
    noisy = pixels + rng.normal(0, 18, pixels.shape)
    specks = rng.random(pixels.shape) < 0.0004
    noisy[specks] = 0
    return Image.fromarray(np.where(noisy < 150, 0, 255).astype(np.uint8), "L").convert("1")


def png(image: Image.Image, dpi: int | None = None) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG", optimize=True, **({"dpi": (dpi, dpi)} if dpi else {}))
    return out.getvalue()


def letter() -> bytes:
    page = draw_lines(LETTER, (2480, 3508), font("tiro", 50), (260, 300), 78)
    return png(as_scan(page, seed=3, angle=0.6, blur=1.2), dpi=300)


def languages() -> bytes:
    page = draw_lines(LANGUAGES, (1500, 400), font("notos", 44), (90, 80), 90)
    blurred = page.filter(ImageFilter.GaussianBlur(1.0)).rotate(
        -0.4, resample=Image.Resampling.BICUBIC, fillcolor=255)
    return png(blurred.point(lambda v: v // 64 * 85))  # four greys


def text_box(page: pymupdf.Page, left: float, top: float, right: float, text: str,
             size: float = 11, bold: bool = False) -> float:
    """Set `text` in Times from `top` down between `left` and `right`; the bottom it took.

    PyMuPDF's base-14 Times: nothing embedded, and no ligatures in the text layer.
    """
    box = pymupdf.Rect(left, top, right, page.rect.height - 50)
    spare = page.insert_textbox(box, text, fontsize=size, lineheight=1.3,
                                fontname="tibo" if bold else "tiro")
    assert spare >= 0, f"the text fits: {text[:40]!r}"
    return box.y1 - spare


def paragraphs(page: pymupdf.Page, left: float, top: float, right: float,
               texts: list[str]) -> float:
    for text in texts:
        top = text_box(page, left, top, right, text) + 8
    return top


def table(page: pymupdf.Page, left: float, top: float, widths: list[float],
          rows: Sequence[tuple[str, ...]]) -> float:
    """`rows` in ruled cells, the first row bold; the bottom of the table."""
    height = 20
    for number, row in enumerate(rows):
        x = left
        for width, cell in zip(widths, row, strict=True):
            page.draw_rect(pymupdf.Rect(x, top, x + width, top + height), width=0.5)
            page.insert_text((x + 6, top + 14), cell, fontsize=10,
                             fontname="tibo" if number == 0 else "tiro")
            x += width
        top += height
    return top


def pdf_bytes(doc: pymupdf.Document) -> bytes:
    """The document with no dates nor producer, its id derived from its content."""
    doc.set_metadata({})
    return bytes(doc.tobytes(garbage=4, deflate=True, no_new_id=True))


def report() -> bytes:
    doc = pymupdf.open()
    page = doc.new_page(width=595, height=842)
    top = text_box(page, 60, 60, 535, REPORT_TITLE, size=20, bold=True) + 10
    top = text_box(page, 60, top, 535, "Abstract", size=14, bold=True) + 4
    top = text_box(page, 60, top, 535, REPORT_ABSTRACT) + 18
    top = max(paragraphs(page, 60, top, 288, REPORT_LEFT),
              paragraphs(page, 307, top, 535, REPORT_RIGHT)) + 10
    table(page, 60, top, [90, 90, 80, 110], REPORT_TABLE)

    scan = as_scan(draw_lines(REPORT_SCAN, (1654, 2339), font("tiro", 34), (160, 200), 54),
                   seed=8, angle=-0.5, blur=0.7)  # 200 dpi
    page = doc.new_page(width=595, height=842)
    page.insert_image(page.rect, stream=png(scan))

    page = doc.new_page(width=595, height=842)
    top = text_box(page, 60, 60, 535, REPORT_PLAN_TITLE, size=14, bold=True) + 4
    plan = "\n".join(f"{number}. {item}" for number, item in enumerate(REPORT_PLAN, 1))
    top = text_box(page, 60, top, 535, plan) + 8
    text_box(page, 60, top, 535, REPORT_PLAN_END)
    return pdf_bytes(doc)


def handbook() -> bytes:
    doc = pymupdf.open()
    for number in range(len(HANDBOOK)):
        page = doc.new_page(width=595, height=842)
        top = 60.0
        if number == 0:
            top = text_box(page, 60, top, 535, HANDBOOK_TITLE, size=20, bold=True) + 10
        # Each page: its chapter, then the next ones again, so every page is full.
        for name, text in (HANDBOOK[number:] + HANDBOOK[:number])[:7]:
            top = text_box(page, 60, top, 535, name, size=14, bold=True) + 4
            top = text_box(page, 60, top, 535, text) + 10
    return pdf_bytes(doc)


def samples() -> dict[str, bytes]:
    """Each sample's file name and bytes."""
    return {
        "letter.png": letter(),
        "letter.gt.txt": ("\n".join(LETTER) + "\n").encode(),
        "report.pdf": report(),
        "handbook.pdf": handbook(),
        "languages.png": languages(),
        "languages.gt.txt": ("\n".join(LANGUAGES) + "\n").encode(),
        "broken.png": BROKEN,
    }


def main(argv: list[str]) -> int:
    folder = Path(argv[0]) if argv else ROOT / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in samples().items():
        (folder / name).write_bytes(data)
        print(f"{folder / name}: {len(data):,} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
