"""Draw docs/architecture.svg: the floors of `tasks/` and one scanned PDF's job through them.

`python -m scripts.draw_architecture` writes it. The floors are the layers contract of
pyproject.toml, top to bottom; each floor's modules are the tree's. The job's path is
`PATH`: each hop a function of the code, found in its module's source. Standard
library only; the same tree draws the same bytes (`tests/units/test_architecture_picture.py`).
"""

from __future__ import annotations

import ast
import math
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

ROOT = Path(__file__).resolve().parents[1]
SVG = Path("docs") / "architecture.svg"


@dataclass(frozen=True)
class Hop:
    """One step of the job's path: a function (`Class.method` or `function`) of a module."""

    module: str  # its file, from the checkout's root
    function: str
    says: str  # what happens there, in a few words


# A scanned PDF sent to the HTTP API, read page by page by tesseract.
PATH = (
    Hop("tasks/api/_routes.py", "create_job", "POST /v1/jobs"),
    Hop("tasks/admission.py", "admit", "the gate"),
    Hop("tasks/queue/sender.py", "JobSender.send", "the one sender"),
    Hop("tasks/broker/publishing.py", "Publisher.put", "into its client's lane"),
    Hop("tasks/queue/job_task.py", "document", "ocr.document"),
    Hop("tasks/lifecycle/jobs.py", "process_job", "a scanned PDF: a FanOut"),
    Hop("tasks/queue/page_tasks.py", "send_pages", "its pages published"),
    Hop("tasks/queue/page_tasks.py", "pdf_page", "ocr.pdf_page, one per page"),
    Hop("tasks/lifecycle/fanout.py", "run_pdf_page", "a page rendered"),
    Hop("tasks/pipeline/page_reading.py", "read_page", "upright, deskewed, read"),
    Hop("tasks/engines/tesseract.py", "TesseractEngine.recognize", "the engine's recognize"),
    Hop("tasks/lifecycle/fanout.py", "record_page", "the last page merges"),
    Hop("tasks/lifecycle/job_exit.py", "JobEnder.finish", "the one exit"),
)


@dataclass(frozen=True)
class Floor:
    """One floor: the contract's line for it, and the modules it holds (paths)."""

    layer: str  # as the contract writes it ("tasks.a : tasks.b"); "" for the checkout's top
    modules: tuple[str, ...]  # files from the checkout's root
    shown: tuple[str, ...]  # each module's name in the picture, without `.py`


def floors(root: Path) -> list[Floor]:
    """The checkout's top, then the floors of the layers contract, top to bottom."""
    contracts = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c["layers"] for c in contracts["contracts"] if c["type"] == "layers")
    top = sorted(p.name for p in root.glob("*.py"))
    found = [Floor("", tuple(top), tuple(name.removesuffix(".py") for name in top))]
    for layer in layers:
        members = [m.strip() for m in layer.replace("|", ":").split(":")]
        modules: list[str] = []
        shown: list[str] = []
        for member in members:
            path = root / member.replace(".", "/")
            if path.is_dir():
                inside = sorted(str(p.relative_to(path)) for p in path.rglob("*.py")
                                if p.name != "__init__.py" and "__pycache__" not in p.parts)
                modules += [f"{path.relative_to(root)}/{name}" for name in inside]
                prefix = "" if len(members) == 1 else f"{path.name}/"
                shown += [prefix + name.removesuffix(".py") for name in inside]
            else:
                modules.append(f"{path.relative_to(root)}.py")
                shown.append(path.name)
        found.append(Floor(layer, tuple(modules), tuple(shown)))
    return found


def defines(source: str, function: str) -> bool:
    """Whether `source` defines `function` at its top: `name`, or `Class.method`."""
    body = ast.parse(source).body
    for part in function.split("."):
        node = next((n for n in body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef
                                                   | ast.ClassDef) and n.name == part), None)
        if node is None:
            return False
        body = node.body
    return True


def missing_hops(root: Path) -> list[str]:
    """The hops of `PATH` whose module or function the tree does not have."""
    return [f"{hop.module}:{hop.function}" for hop in PATH
            if not (root / hop.module).is_file()
            or not defines((root / hop.module).read_text(), hop.function)]


