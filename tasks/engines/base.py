"""The engine contract: one small interface every OCR engine adapter implements.

Engines are constructed in a worker pool child (never in the parent) by
`tasks.engines.resident.ResidentEngines` and reused for every task that child runs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from tasks.errors import EngineUnavailable, OutputUnsupported
from tasks.records.request import AUTO_LANG, WORD_BOX_OUTPUTS
from tasks.records.results import VlmRead, WordBox

if TYPE_CHECKING:
    from PIL import Image

    from tasks.settings import Settings


# An engine's word is the result's word (text, box in page pixels, confidence).
Word = WordBox
FINISH_REASONS = ("stop", "length", "repetition", "error")


@dataclass(frozen=True)
class PageResult:
    """What an engine returns for one page image.

    `vlm` is set by vision-language engines; a read that is not complete must not be
    reported as the page's text (the pipeline falls back or fails the page).
    """

    text: str
    words: tuple[Word, ...] = ()
    confidence: float | None = None
    stats: dict[str, float] = field(default_factory=dict)
    # Engines with word boxes may give the page as an hOCR `ocr_page` div (tesseract's
    # own renderer); tasks/pipeline/layouts.py builds one from `words` otherwise.
    hocr: str | None = None
    vlm: VlmRead | None = None
    # True when the reading itself shows the page was upright (confident, horizontal text
    # lines), so no orientation pass is needed; False or None: it cannot tell, ask
    # `detect_orientation`. Engines with `reads_orientation` set it.
    upright: bool | None = None


@dataclass(frozen=True)
class ScriptGuess:
    """A page's writing system as an orientation check found it (`lang=auto`).

    `script` is tesseract's name (Latin, Greek, Han, Cyrillic, ...) and `confidence`
    its script confidence: 1.0 means the best script had 1.3 times the votes of the
    next. `rotation` is the check's rotation (counter-clockwise degrees, 0 when its
    orientation confidence was too low), so the page needs no second orientation pass.
    """

    script: str
    confidence: float
    rotation: int | None = 0
    # Set when a line probe (a few of the page's text lines read with one language of
    # each script) found the script: the language that read them best and its text.
    # `confidence` is then that read's mean word confidence (0-100) and `rotation` 0
    # where that read proves the page upright (the adapter's own bar: tesseract's
    # PROBE_SURE, as its `reads_upright`), else None (the probe does not turn the page:
    # its usual orientation pass runs).
    probe_lang: str | None = None
    probe_text: str = ""


@dataclass(frozen=True)
class RecognizeOptions:
    """Per-job options an engine may honour."""

    output: str = "text"
    want_words: bool = False
    # Tesseract language set (`ell+eng`); None: the engine's own; `auto` (AUTO_LANG): each
    # page's own, found by the pipeline, which passes the page's set to `recognize`.
    lang: str | None = None
    want_hocr: bool = False
    page_number: int = 1  # 1-based page of the document (hOCR ids)
    engine_named: bool = False  # the job named its engine: `auto` pages keep it
    deadline: float | None = None  # the job's (Unix time): an engine's waits end there

    @property
    def named_lang(self) -> str | None:
        """The language set the job named; None for the engine's own and for `auto`."""
        return None if self.lang == AUTO_LANG else self.lang


