"""RapidOCR adapter: the only module that imports `rapidocr_onnxruntime` (and so ONNX Runtime).

Runs in a worker pool child. PaddleOCR's PP-OCRv4 detection and recognition models and
the PP-OCR mobile direction classifier, as ONNX files inside the
`rapidocr-onnxruntime` wheel (requirements-rapidocr.txt), run by ONNX Runtime on the
CPU: nothing is downloaded, the models load from the installed package. The
recognition model reads simplified Chinese and English (`chi_sim`, `eng`,
`chi_sim+eng`); a job asking for any other language is refused at job start with
`language_unavailable`.

RapidOCR gives text lines (a quadrilateral, the text, a score) and, with
`return_word_box`, a box per character; words are the runs of characters between
spaces (a line of Chinese without spaces is one word, as tesseract's `chi_sim` words
run together), their box the union of their characters' boxes. A line without
character boxes is split into words proportionally along its box.

ONNX Runtime's intra-op threads: OCR_RAPIDOCR_THREADS, by default the machine's cores
divided among the worker's pool children (one each when there is a child per core),
so that N children on N cores do not oversubscribe them.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tasks.errors import EngineUnavailable, LanguageUnavailable

from .base import OcrEngine, PageResult, RecognizeOptions, Word

if TYPE_CHECKING:
    from PIL import Image

    from tasks.settings import Settings

PACKAGE = "rapidocr_onnxruntime"
# What PP-OCRv4's recognition model reads (its dictionary: simplified Chinese, ASCII).
LANGUAGES = ("chi_sim", "eng")
DEFAULT_LANG = "chi_sim+eng"  # what a job without `lang` is read as
Box = tuple[int, int, int, int]


def installed() -> bool:
    """Whether the package is importable here (found without importing it)."""
    return importlib.util.find_spec(PACKAGE) is not None


def intra_op_threads(settings: Settings) -> int:
    """OCR_RAPIDOCR_THREADS, or the cores divided among the pool children (at least 1)."""
    cores = os.cpu_count() or 1
    if settings.rapidocr_threads > 0:
        # RapidOCR leaves more threads than cores to ONNX Runtime's default (every core).
        return min(settings.rapidocr_threads, cores)
    children = settings.concurrency or cores
    return max(1, cores // children)


def unavailable_codes(lang: str) -> list[str]:
    """The codes of the language set `lang` that the PP-OCR models do not read."""
    return [code for code in lang.split("+") if code not in LANGUAGES]


class RapidOcrEngine(OcrEngine):
    """PP-OCRv4 (Chinese and English printed text) through RapidOCR on ONNX Runtime."""

    name = "rapidocr"
    gives_words = True
    # Grey pages: the same reading of the corpus's Chinese page as in colour (CER 0 %),
    # and detection took half the time.
    page_mode = "L"
    # Whole-page turns (90, 180, 270) come from tesseract's orientation check; the
    # direction classifier here only turns single lines read upside down.
    orientation_engine = "tesseract"
    # RapidOCR scales every page to at most 2,000 px on its longest side before it
    # detects text: PDF pages are rendered at that size rather than OCR_PDF_DPI.
    page_longest_side = 2000

    def __init__(self, ocr: Any) -> None:
        self._ocr = ocr
        self.model = "PP-OCRv4"

    @classmethod
    def installed(cls, settings: Settings) -> bool:
        return installed()

    @classmethod
    def default_language(cls, settings: Settings) -> str:
        return DEFAULT_LANG

    @classmethod
    def languages(cls, settings: Settings) -> list[str]:
        return list(LANGUAGES)

    @classmethod
    def load(cls, settings: Settings) -> RapidOcrEngine:
        if not installed():
            raise EngineUnavailable("the rapidocr engine needs requirements-rapidocr.txt "
                                    "(rapidocr-onnxruntime) in this worker's environment")
        from rapidocr_onnxruntime import RapidOCR

        threads = intra_op_threads(settings)
        # Models from the wheel's own folder (its config.yaml); no path is fetched.
        ocr = RapidOCR(intra_op_num_threads=threads, inter_op_num_threads=1)
        return cls(ocr)

    def check(self, options: RecognizeOptions) -> None:
        super().check(options)
        absent = unavailable_codes(options.named_lang or DEFAULT_LANG)
        if absent:
            raise LanguageUnavailable(f"engine rapidocr does not read {', '.join(absent)}; "
                                      f"it reads {', '.join(LANGUAGES)} (use the tesseract "
                                      "engine for other languages)")

    def recognize(self, image: Image.Image, options: RecognizeOptions) -> PageResult:
        self.check(options)
        page = image if image.mode in ("L", "RGB") else image.convert("RGB")
        # A PIL image: RapidOCR turns it into the BGR array its models expect.
        found, elapsed = self._ocr(page, return_word_box=True)
        lines = [_line(item) for item in found or ()]
        words = tuple(w for line in lines for w in line.words)
        scores = [line.score for line in lines]
        stats = {}
        if elapsed:
            stats = {f"{step}_seconds": round(float(s), 3)
                     for step, s in zip(("detect", "classify", "recognize"), elapsed,
                                        strict=False)}
        return PageResult(
            text="\n".join(line.text for line in lines),
            words=words if options.want_words else (),
            confidence=round(100 * sum(scores) / len(scores), 2) if scores else None,
            stats=stats)


@dataclass(frozen=True)
class _Line:
    """One text line of RapidOCR's answer, its words in page pixels."""

    text: str
    score: float
    words: tuple[Word, ...]