# The layout, in pixels. Text is measured as DejaVu Sans Mono draws it (EM a
# character); the sans-serif headings get the same budget, which they never fill.
EM = 0.602  # DejaVu Sans Mono's advance: 1233 of 2048 units
WIDTH = 1000
PAD = 12
NAME_SIZE = 11
ROW = 15  # a line of module names
COLUMNS = 4
COLUMN_W = 160
HEAD_SIZE = 12
HEAD = 20  # a floor's heading line
GAP = 6  # between floors
CARD_W = 250
CARD_H = 36
SLOT = 42  # a card and the space below it
CHANNEL = 5  # between two arrows' vertical runs
LANE_X = WIDTH - PAD - 28 - CARD_W  # the cards; arrows going up run in the 28 px right of them
GRID_X = 2 * PAD
TITLE_H = 80
MONO = "DejaVu Sans Mono, Menlo, Consolas, monospace"
SANS = "DejaVu Sans, Helvetica, Arial, sans-serif"
ACCENT = "#b3261e"
FILLS = ("#eef3fb", "#f6f8fa")


def _heading(floor: Floor, number: int) -> list[str]:
    """A floor's heading lines: its number and the contract's line, wrapped at members."""
    if not floor.layer:
        return ["above the floors: the checkout's command lines (no contract)"]
    width = int(COLUMNS * COLUMN_W / (HEAD_SIZE * EM))
    lines = [f"{number}  "]
    for part in floor.layer.replace(" : ", " :\0").replace(" | ", " |\0").split("\0"):
        if len(lines[-1]) + len(part) + 1 > width and lines[-1].strip():
            lines.append("    ")
        lines[-1] += part + " "
    return [line.rstrip() for line in lines]


def _text(x: float, y: float, text: str, size: float, *, font: str = MONO, fill: str = "#222",
          weight: str = "normal", anchor: str = "start") -> str:
    return (f'<text x="{x:g}" y="{y:g}" font-family="{font}" font-size="{size:g}" '
            f'fill="{fill}" font-weight="{weight}" text-anchor="{anchor}">'
            f"{escape(text)}</text>")


def draw(root: Path) -> str:
    """The picture, as SVG text."""
    missing = missing_hops(root)
    if missing:
        raise LookupError(f"the job's path names what the code does not define: {missing}")
    body: list[str] = []
    cards: dict[int, float] = {}  # a hop's number: its card's middle
    y = TITLE_H
    for index, floor in enumerate(floors(root)):
        y += _floor(floor, index, y, body, cards) + GAP
    body += _path(cards)
    head = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{y + PAD}" '
        f'viewBox="0 0 {WIDTH} {y + PAD}">',
        f'<rect width="{WIDTH}" height="{y + PAD}" fill="#ffffff"/>',
        '<defs><marker id="head" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
        f'markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="{ACCENT}"/>'
        "</marker></defs>",
        _text(PAD, 22, "The floors of tasks/, top to bottom, and one scanned PDF's job",
              16, font=SANS, weight="bold"),
        _text(PAD, 42, "A module imports only its own floor and those below it (pyproject.toml's "
              "layers contract: siblings joined by \":\" may import each other, by \"|\" "
              "may not).", 11.5, font=SANS, fill="#444"),
        _text(PAD, 57, "Red: the job's path, its steps numbered; a module on it shows their "
              "numbers. Arrows go down left of the steps, up right of them.", 11.5, font=SANS,
              fill="#444"),
        _text(PAD, 72, "Grey: a package's private _modules. Drawn from the code by "
              "python -m scripts.draw_architecture.", 11.5, font=SANS, fill="#444"),
    ]
    return "\n".join([*head, *body, "</svg>"]) + "\n"