class OcrEngine(ABC):
    """Base class of engine adapters. Subclasses set the class attributes below."""

    name: ClassVar[str]
    gives_words: ClassVar[bool] = False
    gives_markdown: ClassVar[bool] = False
    # The page mode the engine reads best and fastest ("L" or "RGB"), None: as given (L
    # or RGB). The pipeline converts the page once, before clean-up.
    page_mode: ClassVar[str | None] = None
    # Its PageResult.upright tells whether the page was upright: the pipeline recognises
    # first and runs `detect_orientation` only when the reading was not upright.
    reads_orientation: ClassVar[bool] = False

    model: str | None = None
    # Longest side (px) of the page images this engine wants; PDF pages are rendered
    # at that size instead of OCR_PDF_DPI. None: the full resolution.
    page_longest_side: int | None = None
    # Another engine whose orientation check this one uses (loaded on demand).
    orientation_engine: ClassVar[str | None] = None
    # One instance may serve several threads at once (a vlm-api worker's thread pool);
    # else each thread gets an instance of its own for the length of a call.
    thread_safe: ClassVar[bool] = False
    # An engine without word boxes (gives_words False) whose words can be placed on
    # this other engine's boxes for the word-box outputs (pdf, hocr, alto); None: none.
    text_layer_from: ClassVar[str | None] = None

    # The pool a worker loading this engine runs: "prefork" (a child per page at a time)
    # or "threads" (one process whose threads mostly wait on a server).
    pool_kind: ClassVar[str] = "prefork"

    @classmethod
    def concurrency(cls, settings: Settings) -> int | None:
        """The pool's size when OCR_CONCURRENCY is unset; None: Celery's (a child a core)."""
        return None

    @classmethod
    def page_time_limit(cls, settings: Settings) -> float | None:
        """A page task's hard time limit in a threads pool; None: the settings' own."""
        return None

    @classmethod
    def retry_seconds(cls, settings: Settings) -> float | None:
        """How long a page is retried for; None: a count (MAX_RETRIES), not a time."""
        return None

    @classmethod
    def model_entry(cls, settings: Settings) -> str | None:
        """The OCR_MODEL_DIR entry this engine loads, or None when it uses none.

        Workers register that entry in Redis as loaded while the engine is, so that the
        model-directory audit never prunes it.
        """
        return None

    @classmethod
    def installed(cls, settings: Settings) -> bool:
        """Whether this engine's packages are in this environment (checked, not loaded)."""
        return True

    @classmethod
    def default_language(cls, settings: Settings) -> str:
        """The language set read for a job without `lang` (engines that take a `lang`)."""
        return settings.tesseract_lang

    @classmethod
    def languages(cls, settings: Settings) -> list[str] | None:
        """Languages a job may ask for with `lang`; None: the engine takes no `lang`."""
        return None

    @classmethod
    def fast_languages(cls, settings: Settings) -> list[str]:
        """Those of `languages` read with a smaller, faster model than the best one here."""
        return []

    def check(self, options: RecognizeOptions) -> None:
        """Refuse at job start what this engine cannot do (raises OcrError).

        Outputs drawn from word boxes (pdf, hocr, alto) need `gives_words`, or another
        engine's boxes to place the words on (`text_layer_from`).
        """
        if options.output in WORD_BOX_OUTPUTS and self.text_layer_from:
            return
        if options.output in WORD_BOX_OUTPUTS and not self.gives_words:
            raise OutputUnsupported(f"engine {self.name} gives no word boxes, so it cannot "
                                    f"produce output {options.output!r}; use text, "
                                    "markdown or json, or the tesseract engine")

    @classmethod
    @abstractmethod
    def load(cls, settings: Settings) -> OcrEngine:
        """Load the engine (model, library handles) in the calling process."""

    @abstractmethod
    def recognize(self, image: Image.Image, options: RecognizeOptions) -> PageResult:
        """Recognise the text of one page image (mode L or RGB)."""

    _peers: Callable[[str], OcrEngine] | None = None

    def bind_peers(self, lookup: Callable[[str], OcrEngine]) -> None:
        """Give the engine the other engines of its process (ResidentEngines does)."""
        self._peers = lookup

    def peer(self, name: str) -> OcrEngine:
        """Another engine of this process (orientation checks, fallbacks), loaded on use."""
        if self._peers is None:
            raise EngineUnavailable(f"engine {name} is not reachable from {self.name}")
        return self._peers(name)

    def page_size(self, width: int, height: int) -> tuple[int, int]:
        """The size this engine reads a `width` x `height` page image at (as it is here).

        PDF pages are rendered at it (`render_page`'s `fit`): no resize after.
        """
        return width, height

    def detect_orientation(self, image: Image.Image) -> int:
        """Counter-clockwise degrees (0, 90, 180, 270) that put the page upright.

        Engines that cannot tell return 0 and leave the page as it is.
        """
        return 0

    def reads_upright(self, image: Image.Image, lang: str | None = None) -> bool:
        """Whether a short trial read of a few of the page's lines shows it upright.

        A cheap first step of the orientation check for engines that do not read
        orientation themselves: True ends it (rotation 0); False (the default: cannot
        tell) leaves it to `detect_orientation`. `lang` is the language set the page
        will be read in (the job's `lang`), None where it names none.
        """
        return False

    def detect_script(self, image: Image.Image,
                      probes: Sequence[tuple[str, str]] = ()) -> ScriptGuess | None:
        """The page's script (and rotation, from an orientation check); None: cannot tell.

        `probes` are (script, language) pairs an engine may read a few lines with before
        its orientation check (`lang=auto`, tasks/engines/auto_lang.py). Engines without
        such a check return None (their `orientation_engine`'s is used).
        """
        return None

    def release_cache(self) -> dict[str, float]:
        """Free per-task caches; called after every task. Returns memory figures."""
        return {}

    def counters(self) -> dict[str, float]:
        """Running totals the engine keeps (metrics: tasks/queue/telemetry.py)."""
        return {}

    def gauges(self) -> dict[str, float]:
        """What the engine has now (`ocr_child_*` metrics: tasks/queue/telemetry.py)."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to free by default
        """Free everything the engine holds; it is not used afterwards."""