def _line(item: Sequence[Any]) -> _Line:
    """A `_Line` from `[quad, text, score, char_boxes, chars, char_scores]`."""
    quad, text, score = item[0], str(item[1]), float(item[2])
    chars: list[str] = [str(c) for c in item[4]] if len(item) > 4 and item[4] else []
    boxes: list[Box] = [_bounds(b) for b in item[3]] if len(item) > 3 and item[3] else []
    confs = [float(c) for c in item[5]] if len(item) > 5 and item[5] else []
    if chars and len(boxes) == len(chars) and "".join(chars) == text:
        words = _words_from_chars(chars, boxes, confs or [score] * len(chars))
    else:
        words = _words_along(text, _bounds(quad), score)
    return _Line(text, score, words)


def _bounds(points: Sequence[Sequence[float]]) -> Box:
    """The axis-aligned box (x0, y0, x1, y1) around a quadrilateral's points."""
    xs = [float(p[0]) for p in points]
    ys = [float(p[1]) for p in points]
    return int(min(xs)), int(min(ys)), int(round(max(xs))), int(round(max(ys)))


def _words_from_chars(chars: list[str], boxes: list[Box],
                      confs: list[float]) -> tuple[Word, ...]:
    """Runs of characters between spaces, each on the union of its characters' boxes."""
    words: list[Word] = []
    run: list[int] = []
    for index in [*range(len(chars)), None]:
        if index is not None and not chars[index].isspace():
            run.append(index)
            continue
        if run:
            box = (min(boxes[i][0] for i in run), min(boxes[i][1] for i in run),
                   max(boxes[i][2] for i in run), max(boxes[i][3] for i in run))
            conf = 100 * sum(confs[i] for i in run) / len(run)
            words.append(Word("".join(chars[i] for i in run), box, round(conf, 2)))
            run = []
    return tuple(words)


def _words_along(text: str, box: Box, score: float) -> tuple[Word, ...]:
    """The words of `text` placed along `box` in proportion to their characters."""
    x0, y0, x1, y1 = box
    total = max(1, len(text))
    words: list[Word] = []
    start = 0
    for part in text.split(" "):
        if part:
            left = x0 + (x1 - x0) * start / total
            right = x0 + (x1 - x0) * (start + len(part)) / total
            words.append(Word(part, (int(left), y0, max(int(left) + 1, int(right)), y1),
                              round(100 * score, 2)))
        start += len(part) + 1
    return tuple(words)