def _floor(floor: Floor, index: int, y: int, body: list[str], cards: dict[int, float]) -> int:
    """Draw a floor at `y` into `body`, placing its hops' cards in `cards`; its height."""
    heading = _heading(floor, index)
    hops = [n for n, hop in enumerate(PATH, 1) if hop.module in floor.modules]
    rows = math.ceil(len(floor.shown) / COLUMNS)
    height = max(HEAD * len(heading) + rows * ROW, len(hops) * SLOT) + 2 * GAP
    dash = ' stroke-dasharray="4 3"' if not floor.layer else ""
    body.append(f'<rect x="{PAD}" y="{y}" width="{WIDTH - 2 * PAD}" height="{height}" '
                f'rx="6" fill="{FILLS[index % 2]}" stroke="#8a9bb4"{dash}/>')
    for line_no, line in enumerate(heading):
        body.append(_text(GRID_X - 4, y + GAP + 13 + line_no * HEAD, line, HEAD_SIZE,
                          font=SANS, weight="bold", fill="#1f3a60"))
    top = y + GAP + HEAD * len(heading)
    for at, (module, name) in enumerate(zip(floor.modules, floor.shown, strict=True)):
        column, row = divmod(at, rows)
        numbers = [n for n, hop in enumerate(PATH, 1) if hop.module == module]
        label = f"{name} {','.join(map(str, numbers))}" if numbers else name
        if len(label) * NAME_SIZE * EM > COLUMN_W - 6:
            raise ValueError(f"{label!r} is wider than a column ({COLUMN_W} px)")
        private = name.rsplit("/", 1)[-1].startswith("_")
        body.append(_text(GRID_X + column * COLUMN_W, top + row * ROW + 11, label, NAME_SIZE,
                          fill=ACCENT if numbers else "#777" if private else "#222",
                          weight="bold" if numbers else "normal"))
    first = y + GAP + (height - 2 * GAP - len(hops) * SLOT) / 2
    for slot, number in enumerate(hops):
        cards[number] = first + slot * SLOT + CARD_H / 2
    return height


def _path(cards: dict[int, float]) -> list[str]:
    """The job's cards in the lane at the right, and the arrows from each to the next.

    An arrow to the card just below runs between their numbers; a longer one down
    runs left of the cards, one up right of them, each in a channel of its own: the
    longer it is, the farther out.
    """
    drawn: list[str] = []  # the cards, then the arrows over them
    arrows: list[str] = []
    steps = range(1, len(PATH))
    below = [n for n in steps if 0 < cards[n + 1] - cards[n] <= SLOT]
    down = sorted((n for n in steps if cards[n + 1] - cards[n] > SLOT),
                  key=lambda n: cards[n + 1] - cards[n])
    up = sorted((n for n in steps if cards[n + 1] < cards[n]),
                key=lambda n: cards[n] - cards[n + 1])
    for n in below:
        arrows.append(f'<path d="M{LANE_X + 14} {cards[n] + 10:g} V{cards[n + 1] - 11:g}" '
                     f'stroke="{ACCENT}" stroke-width="1.4" marker-end="url(#head)"/>')
    for rank, n in enumerate(down):
        x = LANE_X - 10 - rank * CHANNEL
        arrows.append(f'<path d="M{LANE_X} {cards[n] + 5:g} H{x} V{cards[n + 1] - 5:g} '
                     f'H{LANE_X - 1}" fill="none" stroke="{ACCENT}" stroke-width="1.4" '
                     'marker-end="url(#head)"/>')
    right = LANE_X + CARD_W
    if LANE_X - 10 - len(down) * CHANNEL < GRID_X + COLUMNS * COLUMN_W or \
            right + 10 + len(up) * CHANNEL > WIDTH - PAD:
        raise ValueError("the arrows have no room beside the cards: widen the picture")
    for rank, n in enumerate(up):
        x = right + 10 + rank * CHANNEL
        arrows.append(f'<path d="M{right} {cards[n] - 5:g} H{x} V{cards[n + 1] + 5:g} '
                     f'H{right + 1}" fill="none" stroke="{ACCENT}" stroke-width="1.4" '
                     'marker-end="url(#head)"/>')
    for number, hop in enumerate(PATH, 1):
        middle = cards[number]
        top = middle - CARD_H / 2
        name = f"{Path(hop.module).stem}:{hop.function}"
        if len(name) * 10 * EM > CARD_W - 34:
            raise ValueError(f"{name!r} is wider than a card ({CARD_W} px)")
        drawn += [
            f'<rect x="{LANE_X}" y="{top:g}" width="{CARD_W}" height="{CARD_H}" rx="5" '
            f'fill="#ffffff" stroke="{ACCENT}"/>',
            f'<circle cx="{LANE_X + 14}" cy="{middle:g}" r="10" fill="{ACCENT}"/>',
            _text(LANE_X + 14, middle + 4, str(number), 11, font=SANS, fill="#ffffff",
                  weight="bold", anchor="middle"),
            _text(LANE_X + 30, top + 15, hop.says, 12, font=SANS, weight="bold"),
            _text(LANE_X + 30, top + 29, name, 10, fill="#444"),
        ]
    return drawn + arrows


def main() -> int:
    (ROOT / SVG).write_text(draw(ROOT))
    print(f"wrote {SVG}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
